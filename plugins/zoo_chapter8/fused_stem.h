/* The backward loops of a network's first convolution (a few input channels, no input
 * gradient): its weight and bias gradients from the pooled gradient (stem_backward_rows) or
 * from its whole output's gradient (stem_dense_backward_rows, NetBatchNorm's first layer).
 * Inlined into fused.c's entry points and specialized there for the channel counts the
 * networks use. */
#ifndef ZOO_FUSED_STEM_H
#define ZOO_FUSED_STEM_H

#include "fused_conv.h"

/* What the backward pass of a BatchNorm, pooling and activation after the stem (fused_bn.c)
 * reads to give the stem's output gradient: the pooled gradient g, output y and winners idx,
 * the stem's output z, the batch's mean, and the formula's coefficients (fused_bn.py). */
typedef struct {
    const float *g, *y, *z, *mean, *coef, *k1, *k2;
    const uint8_t *idx;
    int32_t act;
} bn_grad_src;

/* The stem's weight and bias gradients over rows [first, last) of 2x2 windows from the
 * convolution's own dense gradient (a stem whose output is not pooled at once, NetBatchNorm's):
 * each window's four outputs are four gradient vectors, each input multiplied by all four. The
 * gradient is read from dz (NHWC, n x h x w x cout), or with `src` computed window by window
 * as fused_bn.c's backward pass would write it (bn_grad: the same numbers), never stored. */
static inline __attribute__((always_inline)) void stem_dense_backward_rows(
    const float *xp, const float *dz, const bn_grad_src *src, float *dwt, float *db, int64_t h,
    int64_t w, int64_t first, int64_t last, const int cin, const int cv) {
    const int64_t h2 = h / 2, w2 = w / 2, cout = 8 * cv, row = (w + 2) * cin;
    const int pv = CONV_PASS_CV(cv);
    for (int64_t i = first; i < last; i++) {
        const int64_t b = i / h2, oh = i % h2;
        const float *top = xp + (b * (h + 2) + 2 * oh) * row;
        for (int64_t ow = 0; ow < w2; ow++) {
            const float *p0 = top + 2 * ow * cin;
            for (int v0 = 0; v0 < cv; v0 += pv) { /* pv output vectors a pass */
                vf mz[4][CONV_MAX_CV];
                const int64_t at = ((b * h + 2 * oh) * w + 2 * ow) * cout + 8 * v0;
                for (int v = 0; v < pv; v++) {
                    if (src != NULL) {
                        const int64_t ch = 8 * (v0 + v), o = (i * w2 + ow) * cout + ch;
                        const vf dy = activate_grad(load(src->g + o), load(src->y + o), src->act);
                        const vi k = load_idx(src->idx + o);
                        const vf cd = dy * load(src->coef + ch), a = load(src->k1 + ch);
                        const vf s = load(src->k2 + ch), m = load(src->mean + ch);
                        const float *z0 = src->z + at + 8 * v, *z1 = z0 + w * cout;
                        mz[0][v] = bn_grad(k, 0, cd, a, s, load(z0), m);
                        mz[1][v] = bn_grad(k, 1, cd, a, s, load(z0 + cout), m);
                        mz[2][v] = bn_grad(k, 2, cd, a, s, load(z1), m);
                        mz[3][v] = bn_grad(k, 3, cd, a, s, load(z1 + cout), m);
                    } else {
                        const float *d0 = dz + at + 8 * v, *d1 = d0 + w * cout;
                        mz[0][v] = load(d0); mz[1][v] = load(d0 + cout);
                        mz[2][v] = load(d1); mz[3][v] = load(d1 + cout);
                    }
                    float *dbv = db + 8 * (v0 + v);
                    store(dbv, load(dbv) + ((mz[0][v] + mz[1][v]) + mz[2][v]) + mz[3][v]);
                }
                for (int kh = 0; kh < 3; kh++) {
                    const float *r0 = p0 + kh * row, *r1 = r0 + row;
                    for (int kw = 0; kw < 3; kw++)
                        for (int ci = 0; ci < cin; ci++) {
                            float *dk = dwt + ((kh * 3 + kw) * cin + ci) * cout + 8 * v0;
                            const vf s0 = splat(r0[kw * cin + ci]);
                            const vf s1 = splat(r0[(kw + 1) * cin + ci]);
                            const vf s2 = splat(r1[kw * cin + ci]);
                            const vf s3 = splat(r1[(kw + 1) * cin + ci]);
                            for (int v = 0; v < pv; v++)
                                store(dk + 8 * v, load(dk + 8 * v) + s0 * mz[0][v]
                                                      + s1 * mz[1][v] + s2 * mz[2][v]
                                                      + s3 * mz[3][v]);
                        }
                }
            }
        }
    }
}

