/* int8 linear, y = x @ W.T + b, for a few input rows (batch 1-4, token-by-token decoding) and
 * for many (further down).
 *
 * Few rows: each input row is quantized to uint8 with its own scale and zero point (asymmetric, so 0
 * is exact), dotted with the int8 weight rows (per-output-channel scales) in int32, and
 * scaled back: y[r, j] = s_x[r] * s_w[j] * (sum_i q_x[r, i] * w[j, i] - z_x[r] * sum_i w[j, i]).
 * The weights are read once for all the input rows, row after row; with
 * AVX512-VNNI one instruction multiplies and adds 64 byte pairs into 16 int32 lanes without
 * saturation. Output rows are split across threads in small chunks (pool.c), which keeps a
 * busy neighbour on another core from stalling the call.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "amx.h"
#include "pool.h"
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#include <immintrin.h>
#define MLMF_VNNI 1
#else
#define MLMF_VNNI 0
#endif

int mlmf_int8_vnni(void) { return MLMF_VNNI; }

static int32_t dot_tail(const uint8_t *x, const int8_t *w, int64_t from, int64_t k) {
    int32_t s = 0;
    for (int64_t i = from; i < k; i++) s += (int32_t)x[i] * (int32_t)w[i];
    return s;
}

/* One weight row against one input row. Rows are walked one after another, so the weights
 * are a single sequential stream; asking for them 2 KiB ahead (a prefetch past the end never
 * faults) measured about 15% faster than 8 rows side by side, 8 streams. */
static int32_t dot_row(const uint8_t *x, const int8_t *w, int64_t k) {
    int64_t i = 0;
#if MLMF_VNNI
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 256 <= k; i += 256) {
        for (int line = 0; line < 256; line += 64)
            _mm_prefetch((const char *)(w + i + 2048 + line), _MM_HINT_T0);
        a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(x + i), _mm512_loadu_si512(w + i));
        a1 = _mm512_dpbusd_epi32(a1, _mm512_loadu_si512(x + i + 64),
                                 _mm512_loadu_si512(w + i + 64));
        a2 = _mm512_dpbusd_epi32(a2, _mm512_loadu_si512(x + i + 128),
                                 _mm512_loadu_si512(w + i + 128));
        a3 = _mm512_dpbusd_epi32(a3, _mm512_loadu_si512(x + i + 192),
                                 _mm512_loadu_si512(w + i + 192));
    }
    for (; i + 64 <= k; i += 64)
        a0 = _mm512_dpbusd_epi32(a0, _mm512_loadu_si512(x + i), _mm512_loadu_si512(w + i));
    const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    return _mm512_reduce_add_epi32(sum) + dot_tail(x, w, i, k);
#else
    return dot_tail(x, w, i, k);
#endif
}

/* Quantizes row x (k floats) into q; returns 0, or 1 if it holds NaN or infinity or its
 * range is too small for a finite inverse step (the caller takes the float path). */
