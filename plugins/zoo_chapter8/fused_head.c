/* The chapter-8 networks' classifier head, fused for CPU training: flatten, a hidden linear
 * layer with tanh or ReLU, and the output linear layer, forward and backward, in one call
 * each instead of a dozen ATen operators (each a dispatch, several an OpenMP region or a
 * cold start of MKL on a 64 x 512 matrix: about 0.4 ms of Net's 2.9 ms step, on two AVX2
 * cores, for a sixth of that in arithmetic).
 *
 * x is the last feature map's memory, channels_last: n rows of f = pixels * c floats in
 * NHWC order (c a multiple of 8). The hidden layer's weight comes as nn.Linear keeps it
 * (hid x f, its columns in the NCHW flatten order) and is permuted into x's order in
 * scratch; its gradient goes back in nn.Linear's order. hid is a multiple of 8; w2 is the
 * output layer's weight (k x hid). All row-major.
 *
 * Every output element is one thread's sum over its whole range, in a fixed order (the
 * hidden units' sums: eight interleaved partial sums over f, then added lane by lane), so
 * the numbers do not depend on the number of threads. */
#include "fused_simd.h"

#define HEAD_ROWS 2 /* rows of x per block: 2 x 4 hidden units' sums in registers */
#define HEAD_UNITS 4

static inline float lanes_sum(vf v) {
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

/* Rows [r0, r0 + rows) (rows <= HEAD_ROWS) of the hidden layer's pre-activation, units
 * [j0, j0 + HEAD_UNITS), into z (n x hid). */
static inline __attribute__((always_inline)) void hidden_block(
    const float *x, const float *w1, float *z, int64_t r0, int rows, int64_t j0, int64_t f,
    int64_t hid) {
    vf acc[HEAD_ROWS][HEAD_UNITS];
    for (int r = 0; r < HEAD_ROWS; r++)
        for (int j = 0; j < HEAD_UNITS; j++) acc[r][j] = splat(0.0f);
    for (int64_t i = 0; i < f; i += 8) {
        vf wv[HEAD_UNITS];
        for (int j = 0; j < HEAD_UNITS; j++) wv[j] = load(w1 + (j0 + j) * f + i);
        for (int r = 0; r < rows; r++) {
            const vf xv = load(x + (r0 + r) * f + i);
            for (int j = 0; j < HEAD_UNITS; j++) acc[r][j] += xv * wv[j];
        }
    }
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < HEAD_UNITS; j++) z[(r0 + r) * hid + j0 + j] = lanes_sum(acc[r][j]);
}

/* w1's columns from nn.Linear's order (the NCHW flatten: channel, then pixel) into the
 * channels_last map's (pixel, then channel): w1n, hid x f. */
static void nhwc_columns(const float *w1, float *w1n, int64_t hid, int64_t c, int64_t pixels) {
    for (int64_t j = 0; j < hid; j++)
        for (int64_t ch = 0; ch < c; ch++) {
            const float *src = w1 + (j * c + ch) * pixels;
            float *dst = w1n + j * c * pixels + ch;
            for (int64_t p = 0; p < pixels; p++) dst[p * c] = src[p];
        }
}

/* a = act(x w1^T + b1) (n x hid, kept for the backward pass), out = a w2^T + b2 (n x k); w1
 * in nn.Linear's column order, c the map's channels (a multiple of 8), w1n scratch of hid x f
 * floats. 0, or -1 for shapes it does not take. */
int32_t zoo_head_forward(const float *x, const float *w1_nchw, float *w1, const float *b1,
                         const float *w2, const float *b2, float *a, float *out, int64_t n,
                         int64_t c, int64_t f, int64_t hid, int64_t k, int32_t act,
                         int32_t threads) {
    if (n < 1 || c < 8 || c % 8 != 0 || f < c || f % c != 0 || hid < 8 || hid % 8 != 0 ||
        k < 1)
        return -1;
    nhwc_columns(w1_nchw, w1, hid, c, f / c);
    const int64_t blocks = (n + HEAD_ROWS - 1) / HEAD_ROWS;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1 && blocks >= 2 * threads)
#endif
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t r0 = b * HEAD_ROWS;
        const int rows = (int)(n - r0 < HEAD_ROWS ? n - r0 : HEAD_ROWS);
        for (int64_t j0 = 0; j0 < hid; j0 += HEAD_UNITS)
            if (rows == HEAD_ROWS)
                hidden_block(x, w1, a, r0, HEAD_ROWS, j0, f, hid);
            else
                hidden_block(x, w1, a, r0, 1, j0, f, hid);
        for (int r = 0; r < rows; r++) {
            float *ar = a + (r0 + r) * hid;
            for (int64_t j = 0; j < hid; j += 8)
                store(ar + j, activate(load(ar + j) + load(b1 + j), act));
            for (int64_t o = 0; o < k; o++) {
                vf s = splat(0.0f);
                for (int64_t j = 0; j < hid; j += 8) s += load(ar + j) * load(w2 + o * hid + j);
                out[(r0 + r) * k + o] = lanes_sum(s) + b2[o];
            }
        }
    }
    return 0;
}

