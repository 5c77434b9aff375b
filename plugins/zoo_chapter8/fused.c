/* The chapter-8 networks' fused CPU training kernels, forward and backward, for channels_last
 * float32: a 3x3 convolution with its 2x2 max-pooling and tanh or ReLU (or, NetRes's third
 * layer, ReLU and its input added back before the pooling), and the pooling with its
 * activation alone.
 *
 * Built at first use by zoo_chapter8/fused.py with the system C compiler and loaded with
 * ctypes; it includes no PyTorch header (the compiler takes a few seconds: the channel counts
 * it is specialized for unroll into many loops).
 *
 * Pooling layout: x is N x H x W x C (NHWC), H and W even, C a multiple of 8; y and idx are
 * N x H/2 x W/2 x C. idx holds the window position (0..3, row-major) of each maximum: the
 * first one in scan order, a NaN winning, as ATen's max_pool2d chooses. The backward pass
 * writes every element of gx (no separate zero fill).
 *
 * The vector type is GCC/Clang's generic vector extension: AVX2 code with -mavx2 -mfma (and
 * -mavx512f -mavx512vl where the CPU has AVX-512: 32 registers for the same 8-float vectors),
 * SSE or NEON pairs without.
 */
#include "fused_stem.h"

void zoo_pool2_act_forward(const float *x, float *y, uint8_t *idx, int64_t n, int64_t h,
                           int64_t w, int64_t c, int32_t act, int32_t threads) {
    pool2_act_rows(x, NULL, NULL, y, idx, NULL, n, h, w, c, act, threads);
}

void zoo_pool2_act_backward(const float *g, const float *y, const uint8_t *idx, float *gx,
                            int64_t n, int64_t h, int64_t w, int64_t c, int32_t act,
                            int32_t threads) {
    const int64_t h2 = h / 2, w2 = w / 2, rows = n * h2;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1 && rows >= 2 * threads)
#endif
    for (int64_t i = 0; i < rows; i++) {
        float *row0 = gx + ((i / h2) * h + 2 * (i % h2)) * w * c;
        float *row1 = row0 + w * c;
        for (int64_t ow = 0; ow < w2; ow++) {
            float *top = row0 + 2 * ow * c, *bottom = row1 + 2 * ow * c;
            const int64_t out = (i * w2 + ow) * c;
            for (int64_t ch = 0; ch < c; ch += 8) {
                const vf z = activate_grad(load(g + out + ch), load(y + out + ch), act);
                const vi k = load_idx(idx + out + ch);
                const vf zero = splat(0.0f);
                store(top + ch, pick(k == 0, z, zero));
                store(top + c + ch, pick(k == 1, z, zero));
                store(bottom + ch, pick(k == 2, z, zero));
                store(bottom + c + ch, pick(k == 3, z, zero));
            }
        }
    }
}

/* Every image of x (NHWC) padded into xp (pad1_image), shared among the threads of the
 * enclosing parallel region (an orphaned worksharing loop, with its barrier). */
static void pad_images(const float *x, float *xp, int64_t n, int64_t h, int64_t w, int64_t c) {
#ifdef _OPENMP
#pragma omp for
#endif
    for (int64_t b = 0; b < n; b++) pad1_image(x, xp, b, h, w, c);
}

/* Pads x (NHWC) into xp (kept for the backward pass), then computes y and idx. bias may be
 * NULL. With `a` (not NULL), the residual form max_pool2d(relu(conv(x)) + x, 2) (act is
 * then not read; cin == cout), `a` the winners' relu(conv). 0 on success, -1 for shapes the
 * kernel does not take (the caller checks them first). */
