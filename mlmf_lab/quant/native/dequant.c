/* GGUF block dequantization, one fused pass per block: bytes in, float32 out.
 *
 * The same maths as mlmf_lab/quant/blocks_legacy.py and blocks_k.py (the torch reference,
 * itself checked bitwise against gguf.quants), in the same operation order; compiled with
 * -ffp-contract=off so that no multiply-add is fused and results stay bit-identical.
 * Every function: mlmf_deq_<type>(src: n * type_size bytes, dst: n * block_size floats, n).
 */
#include <stdint.h>
#include <string.h>

typedef const uint8_t *restrict bytes;
typedef float *restrict floats;

static inline float f32_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* IEEE half -> float, exact for every input (subnormals, infinities, NaN payloads). */
static inline float f16(const uint8_t *p) {
    uint32_t h = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {  /* zero or subnormal: man * 2^-24, exact in float */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    if (exp == 31) return f32_bits(sign | 0x7f800000u | (man << 13));
    return f32_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

void mlmf_deq_q8_0(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 34, dst += 32) {
        const float d = f16(src);
        const int8_t *q = (const int8_t *)(src + 2);
        for (int j = 0; j < 32; j++) dst[j] = d * (float)q[j];
    }
}

void mlmf_deq_q4_0(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 18, dst += 32) {
        const float d = f16(src);
        const uint8_t *qs = src + 2;
        for (int j = 0; j < 16; j++) dst[j] = d * (float)((int)(qs[j] & 15) - 8);
        for (int j = 0; j < 16; j++) dst[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
    }
}

void mlmf_deq_q4_1(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 20, dst += 32) {
        const float d = f16(src), m = f16(src + 2);
        const uint8_t *qs = src + 4;
        for (int j = 0; j < 16; j++) dst[j] = d * (float)(qs[j] & 15) + m;
        for (int j = 0; j < 16; j++) dst[j + 16] = d * (float)(qs[j] >> 4) + m;
    }
}

static inline uint32_t u32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Q5: bit j of the little-endian qh word is bit 4 of weight j; min == NULL for Q5_0 (offset 16). */
static inline void q5(const uint8_t *qh, const uint8_t *qs, float d, const float *min,
                      float *restrict dst) {
    const uint32_t h = u32le(qh);
    for (int half = 0; half < 2; half++) {
        const int shift = 4 * half;
        const uint32_t hh = h >> (16 * half);
        float *o = dst + 16 * half;
        if (min == NULL) {
            for (int j = 0; j < 16; j++)
                o[j] = d * (float)((int)(((qs[j] >> shift) & 15) | (((hh >> j) & 1u) << 4)) - 16);
        } else {
            const float m = *min;
            for (int j = 0; j < 16; j++)
                o[j] = d * (float)(((qs[j] >> shift) & 15) | (((hh >> j) & 1u) << 4)) + m;
        }
    }
}

void mlmf_deq_q5_0(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 22, dst += 32) q5(src + 2, src + 6, f16(src), NULL, dst);
}

void mlmf_deq_q5_1(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 24, dst += 32) {
        const float m = f16(src + 2);
        q5(src + 4, src + 8, f16(src), &m, dst);
    }
}

/* -- K-quants: super-blocks of 256 weights ------------------------------------------------
 * Written as runs of 16 or 32 weights that share one scale, straight from the packed bytes,
 * so the compiler turns each run into a few vector instructions. */

void mlmf_deq_q2_k(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 84, dst += 256) {
        const float d = f16(src + 80), dmin = f16(src + 82);
        for (int run = 0; run < 2; run++)  /* weight run*128 + s*32 + l: bits 2s of qs[run*32 + l] */
            for (int s = 0; s < 4; s++)
                for (int half = 0; half < 2; half++) {
                    const int i = run * 8 + s * 2 + half;  /* sub-block of 16 */
                    const float dl = d * (float)(src[i] & 15), ml = dmin * (float)(src[i] >> 4);
                    const uint8_t *q = src + 16 + run * 32 + half * 16;
                    float *o = dst + i * 16;
                    for (int l = 0; l < 16; l++) o[l] = (float)((q[l] >> (2 * s)) & 3) * dl - ml;
                }
    }
}

