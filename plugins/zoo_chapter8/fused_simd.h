/* The vector helpers of the chapter-8 kernels (fused.c, fused_bn.c): 8-float vectors in
 * GCC/Clang's generic vector extension, Eigen's tanh, and the 2x2 pooling window's maximum
 * with its position. */
#ifndef ZOO_FUSED_SIMD_H
#define ZOO_FUSED_SIMD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
typedef uint8_t vb __attribute__((vector_size(8)));

enum { ACT_TANH = 0, ACT_RELU = 1, ACT_NONE = 2 }; /* ACT_NONE: a gradient passed as is */

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float x) { return (vf){x, x, x, x, x, x, x, x}; }
static inline vf pick(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

/* Whether any lane of a comparison's mask is set. */
static inline int any_lane(vi m) {
#ifdef __AVX2__
    return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#else
    uint64_t q[4];
    memcpy(q, &m, sizeof q);
    return (q[0] | q[1] | q[2] | q[3]) != 0;
#endif
}

/* Eigen's float tanh (as TensorFlow uses on CPU): a 13/6 rational approximation, identity
 * below 4e-4; within 5 ulp of the correctly rounded value with FMA (-mfma), 7 without. Past
 * 7.8119659 the correctly rounded tanh takes only six values, 1 - 5 ulp up to 1 - 1 ulp, then
 * exactly 1 from 9.0109138 (where the true value rounds to 1), so there it is chosen by
 * comparison, exactly: the approximation's clamp (at 7.9053, where without FMA it rounds to 1)
 * is never used, and a saturated unit passes no gradient (1 - y*y = 0) exactly where ATen's
 * does. Each threshold is the smallest float whose correctly rounded tanh is that value. */
static inline vf tanh8(vf a) {
    vf x = pick(a < splat(7.90531110763549805f), a, splat(7.90531110763549805f));
    x = pick(x > splat(-7.90531110763549805f), x, splat(-7.90531110763549805f));
    vf x2 = x * x;
    vf p = x2 * splat(-2.76076847742355e-16f) + splat(2.00018790482477e-13f);
    p = x2 * p + splat(-8.60467152213735e-11f);
    p = x2 * p + splat(5.12229709037114e-08f);
    p = x2 * p + splat(1.48572235717979e-05f);
    p = x2 * p + splat(6.37261928875436e-04f);
    p = x2 * p + splat(4.89352455891786e-03f);
    p = x * p;
    vf q = x2 * splat(1.19825839466702e-06f) + splat(1.18534705686654e-04f);
    q = x2 * q + splat(2.26843463243900e-03f);
    q = x2 * q + splat(4.89352518554385e-03f);
    const vf abs_a = (vf)((vi)a & 0x7fffffff);
    vf r = pick(abs_a < splat(0.0004f), a, p / q);
    const vi saturated = abs_a >= splat(0x1.f3f74p+2f);
    if (any_lane(saturated)) { /* rare once training has begun: a branch, not five blends */
        vf tail = pick(abs_a >= splat(0x1.fa6324p+2f), splat(0x1.fffff8p-1f),
                       splat(0x1.fffff6p-1f));
        tail = pick(abs_a >= splat(0x1.0136f6p+3f), splat(0x1.fffffap-1f), tail);
        tail = pick(abs_a >= splat(0x1.069926p+3f), splat(0x1.fffffcp-1f), tail);
        tail = pick(abs_a >= splat(0x1.0ec57ep+3f), splat(0x1.fffffep-1f), tail);
        tail = pick(abs_a >= splat(0x1.205968p+3f), splat(1.0f), tail);
        tail = (vf)((vi)tail | ((vi)a & (vi)splat(-0.0f))); /* a's sign */
        r = pick(saturated, tail, r);
    }
    return pick(a != a, a, r); /* NaN stays NaN */
}

static inline vf activate(vf m, int act) {
    if (act == ACT_TANH) return tanh8(m);
    return pick((m > splat(0.0f)) | (m != m), m, splat(0.0f));
}

/* The gradient through the activation, from its output y: as aten::tanh_backward and
 * threshold_backward (which passes the gradient of a NaN output). */
static inline vf activate_grad(vf g, vf y, int act) {
    if (act == ACT_TANH) return g * (splat(1.0f) - y * y);
    if (act == ACT_NONE) return g;
    return pick(y <= splat(0.0f), splat(0.0f), g);
}

/* z's gradient through a training BatchNorm at pixel `pos` of a 2x2 pooling window whose
 * winners are k: coef * dy at the winner, k1 + k2 * (z - mean) everywhere (fused_bn.py holds
 * the formula). One expression for fused_bn.c's backward pass, which writes it, and the stem's
 * backward pass fused with it (fused_stem.h), which uses it at once: the same numbers. */
static inline vf bn_grad(vi k, int32_t pos, vf cd, vf k1, vf k2, vf z, vf mean) {
    return pick(k == pos, cd, splat(0.0f)) + (k1 + k2 * (z - mean));
}

/* The maximum of a 2x2 window's four vectors (row-major), and in *k the position of each
 * lane's maximum: the first in scan order, a NaN winning, as ATen's max_pool2d. */
static inline vf max4(vf a, vf b, vf c, vf d, vi *k) {
    vf m = a;
    vi pos = (vi){0}, t;
    t = (b > m) | (b != b); m = pick(t, b, m); pos = (t & 1) | (~t & pos);
    t = (c > m) | (c != c); m = pick(t, c, m); pos = (t & 2) | (~t & pos);
    t = (d > m) | (d != d); m = pick(t, d, m); pos = (t & 3) | (~t & pos);
    *k = pos;
    return m;
}

/* Pooling positions as bytes. GCC 12 turns the generic conversions into a scalar extraction
 * and insertion per lane (some 35 instructions a vector, as many as the rest of a pooling
 * window's work); AVX2 has single instructions for them. Either way the same bytes. */
static inline void store_idx(uint8_t *p, vi k) {
#ifdef __AVX2__
    const __m256i v = (__m256i)k;
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64((__m128i *)p, _mm_packus_epi16(w, w));
#else
    vb kb = __builtin_convertvector(k, vb);
    memcpy(p, &kb, sizeof kb);
#endif
}

static inline vi load_idx(const uint8_t *p) {
#ifdef __AVX2__
    const vi k = (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vb kb;
    memcpy(&kb, p, sizeof kb);
    const vi k = __builtin_convertvector(kb, vi);
#endif
    return k & 3; /* a window position, whatever idx holds */
}

/* One row of 2x2 windows (row i of the pooled output, images stacked) of x (NHWC, n x h x w
 * x c, c a multiple of 8): y = act(max of the window), idx = its position. With alpha
 * (and beta) each value is first x * alpha + beta per channel (a BatchNorm, fused_bn.c),
 * and with xw the winner's own x is kept there (as y); without, x itself.
 * pool2_act_rows: every row, on up to `threads` threads. */
static inline __attribute__((always_inline)) void pool2_act_row(
    const float *x, const float *alpha, const float *beta, float *y, uint8_t *idx, float *xw,
    int64_t i, int64_t h, int64_t w, int64_t c, int32_t act) {
    const int64_t h2 = h / 2, w2 = w / 2;
    const float *row0 = x + ((i / h2) * h + 2 * (i % h2)) * w * c;
    const float *row1 = row0 + w * c;
    for (int64_t ow = 0; ow < w2; ow++) {
        const float *top = row0 + 2 * ow * c, *bottom = row1 + 2 * ow * c;
        const int64_t out = (i * w2 + ow) * c;
        for (int64_t ch = 0; ch < c; ch += 8) {
            const vf a0 = load(top + ch), b0 = load(top + c + ch);
            const vf d0 = load(bottom + ch), e0 = load(bottom + c + ch);
            vf a = a0, b = b0, d = d0, e = e0;
            if (alpha) {
                const vf s = load(alpha + ch), t = load(beta + ch);
                a = a * s + t; b = b * s + t; d = d * s + t; e = e * s + t;
            }
            vi k;
            store(y + out + ch, max4(a, b, d, e, &k));
            store_idx(idx + out + ch, k);
            if (xw) store(xw + out + ch, pick(k == 0, a0, pick(k == 1, b0, pick(k == 2, d0, e0))));
        }
    }
    /* the activation apart: independent vectors, its constants at hand (the same numbers) */
    for (int64_t o = i * w2 * c; o < (i + 1) * w2 * c; o += 8)
        store(y + o, activate(load(y + o), act));
}

static inline __attribute__((always_inline)) void pool2_act_rows(
    const float *x, const float *alpha, const float *beta, float *y, uint8_t *idx, float *xw,
    int64_t n, int64_t h, int64_t w, int64_t c, int32_t act, int32_t threads) {
    const int64_t rows = n * (h / 2);
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) if (threads > 1 && rows >= 2 * threads)
#endif
    for (int64_t i = 0; i < rows; i++)
        pool2_act_row(x, alpha, beta, y, idx, xw, i, h, w, c, act);
}

#endif