PRESSURE_SCHEDULING
int32_t zoo_conv_pool_forward(const float *x, float *xp, const float *wt, const float *bias,
                              float *y, float *a, uint8_t *idx, int64_t n, int64_t h, int64_t w,
                              int64_t cin_, int64_t cout, int32_t act, int32_t threads) {
    if (!conv_shapes_ok(h, w, cin_, cout) || (a != NULL && cin_ != cout)) return -1;
    const int64_t rows = n * (h / 2);
    const int cin = (int)cin_, cv = (int)(cout / 8);
    float zeros[8 * CONV_MAX_CV] = {0};
    if (bias == NULL) bias = zeros;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && rows >= 2 * threads)
#endif
    {
        pad_images(x, xp, n, h, w, cin);
#ifdef _OPENMP
#pragma omp for
#endif
        for (int64_t i = 0; i < rows; i++) {
#define FWD(CIN, CV) conv_pool_rows(xp, wt, bias, y, NULL, idx, h, w, i, i + 1, act, CIN, CV, 0)
#define RES(CIN, CV) conv_pool_rows(xp, wt, bias, y, a, idx, h, w, i, i + 1, act, CIN, CV, 1)
            if (a != NULL) {
                RESIDUAL_CASES(RES);
            } else {
                FORWARD_CASES(FWD);
            }
#undef RES
#undef FWD
        }
    }
    return 0;
}

/* The zeroed sums of a backward pass's chunks: each chunk's k weight-gradient floats and its
 * cout bias-gradient floats, each block on cache lines of its own: two threads adding to bias
 * sums that share a 64-byte line make each other's adds cache misses (the 16-to-8 layer's
 * backward pass about 1.03x as fast on two threads of an AVX2 EPYC with them apart). */
typedef struct {
    void *memory; /* as calloc gave it, for free() */
    float *first;
    int64_t k, kp, cout, cp;
    int32_t chunks;
} chunk_sums;

#define CACHE_LINE_FLOATS 16

static int64_t whole_lines(int64_t floats) {
    return (floats + CACHE_LINE_FLOATS - 1) / CACHE_LINE_FLOATS * CACHE_LINE_FLOATS;
}

/* 0, or -2 out of memory (nothing to free then). */
static int32_t chunk_sums_alloc(chunk_sums *s, int64_t k, int64_t cout, int32_t chunks) {
    s->k = k, s->kp = whole_lines(k), s->cout = cout, s->cp = whole_lines(cout);
    s->chunks = chunks;
    s->memory = calloc((size_t)chunks * (size_t)(s->kp + s->cp) + CACHE_LINE_FLOATS,
                       sizeof(float));
    if (s->memory == NULL) return -2;
    const uintptr_t line = sizeof(float) * CACHE_LINE_FLOATS;
    s->first = (float *)(((uintptr_t)s->memory + line - 1) / line * line);
    return 0;
}

static float *chunk_dw(const chunk_sums *s, int32_t t) { return s->first + (int64_t)t * s->kp; }

static float *chunk_db(const chunk_sums *s, int32_t t) {
    return s->first + (int64_t)s->chunks * s->kp + (int64_t)t * s->cp;
}

/* out = ((acc_0 + acc_1) + acc_2) + ...: the chunks' sums added in chunk order, whichever
 * thread ran which chunk (as many float additions as torch's, in the same order), into dw (k
 * floats) and db (cout); then the memory is freed. */
static void chunk_sums_finish(chunk_sums *s, float *dw, float *db) {
    for (int64_t i = 0; i < s->k; i++) dw[i] = chunk_dw(s, 0)[i];
    for (int64_t i = 0; i < s->cout; i++) db[i] = chunk_db(s, 0)[i];
    for (int32_t t = 1; t < s->chunks; t++) {
        for (int64_t i = 0; i < s->k; i++) dw[i] = dw[i] + chunk_dw(s, t)[i];
        for (int64_t i = 0; i < s->cout; i++) db[i] = db[i] + chunk_db(s, t)[i];
    }
    free(s->memory);
}

/* Chunk t of a stem's backward pass (fused_stem.h: stem_backward_rows from the pooled
 * gradient, or with dz stem_dense_backward_rows from the dense one): rows
 * [t*rows/chunks, (t+1)*rows/chunks) of pooling windows into its own sums, dw_t and db_t
 * (chunk_dw, chunk_db). */
