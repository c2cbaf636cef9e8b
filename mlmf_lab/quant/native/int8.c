/* int8 linear for a few input rows (batch 1-4, token-by-token decoding): y = x @ W.T + b.
 *
 * Each input row is quantized to uint8 with its own scale and zero point (asymmetric, so 0
 * is exact), dotted with the int8 weight rows (per-output-channel scales) in int32, and
 * scaled back: y[r, j] = s_x[r] * s_w[j] * (sum_i q_x[r, i] * w[j, i] - z_x[r] * sum_i w[j, i]).
 * The weights are read once for all the input rows, row after row; with
 * AVX512-VNNI one instruction multiplies and adds 64 byte pairs into 16 int32 lanes without
 * saturation. Output rows are split across threads with OpenMP: loaded into a process that
 * has imported torch, this library binds to torch's own libgomp (same soname), so it runs on
 * torch's thread team instead of competing with it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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

/* acc[r, j] for every input row r < m and weight rows j in [j0, j1) */
static void dot_rows(const uint8_t *xq, int64_t m, int64_t k, const int8_t *w,
                     int64_t j0, int64_t j1, int32_t *acc, int64_t n) {
    for (int64_t j = j0; j < j1; j++)
        for (int64_t r = 0; r < m; r++) acc[r * n + j] = dot_row(xq + r * k, w + j * k, k);
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

/* x (m, k) float32, w (n, k) int8 with float32 scales and int32 row sums, bias (n,) or NULL,
 * y (m, n) float32. Returns 0; 1 when an input row holds NaN or infinity (the caller takes a
 * float path); -1 when memory runs out. k must be at most 65536 (int32 sums cannot overflow).
 */
int mlmf_int8_linear(const float *x, int64_t m, int64_t k, const int8_t *w, int64_t n,
                     const float *w_scale, const int32_t *w_rowsum, const float *bias,
                     float *y, int threads) {
    enum { GROUP = 64 };  /* weight rows per scheduling unit */
    uint8_t *xq = malloc((size_t)(m * k));
    int32_t *acc = malloc(sizeof(int32_t) * (size_t)(m * n));
    float *sx = malloc(sizeof(float) * (size_t)m);
    int32_t *zx = malloc(sizeof(int32_t) * (size_t)m);
    int status = (xq && acc && sx && zx) ? 0 : -1;
    for (int64_t r = 0; r < m && status == 0; r++)
        status = quantize_row(x + r * k, k, xq + r * k, sx + r, zx + r);
    if (status == 0) {
        const int64_t units = (n + GROUP - 1) / GROUP;
        if (threads < 1 || units < 2) threads = 1;
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t u = 0; u < units; u++) {
            const int64_t j0 = u * GROUP, j1 = j0 + GROUP < n ? j0 + GROUP : n;
            dot_rows(xq, m, k, w, j0, j1, acc, n);
        }
        for (int64_t r = 0; r < m; r++) {
            const int32_t *ar = acc + r * n;
            float *yr = y + r * n;
            for (int64_t j = 0; j < n; j++) {
                const int64_t dot = (int64_t)ar[j] - (int64_t)zx[r] * w_rowsum[j];
                const float v = (float)dot * (sx[r] * w_scale[j]);
                yr[j] = bias ? v + bias[j] : v;
            }
        }
    }
    free(xq);
    free(acc);
    free(sx);
    free(zx);
    return status;
}

/* The two ends of the many-rows path, around an int8 GEMM (torch._int_mm) in between. */

/* x (m, k) float32 -> q (m, k) int8, symmetric with step[r] = max|x[r]| / 127 (1 for a zero
 * row). Returns 0, or 1 if x holds NaN or infinity or a row's step is subnormal. */
int mlmf_int8_quantize_rows(const float *x, int64_t m, int64_t k, int8_t *q, float *step,
                            int threads) {
    int bad = 0;
    #pragma omp parallel for num_threads(threads) schedule(static) reduction(|:bad) if(m * k >= 65536)
    for (int64_t r = 0; r < m; r++) {
        const float *xr = x + r * k;
        float amax = 0.0f;
        int finite = 1;
        for (int64_t i = 0; i < k; i++) {
            const float a = fabsf(xr[i]);
            finite &= isfinite(xr[i]) != 0;
            amax = a > amax ? a : amax;
        }
        if (!finite) { bad |= 1; continue; }
        const float s = amax > 0.0f ? amax / 127.0f : 1.0f, inv = 1.0f / s;
        if (!isfinite(inv)) { bad |= 1; continue; }  /* a subnormal step */
        for (int64_t i = 0; i < k; i++) q[r * k + i] = (int8_t)nearbyintf(xr[i] * inv);
        step[r] = s;
    }
    return bad;
}

/* acc (m, n) int32 -> y (m, n) float32 (may be acc's own memory): acc * step[r] * scale[j]
 * + bias[j]; bias may be NULL. */
void mlmf_int8_rescale(const int32_t *acc, int64_t m, int64_t n, const float *step,
                       const float *w_scale, const float *bias, float *y, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) if(m * n >= 65536)
    for (int64_t r = 0; r < m; r++) {
        for (int64_t j = 0; j < n; j++) {
            const float v = (float)acc[r * n + j] * (step[r] * w_scale[j]);
            y[r * n + j] = bias ? v + bias[j] : v;
        }
    }
}

/* -- q4_0 weights against q8_0 activations, as llama.cpp computes them -----------------------
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
#endif

/* x (m, k) float32; codes (n, k / 2) and scales (n, k / 32) float16 of q4_0 blocks; bias (n,)
 * or NULL; y (m, n) float32. Returns 0; 1 when an input row holds NaN or infinity (the caller
 * takes a float path); -1 when memory runs out; -2 without VNNI. k must be a multiple of 32. */
int mlmf_q4_0_linear(const float *x, int64_t m, int64_t k, const uint8_t *codes,
                     const uint16_t *scales, int64_t n, const float *bias, float *y,
                     int threads) {
#if MLMF_VNNI
    enum { GROUP = 16 };
    const int64_t nb = k / 32, groups = nb / 4 + 1;
    int8_t *xq = malloc((size_t)(m * k));
    float *xd = malloc(sizeof(float) * (size_t)(m * nb + 1));
    __m512i *off = _mm_malloc(sizeof(__m512i) * (size_t)(m * groups), 64);
    int status = (xq && xd && off) ? 0 : -1;
    for (int64_t r = 0; r < m && status == 0; r++)
        status = q8_quantize_row(x + r * k, k, xq + r * k, xd + r * nb, off + r * groups);
    if (status == 0) {
        const int64_t units = (n + GROUP - 1) / GROUP;
        if (threads < 1 || units < 2) threads = 1;
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t u = 0; u < units; u++) {
            const int64_t j1 = (u + 1) * GROUP < n ? (u + 1) * GROUP : n;
            for (int64_t j = u * GROUP; j < j1; j++)
                for (int64_t r = 0; r < m; r++) {
                    const q8_row row = {xq + r * k, xd + r * nb, off + r * groups};
                    const float v = q4_0_dot(codes + j * (k / 2), scales + j * nb, nb, row);
                    y[r * n + j] = bias ? v + bias[j] : v;
                }
        }
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