/* The staged windows' patches times their gradients, into each output channel's 3 x nv sums
 * (stem_backward_rows, below), two channels at a time: twice the independent sums, so that
 * the FMA units do not wait on one another's results. `checked` (a block with a patch past
 * `safe`, whose whole vectors would read past xp's end: the last image's bottom row, and in
 * a narrow image its other rows too): such patches are copied out first. A separate loop:
 * with the copy in it the sums went through memory in every block. */
static inline __attribute__((always_inline)) void stem_patch_sums_nv(
    const float *xp, const float *zs, const int64_t *at, int64_t nb, int64_t cout, int64_t row,
    int64_t safe, int cin, vf *sums, const int nv, const int checked) {
    for (int64_t co = 0; co < cout; co += 2) {
        vf acc[2][3][3];
        for (int c = 0; c < 2; c++)
            for (int kh = 0; kh < 3; kh++)
                for (int u = 0; u < nv; u++) acc[c][kh][u] = sums[((co + c) * 3 + kh) * 3 + u];
        for (int64_t jj = 0; jj < nb; jj++)
            for (int c = 0; c < 2; c++) {
                const vf z = splat(zs[jj * cout + co + c]);
                const int64_t off = at[jj * cout + co + c];
                const float *p = xp + off, *q = p + row, *r = q + row;
                float tail[3][3 * 8];
                if (checked && off > safe) {
                    memset(tail, 0, sizeof tail);
                    for (int kh = 0; kh < 3; kh++)
                        memcpy(tail[kh], xp + off + kh * row, sizeof(float) * 3 * cin);
                    p = tail[0], q = tail[1], r = tail[2];
                }
                for (int u = 0; u < nv; u++) {
                    acc[c][0][u] += z * load(p + 8 * u);
                    acc[c][1][u] += z * load(q + 8 * u);
                    acc[c][2][u] += z * load(r + 8 * u);
                }
            }
        for (int c = 0; c < 2; c++)
            for (int kh = 0; kh < 3; kh++)
                for (int u = 0; u < nv; u++) sums[((co + c) * 3 + kh) * 3 + u] = acc[c][kh][u];
    }
}

/* Not inlined into stem_backward_rows: there the staging loop's constants took the registers,
 * and two of the sums went through the stack in every iteration (on an AVX2 EPYC the 3-to-32
 * stem's backward ran at two thirds of its speed). */
static __attribute__((noinline)) PRESSURE_SCHEDULING void stem_patch_sums(
    const float *xp, const float *zs, const int64_t *at, int64_t nb, int64_t cout, int64_t row,
    int64_t safe, int cin, vf *sums, int checked) {
#define PATCH_SUMS(NV, CHECKED) \
    stem_patch_sums_nv(xp, zs, at, nb, cout, row, safe, cin, sums, NV, CHECKED)
    const int nv = (3 * cin + 7) / 8;
    if (checked) {
        if (nv == 1) PATCH_SUMS(1, 1);
        else if (nv == 2) PATCH_SUMS(2, 1);
        else PATCH_SUMS(3, 1);
    } else {
        if (nv == 1) PATCH_SUMS(1, 0);
        else if (nv == 2) PATCH_SUMS(2, 0);
        else PATCH_SUMS(3, 0);
    }
#undef PATCH_SUMS
}