static inline __attribute__((always_inline)) void stem_backward_chunk(
    const float *xp, const float *g, const float *y, const uint8_t *idx, const float *dz,
    const bn_grad_src *src, float *dw_t, float *db_t, int64_t n, int64_t h, int64_t w,
    int32_t act, int cin, int cv, int32_t t, int32_t chunks) {
    const int64_t rows = n * (h / 2);
    const int64_t first = rows * t / chunks, last = rows * (t + 1) / chunks;
#define STEM_ROWS(CIN, CV) \
    do {                                                                                        \
        if (dz != NULL)                                                                         \
            stem_dense_backward_rows(xp, dz, NULL, dw_t, db_t, h, w, first, last, CIN, CV);     \
        else if (src != NULL)                                                                   \
            stem_dense_backward_rows(xp, NULL, src, dw_t, db_t, h, w, first, last, CIN, CV);    \
        else                                                                                    \
            stem_backward_rows(xp, g, y, idx, dw_t, db_t, n, h, w, first, last, act, CIN, CV); \
    } while (0)
    STEM_CASES(STEM_ROWS);
#undef STEM_ROWS
}

/* The weight's gradient into dwt (3 x 3 x cin x cout) and the bias's into db (cout), written
 * (not added to): chunk t sums rows [t*rows/chunks, (t+1)*rows/chunks) into its own zeroed
 * accumulators, which are then added in chunk order, so the result does not depend on which
 * thread ran which chunk. -1 for shapes it does not take, -2 out of memory. */
PRESSURE_SCHEDULING
int32_t zoo_stem_backward(const float *xp, const float *g, const float *y, const uint8_t *idx,
                          float *dwt, float *db, int64_t n, int64_t h, int64_t w, int64_t cin_,
                          int64_t cout, int32_t act, int32_t chunks) {
    if (!conv_shapes_ok(h, w, cin_, cout) || cin_ > STEM_MAX_CIN || chunks < 1) return -1;
    const int cin = (int)cin_, cv = (int)(cout / 8);
    chunk_sums sums;
    if (chunk_sums_alloc(&sums, 9 * cin_ * cout, cout, chunks) != 0) return -2;
#ifdef _OPENMP
#pragma omp parallel for num_threads(chunks) if (chunks > 1)
#endif
    for (int32_t t = 0; t < chunks; t++)
        stem_backward_chunk(xp, g, y, idx, NULL, NULL, chunk_dw(&sums, t), chunk_db(&sums, t),
                            n, h, w, act, cin, cv, t, chunks);
    chunk_sums_finish(&sums, dwt, db);
    return 0;
}

/* The dense stem's backward pass from dz or from src (stem_dense_backward_rows). */
PRESSURE_SCHEDULING
static int32_t stem_dense(const float *x, float *xp, const float *dz, const bn_grad_src *src,
                          float *dwt, float *db, int64_t n, int64_t h, int64_t w, int64_t cin_,
                          int64_t cout, int32_t chunks) {
    if (!conv_shapes_ok(h, w, cin_, cout) || cin_ > STEM_MAX_CIN || chunks < 1) return -1;
    const int cin = (int)cin_, cv = (int)(cout / 8);
    chunk_sums sums;
    if (chunk_sums_alloc(&sums, 9 * cin_ * cout, cout, chunks) != 0) return -2;
#ifdef _OPENMP
#pragma omp parallel num_threads(chunks) if (chunks > 1)
#endif
    {
        pad_images(x, xp, n, h, w, cin);
#ifdef _OPENMP
#pragma omp for
#endif
        for (int32_t t = 0; t < chunks; t++)
            stem_backward_chunk(xp, NULL, NULL, NULL, dz, src, chunk_dw(&sums, t),
                                chunk_db(&sums, t), n, h, w, ACT_NONE, cin, cv, t, chunks);
    }
    chunk_sums_finish(&sums, dwt, db);
    return 0;
}

