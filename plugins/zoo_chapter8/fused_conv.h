/* The loops of the chapter-8 convolution kernels, inlined into fused.c's entry points and
 * specialized there for the channel counts the networks use. */
#ifndef ZOO_FUSED_CONV_H
#define ZOO_FUSED_CONV_H

#include "fused_simd.h"

/* A 3x3 convolution (stride 1, padding 1) with its 2x2 max-pool and activation in one pass:
 * act(max_pool2d(conv2d(x, w, b), 2)). The convolution's output is never stored: each 2x2
 * window's four outputs are computed in registers and pooled at once, and the activation
 * runs over each finished row of windows (a loop of independent vectors: within each
 * window's epilogue tanh's long chain of dependent operations stalled the sums; the stem's
 * forward pass 1.15x as fast on an AVX2 EPYC, the same numbers). xp is the input
 * zero-padded by one pixel on each side, NHWC: n x (h + 2) x (w + 2) x cin; wt is the weight
 * as [kh][kw][cin][cout]. Two backward passes: the stem's (weight and bias gradients only, for
 * a network's first layer on a few input channels: fused_stem.h) and the layer's (also the
 * input gradient, for a multiple of 8 input channels). Common channel counts are compiled as constants, so
 * that the loops unroll and the accumulators stay in registers. */
#define CONV_MAX_CIN 64
#define CONV_MAX_CV 8
#define STEM_MAX_CIN 8
#define CONV_MAX_CINV (CONV_MAX_CIN / 8)

/* GCC's register-pressure-aware scheduling where the vector registers are 16 (AVX2): with it
 * the forward pass and the stem's backward keep their accumulators in registers instead of
 * spilling them (on an AVX2 EPYC: the 3-to-32 first layer's forward 1.5x as fast, the stems'
 * backward 1.45x); the layers' backward ran 10 % slower with it, and goes without. Scheduling
 * reorders no arithmetic: the numbers are the same bit for bit as a build with -DZOO_UNTUNED,
 * which leaves out both (tests/test_fused_isa.py). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX2__) && !defined(__AVX512VL__) && \
    !defined(ZOO_UNTUNED)
#define PRESSURE_SCHEDULING __attribute__((optimize("schedule-insns", "sched-pressure")))
#else
#define PRESSURE_SCHEDULING
#endif

/* `win` adjacent pooling windows from p0 (their top left pixel in xp): with one output
 * vector, two windows give eight independent sums, enough to keep both FMA units busy.
 * `residual` (a compile-time constant: the plain form's registers stay as they were; the
 * 3-to-32 first layer lost a third of its speed to a run-time test), cin == cout: each
 * output is relu(conv) plus the input at its own pixel (`skip`: window 0's first, in xp),
 * pooled with no activation after, and `a` keeps the winner's relu(conv), from which the
 * backward pass takes relu's gradient. */