/* The stem's weight and bias gradients over rows [first, last) of pooling windows from the
 * pooled gradient (g, y, idx). A window passes its gradient to one convolution output per
 * channel, its winner, so each output channel's weight gradient is a sum over windows of that
 * gradient times the winner's 3x3 input patch: three rows of 3 * cin contiguous floats (NHWC),
 * read as nv whole vectors each (the lanes past 3 * cin read the pixels beyond, and are
 * dropped at the end). That is a quarter of the multiplications of the dense form above (each
 * input times all four outputs' gradients, three of them zero), and the same numbers, each
 * sum running over the windows in the same order; only a NaN or infinity at a window's losing
 * input no longer reaches the gradient (as in the layer's backward pass, where a loser's zero
 * gradient is never multiplied either). The windows are staged a block at a time (each
 * output's gradient and its winner's patch), then each output channel's 3 x nv sums stay in
 * registers over the block. A patch whose whole vectors would read past xp's end (the last
 * image's bottom row) is copied out first. */
#define STEM_STAGE 1024 /* staged outputs: windows x cout */
static inline __attribute__((always_inline)) void stem_backward_rows(
    const float *xp, const float *g, const float *y, const uint8_t *idx, float *dwt, float *db,
    int64_t n, int64_t h, int64_t w, int64_t first, int64_t last, int32_t act, const int cin,
    const int cv) {
    const int64_t h2 = h / 2, w2 = w / 2, cout = 8 * cv, row = (w + 2) * cin;
    const int nv = (3 * cin + 7) / 8, block = STEM_STAGE / (8 * cv);
    const int64_t safe = n * (h + 2) * row - 2 * row - 8 * nv; /* see stem_patch_sums_nv */
    float zs[STEM_STAGE];
    int64_t at[STEM_STAGE];
    vf sums[8 * CONV_MAX_CV][3][3];
    for (int64_t co = 0; co < cout; co++)
        for (int kh = 0; kh < 3; kh++)
            for (int u = 0; u < nv; u++) sums[co][kh][u] = splat(0.0f);
    for (int64_t j0 = first * w2; j0 < last * w2; j0 += block) {
        const int64_t nb = last * w2 - j0 < block ? last * w2 - j0 : block;
        int64_t i = j0 / w2, ow = j0 % w2, top = ((i / h2) * (h + 2) + 2 * (i % h2)) * row;
        int64_t furthest = 0;
        for (int64_t jj = 0; jj < nb; jj++) {
            const int64_t window = top + 2 * ow * cin;
            for (int v = 0; v < cv; v++) {
                const int64_t o = (j0 + jj) * cout + 8 * v;
                const vf z = activate_grad(load(g + o), load(y + o), act);
                store(db + 8 * v, load(db + 8 * v) + z);
                store(zs + jj * cout + 8 * v, z);
                const vi k = load_idx(idx + o);
                const vi off = ((k >> 1) & 1) * (int32_t)row + (k & 1) * cin;
                for (int l = 0; l < 8; l++) at[jj * cout + 8 * v + l] = window + off[l];
            }
            furthest = window + row + cin; /* the window's last patch */
            if (++ow == w2) { /* the next row of windows */
                ow = 0;
                i++;
                top = ((i / h2) * (h + 2) + 2 * (i % h2)) * row;
            }
        }
        stem_patch_sums(xp, zs, at, nb, cout, row, safe, cin, &sums[0][0][0], furthest > safe);
    }
    for (int64_t co = 0; co < cout; co++)
        for (int kh = 0; kh < 3; kh++) {
            float s[3 * 8];
            memcpy(s, sums[co][kh], sizeof s);
            for (int t = 0; t < 3 * cin; t++) /* t = kw * cin + ci */
                dwt[(kh * 3 * cin + t) * cout + co] += s[t];
        }
}

#endif
