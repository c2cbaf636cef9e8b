/* q4_0 linear, y = x @ W.T + b: GGUF's q4_0 weight blocks against activations quantized to
 * q8_0, as llama.cpp computes them. Output rows are split over helper threads (pool.c).
 *
 * A q4_0 block holds 32 weights: a float16 scale d and 16 bytes of codes (weight i in the low
 * nibble of byte i, weight i + 16 in the high nibble), value d * (code - 8). The kernel takes
 * the blocks split in two arrays, codes (n, k / 2) and scales (n, k / 32) float16, so that
 * one 64-byte load holds the codes of 4 blocks. Each input row is quantized in blocks of 32
 * to int8 with its own scale (q8_0: step = max|x| / 127) and stored in the order the codes
 * unpack to: per group of 4 blocks, the first 16 values of each block (low nibbles), then
 * the last 16 (high nibbles). A block's dot product is d_w * d_x * sum((code - 8) * q_x); the
 * "- 8" is folded into the accumulator's starting value, computed once per input row.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "pool.h"
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define MLMF_VNNI 1
#else
#define MLMF_VNNI 0
#endif

#if MLMF_VNNI
typedef struct {
    const int8_t *xq;    /* (k) in the order above */
    const float *xd;     /* (k / 32) */
    const __m512i *off;  /* (k / 128) -8 * sums of xq, lane by lane */
} q8_row;

static float q4_0_dot(const uint8_t *codes, const uint16_t *d, int64_t nb, q8_row x) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 acc = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)(codes + b * 16 + 1024), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(codes + b * 16);
        const int8_t *xb = x.xq + b * 32;
        __m512i p = _mm512_dpbusd_epi32(x.off[b / 4], _mm512_and_si512(v, m4),
                                        _mm512_loadu_si512(xb));
        p = _mm512_dpbusd_epi32(p, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4),
                                _mm512_loadu_si512(xb + 64));
        const __m128 s4 = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(d + b))),
                                     _mm_loadu_ps(x.xd + b));
        const __m512 s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(s4));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc);
    }
    float total = _mm512_reduce_add_ps(acc);
    for (; b < nb; b++) {  /* the last blocks when k / 32 is not a multiple of 4 */
        const uint8_t *c = codes + b * 16;
        const int8_t *xb = x.xq + b * 32;
        int32_t dot = 0;
        for (int i = 0; i < 16; i++)
            dot += ((c[i] & 15) - 8) * xb[i] + ((c[i] >> 4) - 8) * xb[16 + i];
        total += (float)dot * (_cvtsh_ss(d[b]) * x.xd[b]);
    }
    return total;
}

/* Row x (k floats) into q (k int8, grouped order), scales xd (k / 32), offsets off. */
static int q8_quantize_row(const float *x, int64_t k, int8_t *q, float *xd, __m512i *off) {
    const int64_t nb = k / 32, full = nb / 4 * 4;
    for (int64_t i = 0; i < k; i++)
        if (!isfinite(x[i])) return 1;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fabsf(xb[i]) > amax ? fabsf(xb[i]) : amax;
        const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
        if (!isfinite(inv)) return 1;  /* a subnormal step: the caller takes the float path */
        /* inside a group of 4 blocks, value i of block b goes to the low half (i < 16) or
         * the high half (64 bytes on), at 16 * (b % 4) + i % 16; later blocks stay in order */
        int8_t *dst = q + b * 32;
        if (b < full) dst = q + (b / 4) * 128 + (b % 4) * 16;
        for (int i = 0; i < 32; i++) {
            const int8_t v = (int8_t)nearbyintf(xb[i] * inv);
            if (b < full) dst[(i < 16 ? 0 : 64) + i % 16] = v;
            else dst[i] = v;
        }
        xd[b] = d;
    }
    const __m512i eight = _mm512_set1_epi8(8);
    for (int64_t g = 0; g < full / 4; g++) {
        __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight,
                                        _mm512_loadu_si512(q + g * 128));
        s = _mm512_dpbusd_epi32(s, eight, _mm512_loadu_si512(q + g * 128 + 64));
        off[g] = _mm512_sub_epi32(_mm512_setzero_si512(), s);
    }
    return 0;
}

typedef struct {
    const int8_t *xq;
    const float *xd;
    const __m512i *off;
    int64_t m, k, n;
    const uint8_t *codes;
    const uint16_t *scales;
    const float *bias;
    float *y;
} q4_0_job;

static void q4_0_rows(void *arg, int64_t j0, int64_t j1) {
    const q4_0_job *t = arg;
    const int64_t k = t->k, nb = k / 32, groups = nb / 4 + 1;
    for (int64_t j = j0; j < j1; j++)
        for (int64_t r = 0; r < t->m; r++) {
            const q8_row row = {t->xq + r * k, t->xd + r * nb, t->off + r * groups};
            const float v = q4_0_dot(t->codes + j * (k / 2), t->scales + j * nb, nb, row);
            t->y[r * t->n + j] = t->bias ? v + t->bias[j] : v;
        }
}
#endif

/* x (m, k) float32; codes (n, k / 2) and scales (n, k / 32) float16 of q4_0 blocks; bias (n,)
 * or NULL; y (m, n) float32. Returns 0; 1 when an input row holds NaN or infinity (the caller
 * takes a float path); -1 when memory runs out; -2 without VNNI. k must be a multiple of 32. */
int mlmf_q4_0_linear(const float *x, int64_t m, int64_t k, const uint8_t *codes,
                     const uint16_t *scales, int64_t n, const float *bias, float *y,
                     int threads) {
#if MLMF_VNNI
    const int64_t nb = k / 32, groups = nb / 4 + 1;
    int8_t *xq = malloc((size_t)(m * k));
    float *xd = malloc(sizeof(float) * (size_t)(m * nb + 1));
    __m512i *off = _mm_malloc(sizeof(__m512i) * (size_t)(m * groups), 64);
    int status = (xq && xd && off) ? 0 : -1;
    for (int64_t r = 0; r < m && status == 0; r++)
        status = q8_quantize_row(x + r * k, k, xq + r * k, xd + r * nb, off + r * groups);
    if (status == 0) {
        q4_0_job job = {xq, xd, off, m, k, n, codes, scales, bias, y};
        mlmf_parallel(q4_0_rows, &job, n, mlmf_chunk_rows(m * k), threads);
    }
    free(xq);
    free(xd);
    _mm_free(off);
    return status;
#else
    (void)x; (void)m; (void)k; (void)codes; (void)scales; (void)n; (void)bias; (void)y;
    (void)threads;
    return -2;
#endif
}