static int quantize_row(const float *x, int64_t k, uint8_t *q, float *scale, int32_t *zero) {
    float lo = 0.0f, hi = 0.0f;
    int finite = 1;
    for (int64_t i = 0; i < k; i++) {
        finite &= isfinite(x[i]) != 0;
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    /* hi / 255 - lo / 255: hi - lo can overflow for finite inputs near FLT_MAX */
    const float s = hi > lo ? hi / 255.0f - lo / 255.0f : 1.0f, inv = 1.0f / s;
    if (!finite || !isfinite(inv)) return 1;  /* NaN/inf, or a subnormal step */
    int zp = (int)nearbyintf(-lo * inv);
    zp = zp < 0 ? 0 : zp > 255 ? 255 : zp;
    for (int64_t i = 0; i < k; i++) {
        const int v = (int)nearbyintf(x[i] * inv) + zp;
        q[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    *scale = s;
    *zero = zp;
    return 0;
}

typedef struct {
    const uint8_t *xq;  /* (m, k) */
    const float *sx;    /* (m) */
    const int32_t *zx;  /* (m) */
    int64_t m, k, n;
    const int8_t *w;
    const float *w_scale, *bias;
    const int32_t *w_rowsum;
    float *y;
} gemv_job;

/* y[r, j] for every input row r and weight rows j in [j0, j1) */
static void gemv_rows(void *arg, int64_t j0, int64_t j1) {
    const gemv_job *t = arg;
    for (int64_t j = j0; j < j1; j++)
        for (int64_t r = 0; r < t->m; r++) {
            const int32_t acc = dot_row(t->xq + r * t->k, t->w + j * t->k, t->k);
            const int64_t dot = (int64_t)acc - (int64_t)t->zx[r] * t->w_rowsum[j];
            const float v = (float)dot * (t->sx[r] * t->w_scale[j]);
            t->y[r * t->n + j] = t->bias ? v + t->bias[j] : v;
        }
}

/* x (m, k) float32, w (n, k) int8 with float32 scales and int32 row sums, bias (n,) or NULL,
 * y (m, n) float32. Returns 0; 1 when an input row holds NaN or infinity (the caller takes a
 * float path); -1 when memory runs out. k must be at most 65536 (int32 sums cannot overflow).
 */
int mlmf_int8_linear(const float *x, int64_t m, int64_t k, const int8_t *w, int64_t n,
                     const float *w_scale, const int32_t *w_rowsum, const float *bias,
                     float *y, int threads) {
    uint8_t *xq = malloc((size_t)(m * k));
    float *sx = malloc(sizeof(float) * (size_t)m);
    int32_t *zx = malloc(sizeof(int32_t) * (size_t)m);
    int status = (xq && sx && zx) ? 0 : -1;
    for (int64_t r = 0; r < m && status == 0; r++)
        status = quantize_row(x + r * k, k, xq + r * k, sx + r, zx + r);
    if (status == 0) {
        gemv_job job = {xq, sx, zx, m, k, n, w, w_scale, bias, w_rowsum, y};
        mlmf_parallel(gemv_rows, &job, n, mlmf_chunk_rows(m * k), threads);
    }
    free(xq);
    free(sx);
    free(zx);
    return status;
}

/* -- many input rows ------------------------------------------------------------------------
 *
 * Each row is quantized to int8, symmetric, with step = max|x| / 127, and dotted with the
 * weights on AMX tiles where there are some (amx.c), else in blocks of 4 input rows by 4
 * weight rows: 16 accumulators, so each 64-byte load serves 4 products. VNNI multiplies unsigned by signed bytes, so the activations are stored
 * as q + 128 and 128 * rowsum[j] comes off after; the int32 sums are the exact ones, as in
 * any int8 GEMM: y[r, j] = sum * (step[r] * scale[j]) + bias[j].
 */
typedef struct {
    const float *x;
    int64_t m, k, n;
    uint8_t *xq;  /* q + 128 */
    float *step;
    const int8_t *w;
    const float *w_scale, *bias;
    const int32_t *w_rowsum;
    float *y;
    uint8_t *packed;  /* xq in AMX's layout (amx.c), or NULL */
    int64_t first;    /* gemm_rows' ranges count from this weight row */
    atomic_int bad;
} gemm_job;

/* max |x[i]| over k values; 0 in *finite if one is NaN or infinite */
static float absmax(const float *x, int64_t k, int *finite) {
    float amax = 0.0f;
    int64_t i = 0;
    *finite = 1;
#if MLMF_VNNI && defined(__AVX512DQ__)
    __m512 m = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (; i + 16 <= k; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        bad |= _mm512_fpclass_ps_mask(v, 0x99);  /* QNaN, SNaN, +inf, -inf */
        m = _mm512_max_ps(m, _mm512_abs_ps(v));
    }
    amax = _mm512_reduce_max_ps(m);
    *finite = bad == 0;
#endif
    for (; i < k; i++) {
        const float a = fabsf(x[i]);
        *finite &= isfinite(x[i]) != 0;
        amax = a > amax ? a : amax;
    }
    return amax;
}

/* q[i] = round(x[i] * inv) + 128, rounding half to even, for |x[i] * inv| <= 127.5 */
static void shift_round(const float *x, int64_t k, float inv, uint8_t *q) {
    int64_t i = 0;
#if MLMF_VNNI
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i shift = _mm512_set1_epi32(128);
    for (; i + 16 <= k; i += 16) {  /* cvtps rounds as nearbyintf: to nearest, ties to even */
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vinv));
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(_mm512_add_epi32(v, shift)));
    }
#endif
    for (; i < k; i++) q[i] = (uint8_t)((int)nearbyintf(x[i] * inv) + 128);
}