static inline __attribute__((always_inline)) void conv_pool_windows(
    const float *p0, const float *wt, const float *bias, float *y, uint8_t *idx, int64_t row,
    const int cin, const int cv, const int win, const int cout, const float *skip,
    float *a, const int residual) {
    vf acc[2][4][CONV_MAX_CV];
    for (int u = 0; u < win; u++)
        for (int v = 0; v < cv; v++) {
            const vf bv = load(bias + 8 * v);
            acc[u][0][v] = bv; acc[u][1][v] = bv; acc[u][2][v] = bv; acc[u][3][v] = bv;
        }
    for (int kh = 0; kh < 3; kh++) {
        const float *r0 = p0 + kh * row, *r1 = r0 + row;
        for (int kw = 0; kw < 3; kw++)
            for (int ci = 0; ci < cin; ci++) {
                const float *wk = wt + ((kh * 3 + kw) * cin + ci) * cout;
                for (int u = 0; u < win; u++) {
                    const int at = (2 * u + kw) * cin + ci;
                    const vf s0 = splat(r0[at]), s1 = splat(r0[at + cin]);
                    const vf s2 = splat(r1[at]), s3 = splat(r1[at + cin]);
                    for (int v = 0; v < cv; v++) {
                        const vf wv = load(wk + 8 * v);
                        acc[u][0][v] += s0 * wv; acc[u][1][v] += s1 * wv;
                        acc[u][2][v] += s2 * wv; acc[u][3][v] += s3 * wv;
                    }
                }
            }
    }
    for (int u = 0; u < win; u++)
        for (int v = 0; v < cv; v++) {
            vi k;
            if (residual) {
                const float *s = skip + 2 * u * cin + 8 * v;
                const vf r0 = activate(acc[u][0][v], ACT_RELU);
                const vf r1 = activate(acc[u][1][v], ACT_RELU);
                const vf r2 = activate(acc[u][2][v], ACT_RELU);
                const vf r3 = activate(acc[u][3][v], ACT_RELU);
                store(y + u * cout + 8 * v, max4(r0 + load(s), r1 + load(s + cin),
                                                 r2 + load(s + row), r3 + load(s + row + cin), &k));
                store(a + u * cout + 8 * v,
                      pick(k == 0, r0, pick(k == 1, r1, pick(k == 2, r2, r3))));
            } else {
                /* the activation follows for the whole row (conv_pool_rows) */
                store(y + u * cout + 8 * v,
                      max4(acc[u][0][v], acc[u][1][v], acc[u][2][v], acc[u][3][v], &k));
            }
            store_idx(idx + u * cout + 8 * v, k);
        }
}

/* Output vectors per pass over a row of windows: all of them, but two where the vector
 * registers are 16 (AVX2), whose 4 x 4 accumulators, with their weights and inputs, spill
 * to memory. With PRESSURE_SCHEDULING (above) the 3-to-32 first layer's forward pass runs
 * 1.5x as fast on an AVX2 EPYC (neither change alone gained much); each channel's sums run
 * in the same order either way. */
#if !defined(__AVX2__) || defined(__AVX512VL__) || defined(ZOO_UNTUNED)
#define CONV_PASS_CV(cv) (cv)
#else
#define CONV_PASS_CV(cv) ((cv) > 2 && (cv) % 2 == 0 ? 2 : (cv))
#endif

static inline __attribute__((always_inline)) void conv_pool_rows(
    const float *xp, const float *wt, const float *bias, float *y, float *a, uint8_t *idx,
    int64_t h, int64_t w, int64_t first, int64_t last, int32_t act, const int cin,
    const int cv, const int residual) {
    const int64_t h2 = h / 2, w2 = w / 2, cout = 8 * cv, row = (w + 2) * cin;
    const int win = cv == 1 ? 2 : 1, pv = CONV_PASS_CV(cv);
    for (int64_t i = first; i < last; i++) {
        const int64_t b = i / h2, oh = i % h2;
        const float *top = xp + (b * (h + 2) + 2 * oh) * row;
        for (int v0 = 0; v0 < cv; v0 += pv) { /* a pass over the row for each group */
            int64_t ow = 0;
            for (; ow + win <= w2; ow += win) {
                const int64_t out = (i * w2 + ow) * cout + 8 * v0;
                const float *p0 = top + 2 * ow * cin;
                conv_pool_windows(p0, wt + 8 * v0, bias + 8 * v0, y + out, idx + out, row,
                                  cin, pv, win, (int)cout, p0 + row + cin + 8 * v0,
                                  residual ? a + out : NULL, residual);
            }
            for (; ow < w2; ow++) {
                const int64_t out = (i * w2 + ow) * cout + 8 * v0;
                const float *p0 = top + 2 * ow * cin;
                conv_pool_windows(p0, wt + 8 * v0, bias + 8 * v0, y + out, idx + out, row,
                                  cin, pv, 1, (int)cout, p0 + row + cin + 8 * v0,
                                  residual ? a + out : NULL, residual);
            }
            if (!residual) /* apart from the sums: independent vectors, the constants at hand */
                for (ow = 0; ow < w2; ow++)
                    for (int v = 0; v < pv; v++) {
                        float *out = y + (i * w2 + ow) * cout + 8 * (v0 + v);
                        store(out, activate(load(out), act));
                    }
        }
    }
}