void mlmf_deq_q3_k(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 110, dst += 256) {
        const float d = f16(src + 108);
        const uint8_t *hmask = src, *sc = src + 96;
        for (int j = 0; j < 16; j++) {  /* sub-block j: weights 16j .. 16j + 15 */
            const int low = j < 8 ? (sc[j] & 15) : (sc[j - 8] >> 4);
            const int high = (sc[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
            const float dl = d * (float)((low | (high << 4)) - 32);
            const int run = j / 8, s = (j / 2) & 3, hbit = j / 2;  /* weight 16j = run*128 + s*32 + .. */
            const uint8_t *q = src + 32 + run * 32 + (j & 1) * 16, *h = hmask + (j & 1) * 16;
            float *o = dst + j * 16;
            for (int l = 0; l < 16; l++) {
                const int code = ((q[l] >> (2 * s)) & 3) | (((h[l] >> hbit) & 1) << 2);
                o[l] = (float)(code - 4) * dl;
            }
        }
    }
}

/* Q4_K / Q5_K: eight 6-bit scales and mins packed in 12 bytes. */
static inline void scale_min_k4(const uint8_t *q, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Q4_K and Q5_K (qh != NULL): sub-block j of 32 weights holds the low (even j) or high (odd
 * j) nibbles of qs[(j / 2) * 32 ..], plus bit j of qh[l] as bit 4; d * scale * code - dmin * min. */
static inline void q45_k(const uint8_t *src, const uint8_t *qh, const uint8_t *qs,
                         float *restrict dst) {
    const float d = f16(src), dmin = f16(src + 2);
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        scale_min_k4(src + 4, j, &sc, &mn);
        const float dl = d * (float)sc, ml = dmin * (float)mn;
        const uint8_t *q = qs + (j / 2) * 32;
        const int shift = 4 * (j & 1);
        float *o = dst + j * 32;
        if (qh == NULL) {
            for (int l = 0; l < 32; l++) o[l] = (float)((q[l] >> shift) & 15) * dl - ml;
        } else {
            for (int l = 0; l < 32; l++) {
                const int code = ((q[l] >> shift) & 15) | (((qh[l] >> j) & 1) << 4);
                o[l] = (float)code * dl - ml;
            }
        }
    }
}

void mlmf_deq_q4_k(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 144, dst += 256) q45_k(src, NULL, src + 16, dst);
}

void mlmf_deq_q5_k(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 176, dst += 256) q45_k(src, src + 16, src + 48, dst);
}

void mlmf_deq_q6_k(bytes src, floats dst, int64_t n) {
    for (int64_t b = 0; b < n; b++, src += 210, dst += 256) {
        const int8_t *scales = (const int8_t *)(src + 192);
        const float d = f16(src + 208);
        for (int i = 0; i < 16; i++) {  /* sub-block i: weights 16i .. 16i + 15 */
            const int run = i / 8, s = (i / 2) & 3;  /* weight 16i = run*128 + s*32 + .. */
            const int off = (i & 1) * 16;
            const uint8_t *ql = src + run * 64 + (s & 1) * 32 + off;  /* low 4 bits */
            const uint8_t *qh = src + 128 + run * 32 + off;           /* bits 4-5 */
            const int lshift = 4 * (s >> 1), hshift = 2 * s;
            const float dl = d * (float)scales[i];
            float *o = dst + i * 16;
            for (int l = 0; l < 16; l++) {
                const int code = ((ql[l] >> lshift) & 15) | (((qh[l] >> hshift) & 3) << 4);
                o[l] = (float)(code - 32) * dl;
            }
        }
    }
}

/* The int4 scheme (mlmf_lab/quant/intx.py), not a GGUF type: n groups of g weights (g even),
 * g / 2 bytes each (weight 2j in the low nibble of byte j, 2j + 1 in the high one) and one
 * bfloat16 scale and zero per group; w = (code - 8) * scale + zero, rounded as torch does. */
static inline float bf16(uint16_t u) { return f32_bits((uint32_t)u << 16); }

void mlmf_int4_groups(bytes src, const uint16_t *restrict scale, const uint16_t *restrict zero,
                   floats dst, int64_t n, int64_t g) {
    for (int64_t b = 0; b < n; b++, src += g / 2, dst += g) {
        const float s = bf16(scale[b]), z = bf16(zero[b]);
        for (int64_t j = 0; j < g / 2; j++) {
            dst[2 * j] = (float)((int)(src[j] & 15) - 8) * s + z;
            dst[2 * j + 1] = (float)((int)(src[j] >> 4) - 8) * s + z;
        }
    }
}