static void quantize_rows(void *arg, int64_t r0, int64_t r1) {
    gemm_job *t = arg;
    const int64_t k = t->k;
    for (int64_t r = r0; r < r1; r++) {
        int finite;
        const float amax = absmax(t->x + r * k, k, &finite);
        const float s = amax > 0.0f ? amax / 127.0f : 1.0f, inv = 1.0f / s;
        if (!finite || !isfinite(inv)) {  /* NaN/inf, or a subnormal step */
            atomic_store_explicit(&t->bad, 1, memory_order_relaxed);
            continue;
        }
        shift_round(t->x + r * k, k, inv, t->xq + r * k);
        t->step[r] = s;
    }
}

static void store_sum(const gemm_job *t, int64_t r, int64_t j, int32_t shifted_sum) {
    const int64_t sum = (int64_t)shifted_sum - 128 * (int64_t)t->w_rowsum[j];
    const float v = (float)sum * (t->step[r] * t->w_scale[j]);
    t->y[r * t->n + j] = t->bias ? v + t->bias[j] : v;
}

#if MLMF_VNNI
/* Input rows r0.. and weight rows j0.., 4 of each; rows past the end repeat the last one and
 * their sums are dropped. */
static void gemm_tile(const gemm_job *t, int64_t r0, int64_t j0) {
    const int64_t k = t->k;
    const uint8_t *x[4];
    const int8_t *w[4];
    for (int i = 0; i < 4; i++) {
        x[i] = t->xq + (r0 + i < t->m ? r0 + i : t->m - 1) * k;
        w[i] = t->w + (j0 + i < t->n ? j0 + i : t->n - 1) * k;
    }
    /* 16 named accumulators: as an array, gcc 12 writes them back to the stack each step */
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00,
            c11 = c00, c12 = c00, c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00,
            c30 = c00, c31 = c00, c32 = c00, c33 = c00;
#define MLMF_ROW(a)                                                                   \
    do {                                                                              \
        const __m512i xv = _mm512_maskz_loadu_epi8(keep, x[a] + i);                   \
        c##a##0 = _mm512_dpbusd_epi32(c##a##0, xv, w0);                               \
        c##a##1 = _mm512_dpbusd_epi32(c##a##1, xv, w1);                               \
        c##a##2 = _mm512_dpbusd_epi32(c##a##2, xv, w2);                               \
        c##a##3 = _mm512_dpbusd_epi32(c##a##3, xv, w3);                               \
    } while (0)
    for (int64_t i = 0; i < k; i += 64) {
        /* the last step loads only the bytes left (the others are 0: they add nothing) */
        const __mmask64 keep = k - i >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (k - i)) - 1;
        const __m512i w0 = _mm512_maskz_loadu_epi8(keep, w[0] + i),
                      w1 = _mm512_maskz_loadu_epi8(keep, w[1] + i),
                      w2 = _mm512_maskz_loadu_epi8(keep, w[2] + i),
                      w3 = _mm512_maskz_loadu_epi8(keep, w[3] + i);
        MLMF_ROW(0);
        MLMF_ROW(1);
        MLMF_ROW(2);
        MLMF_ROW(3);
    }
