/* The chapter-8 networks' fused CPU training kernels for BatchNorm followed by 2x2 max-pooling
 * and tanh or ReLU (NetBatchNorm), channels_last float32: in a training step (the batch's own
 * statistics) act(max_pool2d(batch_norm(z), 2)) in one pass over z after its statistics, never
 * storing the normalized tensor, and a backward pass that reads the pooled gradient once for
 * the statistics' terms and writes z's gradient in a second pass.
 *
 * Built into the same library as fused.c (zoo_chapter8/fused.py); its Python side is
 * zoo_chapter8/fused_bn.py, which holds the formulas.
 */
#include "fused_simd.h"

/* y = act(max_pool2d(z * alpha + beta, 2)) per channel, alpha = gamma * invstd and
 * beta = bias - mean * alpha. z is NHWC, n x h x w x c (h and w even, c a multiple of 8 up to
 * 64); y and idx as the pooling kernels of fused.c, zw (as y) each window's winning z. Sums are per image, in double (float within
 * 64 pixels or one row of windows), added in image order by the caller: the same numbers
 * whichever thread ran which image. */
#define BN_MAX_CV 8

/* part[b * c + ch]: the sum over image b of z - shift, or of (z - shift)^2 (square). The
 * caller shifts by a value of each channel, then by its mean: each sum is of small numbers
 * even where z is far from zero. */
int32_t zoo_bn_sums(const float *z, const float *shift, double *part, int64_t n, int64_t hw,
                    int64_t c, int32_t square, int32_t threads) {
    if (c % 8 != 0 || c > 8 * BN_MAX_CV) return -1;
    const int cv = (int)(c / 8);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1 && n >= 2)
#endif
    for (int64_t b = 0; b < n; b++) {
        const float *zb = z + b * hw * c;
        double total[8 * BN_MAX_CV] = {0};
        vf m[BN_MAX_CV];
        for (int v = 0; v < cv; v++) m[v] = load(shift + 8 * v);
        for (int64_t p0 = 0; p0 < hw; p0 += 64) {
            vf acc[BN_MAX_CV];
            for (int v = 0; v < cv; v++) acc[v] = splat(0.0f);
            const int64_t p1 = p0 + 64 < hw ? p0 + 64 : hw;
            for (int64_t p = p0; p < p1; p++)
                for (int v = 0; v < cv; v++) {
                    const vf x = load(zb + p * c + 8 * v) - m[v];
                    acc[v] += square ? x * x : x;
                }
            for (int v = 0; v < cv; v++)
                for (int l = 0; l < 8; l++) total[8 * v + l] += (double)acc[v][l];
        }
        for (int64_t ch = 0; ch < c; ch++) part[b * c + ch] = total[ch];
    }
    return 0;
}

void zoo_bn_pool_act_forward(const float *z, const float *alpha, const float *beta, float *y,
                             uint8_t *idx, float *zw, int64_t n, int64_t h, int64_t w,
                             int64_t c, int32_t act, int32_t threads) {
    pool2_act_rows(z, alpha, beta, y, idx, zw, n, h, w, c, act, threads);
}

/* The backward pass, in two phases. Phase 0: part[b][0][ch] = the sum over image b of the
 * gradient dy reaching bn(z) (nonzero only at each window's maximum), part[b][1][ch] = the sum
 * of dy * (z - mean) * invstd, z the winner's, read from zw (the forward pass's, a quarter of
 * z: it is all phase 0 reads of z) or where zw is NULL from z. Phase 1: every element of gz,
 * gz = coef * dy + k1 + k2 * (z - mean) (coef = gamma * invstd; k1, k2 from the summed phase
 * 0: fused_bn.py). */
int32_t zoo_bn_pool_act_backward(const float *g, const float *y, const uint8_t *idx,
                                 const float *z, const float *zw, const float *mean,
                                 const float *invstd, const float *coef, const float *k1,
                                 const float *k2, double *part, float *gz, int64_t n,
                                 int64_t h, int64_t w, int64_t c, int32_t act, int32_t phase,
                                 int32_t threads) {
    if (c % 8 != 0 || c > 8 * BN_MAX_CV) return -1;
    const int64_t h2 = h / 2, w2 = w / 2;
    const int cv = (int)(c / 8);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1 && n >= 2)
#endif
    for (int64_t b = 0; b < n; b++) {
        double total[2][8 * BN_MAX_CV] = {{0}};
        for (int64_t oh = 0; oh < h2; oh++) {
            const int64_t i = b * h2 + oh;
            const float *row0 = z + (b * h + 2 * oh) * w * c, *row1 = row0 + w * c;
            float *grow0 = gz + (b * h + 2 * oh) * w * c, *grow1 = grow0 + w * c;
            vf s1[BN_MAX_CV], s2[BN_MAX_CV];
            for (int v = 0; v < cv; v++) { s1[v] = splat(0.0f); s2[v] = splat(0.0f); }
            for (int64_t ow = 0; ow < w2; ow++) {
                const int64_t at = 2 * ow * c, out = (i * w2 + ow) * c;
                for (int v = 0; v < cv; v++) {
                    const int64_t ch = 8 * v;
                    const vf dy = activate_grad(load(g + out + ch), load(y + out + ch), act);
                    const vi k = load_idx(idx + out + ch);
                    if (phase == 0) {
                        vf win;
                        if (zw != NULL) {
                            win = load(zw + out + ch);
                        } else {
                            const vf z0 = load(row0 + at + ch), z1 = load(row0 + at + c + ch);
                            const vf z2 = load(row1 + at + ch), z3 = load(row1 + at + c + ch);
                            win = pick(k == 0, z0, pick(k == 1, z1, pick(k == 2, z2, z3)));
                        }
                        s1[v] += dy;
                        s2[v] += dy * ((win - load(mean + ch)) * load(invstd + ch));
                    } else {
                        const vf z0 = load(row0 + at + ch), z1 = load(row0 + at + c + ch);
                        const vf z2 = load(row1 + at + ch), z3 = load(row1 + at + c + ch);
                        const vf cd = dy * load(coef + ch), a = load(k1 + ch), s = load(k2 + ch);
                        const vf m = load(mean + ch);
                        store(grow0 + at + ch, bn_grad(k, 0, cd, a, s, z0, m));
                        store(grow0 + at + c + ch, bn_grad(k, 1, cd, a, s, z1, m));
                        store(grow1 + at + ch, bn_grad(k, 2, cd, a, s, z2, m));
                        store(grow1 + at + c + ch, bn_grad(k, 3, cd, a, s, z3, m));
                    }
                }
            }
            if (phase == 0)
                for (int v = 0; v < cv; v++)
                    for (int l = 0; l < 8; l++) {
                        total[0][8 * v + l] += (double)s1[v][l];
                        total[1][8 * v + l] += (double)s2[v][l];
                    }
        }
        if (phase == 0)
            for (int64_t ch = 0; ch < c; ch++) {
                part[(b * 2) * c + ch] = total[0][ch];
                part[(b * 2 + 1) * c + ch] = total[1][ch];
            }
    }
    return 0;
}