/* The layers' weight-gradient sums in a loop of their own where their taps go in groups of 3
 * (conv_backward_images); -DZOO_UNTUNED keeps them in the scatter's loop, which gives the same
 * numbers bit for bit (tests/test_fused_isa.py compares the two builds). */
#ifdef ZOO_UNTUNED
#define CONV_SUMS_APART 0
#else
#define CONV_SUMS_APART 1
#endif

/* Tap j of a group of taps from t0: its offset in the padded image (rows of `row` floats). */
static inline int64_t tap_offset(int t0, int j, int64_t row, int64_t cin) {
    return ((t0 + j) / 3) * row + ((t0 + j) % 3) * cin;
}

/* One image's weight gradient alone (conv_backward_images, taps in groups of 3): for each
 * output channel and group of taps, the sums over each row of windows in registers, added to
 * dwr row by row: the order of the joint loop below, so the same numbers. Apart from the
 * input gradient's scatter, the sums' loop is only loads and FMAs (the 16-to-8 layer's
 * backward pass 1.06-1.25x as fast on two threads of an AVX2 EPYC, the 8-to-8 1.37x). */
static inline __attribute__((always_inline)) void conv_weight_grad_image(
    const float *xb, const float *zs, const int32_t *at, float *dwr, int64_t h2, int64_t w2,
    int64_t row, const int cinv, const int cv) {
    const int64_t cin = 8 * cinv, cout = 8 * cv;
    for (int64_t co = 0; co < cout; co++)
        for (int t0 = 0; t0 < 9; t0 += 3) {
            vf tot[3][CONV_MAX_CINV];
            int64_t tap[3];
            for (int j = 0; j < 3; j++) {
                tap[j] = tap_offset(t0, j, row, cin);
                for (int u = 0; u < cinv; u++)
                    tot[j][u] = load(dwr + (co * 9 + t0 + j) * cin + 8 * u);
            }
            for (int64_t oh = 0; oh < h2; oh++) {
                vf dw[3][CONV_MAX_CINV];
                for (int j = 0; j < 3; j++)
                    for (int u = 0; u < cinv; u++) dw[j][u] = splat(0.0f);
                for (int64_t i = oh * w2; i < (oh + 1) * w2; i++) {
                    const float zc = zs[i * cout + co];
                    if (zc == 0.0f) continue;
                    const vf z = splat(zc);
                    const int64_t src = at[i * cout + co];
                    for (int j = 0; j < 3; j++)
                        for (int u = 0; u < cinv; u++)
                            dw[j][u] += z * load(xb + src + tap[j] + 8 * u);
                }
                for (int j = 0; j < 3; j++)
                    for (int u = 0; u < cinv; u++) tot[j][u] = tot[j][u] + dw[j][u];
            }
            for (int j = 0; j < 3; j++)
                for (int u = 0; u < cinv; u++)
                    store(dwr + (co * 9 + t0 + j) * cin + 8 * u, tot[j][u]);
        }
}

/* One image's scatter of the windows' gradients through the weights into dxp (zeroed by the
 * caller), and with `sums` also the weight gradient's sums into dwr: a row of windows at a
 * time (it stays in L1), each output channel, `group` taps whose weights (and sums) fit in
 * registers. The order of the additions into each dxp element is the loops' order. */