/* gx rows r0 and r1 (the same row twice at an odd end), `vecs` vectors of f from i0. */
static inline __attribute__((always_inline)) void input_grad_block(
    const float *dz, const float *w1, float *gx, int64_t r0, int64_t r1, int64_t i0, int64_t f,
    int64_t hid, const int vecs) {
    vf acc[2][4];
    for (int v = 0; v < 4; v++) acc[0][v] = acc[1][v] = splat(0.0f);
    for (int64_t j = 0; j < hid; j++) {
        const float *wj = w1 + j * f + i0;
        const vf d0 = splat(dz[r0 * hid + j]), d1 = splat(dz[r1 * hid + j]);
        for (int v = 0; v < vecs; v++) {
            const vf wv = load(wj + 8 * v);
            acc[0][v] += d0 * wv;
            acc[1][v] += d1 * wv;
        }
    }
    for (int v = 0; v < vecs; v++) {
        store(gx + r0 * f + i0 + 8 * v, acc[0][v]);
        store(gx + r1 * f + i0 + 8 * v, acc[1][v]);
    }
}

/* The gradients from g (n x k, the output's): dw2 (k x hid), db2 (k), db1 (hid), dw1 (hid x f,
 * nn.Linear's column order), and gx (n x f, NHWC; not written where NULL). scratch holds
 * 2 x hid x f + n x hid floats: w1 and dw1 in x's column order, and the hidden
 * pre-activation's gradient. 0, or -1 for shapes it does not take. */
int32_t zoo_head_backward(const float *x, const float *w1_nchw, const float *w2,
                          const float *a, const float *g, float *scratch, float *gx,
                          float *dw1_nchw, float *db1, float *dw2, float *db2, int64_t n,
                          int64_t c, int64_t f, int64_t hid, int64_t k, int32_t act,
                          int32_t threads) {
    if (n < 1 || c < 8 || c % 8 != 0 || f < c || f % c != 0 || hid < 8 || hid % 8 != 0 ||
        k < 1)
        return -1;
    float *w1 = scratch, *dw1 = scratch + hid * f, *dz = scratch + 2 * hid * f;
    const int64_t pixels = f / c;
    nhwc_columns(w1_nchw, w1, hid, c, pixels);
    for (int64_t j = 0; j < hid; j += 8) store(db1 + j, splat(0.0f));
    for (int64_t o = 0; o < k; o++) {
        db2[o] = 0.0f;
        for (int64_t j = 0; j < hid; j += 8) store(dw2 + o * hid + j, splat(0.0f));
    }
    for (int64_t r = 0; r < n; r++) { /* the small part: n x k x hid */
        const float *ar = a + r * hid, *gr = g + r * k;
        for (int64_t j = 0; j < hid; j += 8) {
            vf da = splat(0.0f);
            for (int64_t o = 0; o < k; o++) {
                const vf go = splat(gr[o]);
                da += go * load(w2 + o * hid + j);
                store(dw2 + o * hid + j, load(dw2 + o * hid + j) + go * load(ar + j));
            }
            const vf dzj = activate_grad(da, load(ar + j), act);
            store(dz + r * hid + j, dzj);
            store(db1 + j, load(db1 + j) + dzj);
        }
        for (int64_t o = 0; o < k; o++) db2[o] += gr[o];
    }
    const int64_t fv = f / 8, units = hid / HEAD_UNITS;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
        /* dw1[j][i] = sum over rows of dz[r][j] x[r][i]: HEAD_UNITS units x 2 vectors of f */
#ifdef _OPENMP
#pragma omp for nowait
#endif
        for (int64_t b = 0; b < units * ((fv + 1) / 2); b++) {
            const int64_t j0 = (b % units) * HEAD_UNITS, i0 = (b / units) * 16;
            const int two = i0 + 8 < f;
            vf acc[HEAD_UNITS][2];
            for (int j = 0; j < HEAD_UNITS; j++) acc[j][0] = acc[j][1] = splat(0.0f);
            for (int64_t r = 0; r < n; r++) {
                const vf x0 = load(x + r * f + i0), x1 = two ? load(x + r * f + i0 + 8) : x0;
                for (int j = 0; j < HEAD_UNITS; j++) {
                    const vf d = splat(dz[r * hid + j0 + j]);
                    acc[j][0] += d * x0;
                    acc[j][1] += d * x1;
                }
            }
            for (int j = 0; j < HEAD_UNITS; j++) {
                store(dw1 + (j0 + j) * f + i0, acc[j][0]);
                if (two) store(dw1 + (j0 + j) * f + i0 + 8, acc[j][1]);
            }
        }
        /* gx[r][i] = sum over units of dz[r][j] w1[j][i]: two rows x 4 vectors of f */
        if (gx != NULL) {
            const int64_t pairs = (n + 1) / 2;
#ifdef _OPENMP
#pragma omp for
#endif
            for (int64_t b = 0; b < pairs * ((fv + 3) / 4); b++) {
                const int64_t r0 = (b % pairs) * 2, i0 = (b / pairs) * 32;
                const int64_t r1 = r0 + 1 < n ? r0 + 1 : r0;
                if (fv - i0 / 8 >= 4)
                    input_grad_block(dz, w1, gx, r0, r1, i0, f, hid, 4);
                else
                    input_grad_block(dz, w1, gx, r0, r1, i0, f, hid, (int)(fv - i0 / 8));
            }
        }
    }
    for (int64_t j = 0; j < hid; j++) /* dw1 back to nn.Linear's column order */
        for (int64_t p = 0; p < pixels; p++)
            for (int64_t ch = 0; ch < c; ch++)
                dw1_nchw[(j * c + ch) * pixels + p] = dw1[(j * pixels + p) * c + ch];
    return 0;
}