#undef MLMF_ROW
    const __m512i acc[4][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13},
                               {c20, c21, c22, c23}, {c30, c31, c32, c33}};
    int32_t sums[4][4];
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) sums[a][b] = _mm512_reduce_add_epi32(acc[a][b]);
    for (int a = 0; a < 4 && r0 + a < t->m; a++)
        for (int b = 0; b < 4 && j0 + b < t->n; b++) store_sum(t, r0 + a, j0 + b, sums[a][b]);
}
#endif

/* y[r, j] for every input row r and weight rows j in first + [j0, j1) */
static void gemm_rows(void *arg, int64_t j0, int64_t j1) {
    const gemm_job *t = arg;
    j0 += t->first;
    j1 += t->first;
#if MLMF_VNNI
    for (int64_t j = j0; j < j1; j += 4)
        for (int64_t r = 0; r < t->m; r += 4) gemm_tile(t, r, j);
#else
    for (int64_t j = j0; j < j1; j++)
        for (int64_t r = 0; r < t->m; r++) {
            int32_t s = 0;
            for (int64_t i = 0; i < t->k; i++)
                s += (int32_t)t->xq[r * t->k + i] * t->w[j * t->k + i];
            store_sum(t, r, j, s);
        }
#endif
}

/* y[r, j] for weight rows j in [j0, j1), whole blocks of 32, on AMX tiles */
static void gemm_rows_amx(void *arg, int64_t j0, int64_t j1) {
    const gemm_job *t = arg;
    int32_t c[32][32];
    for (int64_t j = j0; j < j1; j += 32)
        for (int64_t r0 = 0; r0 < t->m; r0 += 32) {
            mlmf_amx_block(t->w + j * t->k, t->k, t->packed, r0, c);
            for (int a = 0; a < 32; a++)
                for (int b = 0; b < 32 && r0 + b < t->m; b++) store_sum(t, r0 + b, j + a, c[a][b]);
        }
}

/* As mlmf_int8_linear (same arguments and returns), for many input rows: int8 activations,
 * symmetric, a step per row (see above); on AMX tiles where the CPU and Linux offer them
 * and k is a multiple of 64 (whole blocks of 32 weight rows; the rest as above). */
int mlmf_int8_matmul(const float *x, int64_t m, int64_t k, const int8_t *w, int64_t n,
                     const float *w_scale, const int32_t *w_rowsum, const float *bias,
                     float *y, int threads) {
    gemm_job job = {.x = x, .m = m, .k = k, .n = n, .w = w, .w_scale = w_scale,
                    .bias = bias, .w_rowsum = w_rowsum, .y = y};
    job.xq = malloc((size_t)(m * k));
    job.step = malloc(sizeof(float) * (size_t)m);
    atomic_init(&job.bad, 0);
    int status = job.xq && job.step ? 0 : -1;
    if (status == 0) {
        mlmf_parallel(quantize_rows, &job, m, mlmf_chunk_rows(4 * k), threads);
        status = atomic_load(&job.bad);
    }
    const int64_t blocks = k % 64 == 0 && mlmf_amx_ready() ? n / 32 * 32 : 0;
    if (status == 0 && blocks) {
        job.packed = malloc((size_t)mlmf_amx_packed_size(m, k));
        status = job.packed ? 0 : -1;
    }
    if (status == 0 && blocks) {
        mlmf_amx_pack(job.xq, m, k, job.packed);
        mlmf_parallel(gemm_rows_amx, &job, blocks, 32, threads);
    }
    job.first = blocks;
    if (status == 0 && blocks < n)  /* chunks of whole tiles: 4 weight rows */
        mlmf_parallel(gemm_rows, &job, n - blocks, (mlmf_chunk_rows(m * k) + 3) / 4 * 4, threads);
    free(job.xq);
    free(job.step);
    free(job.packed);
    return status;
}