static inline __attribute__((always_inline)) void conv_scatter_image(
    const float *xb, const float *zs, const int32_t *at, const float *wr, float *dxp,
    float *dwr, int64_t h2, int64_t w2, int64_t row, const int cinv, const int cv,
    const int group, const int sums) {
    const int64_t cin = 8 * cinv, cout = 8 * cv;
    for (int64_t oh = 0; oh < h2; oh++)
        for (int64_t co = 0; co < cout; co++)
            for (int t0 = 0; t0 < 9; t0 += group) {
                vf wk[3][CONV_MAX_CINV], dw[3][CONV_MAX_CINV];
                int64_t tap[3];
                for (int j = 0; j < group; j++) {
                    tap[j] = tap_offset(t0, j, row, cin);
                    for (int u = 0; u < cinv; u++) {
                        wk[j][u] = load(wr + (co * 9 + t0 + j) * cin + 8 * u);
                        dw[j][u] = splat(0.0f);
                    }
                }
                for (int64_t i = oh * w2; i < (oh + 1) * w2; i++) {
                    const float zc = zs[i * cout + co];
                    if (zc == 0.0f) continue;
                    const vf z = splat(zc);
                    const int64_t src = at[i * cout + co];
                    for (int j = 0; j < group; j++)
                        for (int u = 0; u < cinv; u++) {
                            const int64_t s = src + tap[j] + 8 * u;
                            if (sums) dw[j][u] += z * load(xb + s);
                            if (dxp != NULL) store(dxp + s, load(dxp + s) + z * wk[j][u]);
                        }
                }
                if (sums)
                    for (int j = 0; j < group; j++)
                        for (int u = 0; u < cinv; u++) {
                            float *d = dwr + (co * 9 + t0 + j) * cin + 8 * u;
                            store(d, load(d) + dw[j][u]);
                        }
            }
}

/* The layer's backward pass over images [first, last): the input gradient of each image into
 * gx (NHWC, unpadded) through the scratch image dxp ((h + 2) x (w + 2) x cin floats), and the
 * weight and bias gradients accumulated into dwr and db. Each pooling window passes its
 * gradient to one convolution output per channel, so the gradients are scattered from there:
 * a quarter of the dense convolutions' work, vectorized over the input channels. wr and dwr
 * are laid out [cout][kh][kw][cin], a channels_last weight's memory. The loops run over
 * output channels and groups of taps outside, windows inside, so that a group's weights and
 * weight-gradient sums stay in registers; where a group is 3 taps (up to 16 input channels)
 * the weight gradient's sums run in a loop of their own (conv_weight_grad_image,
 * CONV_SUMS_APART), else beside the scatter (with 24 or more input channels the separate
 * loop ran slower). zs and
 * at (h/2 x w/2 x cout each) are scratch for each output's gradient and the offset of its
 * winning input pixel. An output whose gradient is zero is skipped (ReLU's often are).
 * Pooling indices are read modulo 4 here and in every kernel: a window position whatever the
 * byte holds, so a read never leaves the image. */
static inline __attribute__((always_inline)) void conv_backward_images(
    const float *xp, const float *g, const float *y, const uint8_t *idx, const float *wr,
    float *gx, float *dxp, float *zs, int32_t *at, float *dwr, float *db, int64_t h,
    int64_t w, int64_t first, int64_t last, int32_t act, const int cinv, const int cv) {
    const int64_t h2 = h / 2, w2 = w / 2, windows = h2 * w2;
    const int64_t cin = 8 * cinv, cout = 8 * cv, row = (w + 2) * cin, padded = (h + 2) * row;
    const int group = cinv <= 2 ? 3 : 1; /* taps whose weights and sums fit in registers */
    const int apart = group == 3 && CONV_SUMS_APART;
    for (int64_t b = first; b < last; b++) {
        const float *xb = xp + b * padded;
        for (int64_t i = 0; i < windows; i++) {
            const int64_t out = (b * windows + i) * cout;
            for (int v = 0; v < cv; v++) {
                const vf z = activate_grad(load(g + out + 8 * v), load(y + out + 8 * v), act);
                store(db + 8 * v, load(db + 8 * v) + z);
                store(zs + i * cout + 8 * v, z);
            }
            const int64_t window = 2 * (i / w2) * row + 2 * (i % w2) * cin;
            for (int64_t co = 0; co < cout; co++) {
                const int k = idx[out + co]; /* its low two bits: a window position */
                at[i * cout + co] = (int32_t)(window + ((k >> 1) & 1) * row + (k & 1) * cin);
            }
        }
        if (apart) /* the weight's sums first; the scatter then only for the input's */
            conv_weight_grad_image(xb, zs, at, dwr, h2, w2, row, cinv, cv);
        if (gx != NULL) memset(dxp, 0, sizeof(float) * padded);
        if (gx != NULL || !apart)
            conv_scatter_image(xb, zs, at, wr, gx != NULL ? dxp : NULL, dwr, h2, w2, row, cinv,
                               cv, group, !apart);
        if (gx != NULL)
            for (int64_t i = 0; i < h; i++)
                memcpy(gx + (b * h + i) * w * cin, dxp + (i + 1) * row + cin,
                       sizeof(float) * w * cin);
    }
}