/* A stem convolution's weight and bias gradients from its dense output gradient dz (NHWC,
 * n x h x w x cout), its input x (NHWC) padded into xp on the way (as zoo_conv_pool_forward
 * does). dwt and db as for zoo_stem_backward: written, the chunks' sums added in order. */
int32_t zoo_stem_dense_backward(const float *x, float *xp, const float *dz, float *dwt,
                                float *db, int64_t n, int64_t h, int64_t w, int64_t cin_,
                                int64_t cout, int32_t chunks) {
    return stem_dense(x, xp, dz, NULL, dwt, db, n, h, w, cin_, cout, chunks);
}

/* zoo_stem_dense_backward where a BatchNorm, pooling and activation follow the stem: its
 * output's gradient computed window by window from what their backward pass reads (g, y, idx,
 * z, mean and the formula's coef, k1, k2: fused_bn.c, phase 1), never stored; the same
 * numbers as that pass's gradient given to zoo_stem_dense_backward. */
int32_t zoo_stem_bn_backward(const float *x, float *xp, const float *g, const float *y,
                             const uint8_t *idx, const float *z, const float *mean,
                             const float *coef, const float *k1, const float *k2, float *dwt,
                             float *db, int64_t n, int64_t h, int64_t w, int64_t cin,
                             int64_t cout, int32_t act, int32_t chunks) {
    const bn_grad_src src = {g, y, z, mean, coef, k1, k2, idx, act};
    return stem_dense(x, xp, NULL, &src, dwt, db, n, h, w, cin, cout, chunks);
}

/* The layer's backward pass (cin a multiple of 8). gx may be NULL (no input gradient; wr is
 * read all the same). dwr (cout x 3 x 3 x cin) and db as for zoo_stem_backward: written, the
 * chunks' sums added in order; chunk t takes images [t*n/chunks, (t+1)*n/chunks). -1 for
 * shapes it does not take, -2 out of memory. */
int32_t zoo_conv_pool_backward(const float *xp, const float *g, const float *y,
                               const uint8_t *idx, const float *wr, float *gx, float *dwr,
                               float *db, int64_t n, int64_t h, int64_t w, int64_t cin,
                               int64_t cout, int32_t act, int32_t chunks) {
    if (!conv_shapes_ok(h, w, cin, cout) || cin % 8 != 0 || chunks < 1) return -1;
    const int cinv = (int)(cin / 8), cv = (int)(cout / 8);
    chunk_sums sums;
    if (chunk_sums_alloc(&sums, 9 * cin * cout, cout, chunks) != 0) return -2;
    int32_t failed = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(chunks) if (chunks > 1) reduction(| : failed)
#endif
    for (int32_t t = 0; t < chunks; t++) {
        const int64_t windows = (h / 2) * (w / 2);
        float *dxp = gx != NULL ? malloc(sizeof(float) * (h + 2) * (w + 2) * cin) : NULL;
        float *zs = malloc(sizeof(float) * windows * cout);
        int32_t *at = malloc(sizeof(int32_t) * windows * cout);
        if ((gx != NULL && dxp == NULL) || zs == NULL || at == NULL) {
            failed = 1;
        } else {
            float *dw_t = chunk_dw(&sums, t), *db_t = chunk_db(&sums, t);
            const int64_t first = n * t / chunks, last = n * (t + 1) / chunks;
#define LAYER_BWD(CINV, CV) conv_backward_images(xp, g, y, idx, wr, gx, dxp, zs, at, dw_t, db_t, \
                                                 h, w, first, last, act, CINV, CV)
            LAYER_CASES(LAYER_BWD);
#undef LAYER_BWD
        }
        free(dxp);
        free(zs);
        free(at);
    }
    if (failed) {
        free(sums.memory);
        return -2;
    }
    chunk_sums_finish(&sums, dwr, db);
    return 0;
}