#define STEM_CASES(CALL)                                                   \
    if (cin == 3 && cv == 2) CALL(3, 2);                                   \
    else if (cin == 3 && cv == 4) CALL(3, 4);                              \
    else if (cin == 3 && cv == 1) CALL(3, 1);                              \
    else if (cin == 1 && cv == 2) CALL(1, 2);                              \
    else if (cin == 1 && cv == 4) CALL(1, 4);                              \
    else CALL(cin, cv)

/* the stem's shapes and the chapter-8 networks' later layers */
#define FORWARD_CASES(CALL)                                                \
    if (cin == 16 && cv == 1) CALL(16, 1);                                 \
    else if (cin == 32 && cv == 2) CALL(32, 2);                            \
    else if (cin == 16 && cv == 2) CALL(16, 2);                            \
    else STEM_CASES(CALL)

/* NetRes's residual layer (as many channels out as in) */
#define RESIDUAL_CASES(CALL)                                               \
    if (cin == 16 && cv == 2) CALL(16, 2);                                 \
    else CALL(cin, cv)

#define LAYER_CASES(CALL)                                                  \
    if (cinv == 2 && cv == 1) CALL(2, 1);                                  \
    else if (cinv == 4 && cv == 2) CALL(4, 2);                             \
    else if (cinv == 2 && cv == 2) CALL(2, 2);                             \
    else CALL(cinv, cv)

/* The shapes the kernels take; the backward pass keeps offsets within one padded image in
 * int32. */
static int conv_shapes_ok(int64_t h, int64_t w, int64_t cin, int64_t cout) {
    return cin >= 1 && cin <= CONV_MAX_CIN && cout % 8 == 0 && cout >= 8 &&
           cout / 8 <= CONV_MAX_CV && h >= 2 && w >= 2 && h % 2 == 0 && w % 2 == 0 &&
           h <= INT32_MAX && w <= INT32_MAX && (h + 2) * (w + 2) * cin <= INT32_MAX;
}

/* Image b of x (NHWC, n x h x w x c) with one zero pixel around it, into xp:
 * n x (h + 2) x (w + 2) x c. */
static void pad1_image(const float *x, float *xp, int64_t b, int64_t h, int64_t w, int64_t c) {
    const int64_t row = w * c, prow = (w + 2) * c;
    float *dst = xp + b * (h + 2) * prow;
    memset(dst, 0, sizeof(float) * prow);
    for (int64_t i = 0; i < h; i++) {
        float *d = dst + (i + 1) * prow;
        memset(d, 0, sizeof(float) * c);
        memcpy(d + c, x + (b * h + i) * row, sizeof(float) * row);
        memset(d + c + row, 0, sizeof(float) * c);
    }
    memset(dst + (h + 1) * prow, 0, sizeof(float) * prow);
}


#endif
