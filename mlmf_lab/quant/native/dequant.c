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

/* Q5: bit j of the little-endian qh word is bit 4 of weight j. */
static inline void codes5(const uint8_t *qh, const uint8_t *qs, int *code) {
    const uint32_t h = u32le(qh);
    for (int j = 0; j < 16; j++) {
        code[j] = (int)(qs[j] & 15) | (int)(((h >> j) & 1u) << 4);
        code[j + 16] = (int)(qs[j] >> 4) | (int)(((h >> (j + 16)) & 1u) << 4);
    }
}

void mlmf_deq_q5_0(bytes src, floats dst, int64_t n) {
    int code[32];
    for (int64_t b = 0; b < n; b++, src += 22, dst += 32) {
        const float d = f16(src);
        codes5(src + 2, src + 6, code);
        for (int j = 0; j < 32; j++) dst[j] = d * (float)(code[j] - 16);
    }
}

void mlmf_deq_q5_1(bytes src, floats dst, int64_t n) {
    int code[32];
    for (int64_t b = 0; b < n; b++, src += 24, dst += 32) {
        const float d = f16(src), m = f16(src + 2);
        codes5(src + 4, src + 8, code);
        for (int j = 0; j < 32; j++) dst[j] = d * (float)code[j] + m;
    }
}

/* -- K-quants: super-blocks of 256 weights ------------------------------------------------ */

/* 2-bit fields of 64 bytes: per run of 32 bytes, shifts 0, 2, 4, 6 in turn. */
static inline void crumbs(const uint8_t *q, int *code) {
    for (int run = 0; run < 2; run++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++)
                code[run * 128 + s * 32 + l] = (q[run * 32 + l] >> (2 * s)) & 3;
}

void mlmf_deq_q2_k(bytes src, floats dst, int64_t n) {
    int code[256];
    for (int64_t b = 0; b < n; b++, src += 84, dst += 256) {
        const float d = f16(src + 80), dmin = f16(src + 82);
        crumbs(src + 16, code);
        for (int i = 0; i < 16; i++) {
            const float dl = d * (float)(src[i] & 15), ml = dmin * (float)(src[i] >> 4);
            for (int l = 0; l < 16; l++) dst[i * 16 + l] = (float)code[i * 16 + l] * dl - ml;
        }
    }
}

void mlmf_deq_q3_k(bytes src, floats dst, int64_t n) {
    int code[256];
    for (int64_t b = 0; b < n; b++, src += 110, dst += 256) {
        const float d = f16(src + 108);
        const uint8_t *hmask = src, *sc = src + 96;
        crumbs(src + 32, code);
        for (int i = 0; i < 8; i++)  /* bit 2 of weight i * 32 + l is bit i of hmask[l] */
            for (int l = 0; l < 32; l++)
                code[i * 32 + l] |= ((hmask[l] >> i) & 1) << 2;
        for (int j = 0; j < 16; j++) {
            const int low = j < 8 ? (sc[j] & 15) : (sc[j - 8] >> 4);
            const int high = (sc[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
            const float dl = d * (float)((int)(int8_t)(uint8_t)(low | (high << 4)) - 32);
            for (int l = 0; l < 16; l++) dst[j * 16 + l] = (float)(code[j * 16 + l] - 4) * dl;
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

/* codes (256) of Q4_K/Q5_K -> d * scale * code - dmin * min, per sub-block of 32. */
static inline void q45_k_tail(const uint8_t *src, const int *code, float *restrict dst) {
    const float d = f16(src), dmin = f16(src + 2);
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        scale_min_k4(src + 4, j, &sc, &mn);
        const float dl = d * (float)sc, ml = dmin * (float)mn;
        for (int l = 0; l < 32; l++) dst[j * 32 + l] = (float)code[j * 32 + l] * dl - ml;
    }
}

/* 4-bit fields of 128 bytes: per run of 32 bytes, low nibbles then high nibbles. */
static inline void nibbles_k(const uint8_t *q, int *code) {
    for (int run = 0; run < 4; run++)
        for (int l = 0; l < 32; l++) {
            code[run * 64 + l] = q[run * 32 + l] & 15;
            code[run * 64 + 32 + l] = q[run * 32 + l] >> 4;
        }
}

void mlmf_deq_q4_k(bytes src, floats dst, int64_t n) {
    int code[256];
    for (int64_t b = 0; b < n; b++, src += 144, dst += 256) {
        nibbles_k(src + 16, code);
        q45_k_tail(src, code, dst);
    }
}

void mlmf_deq_q5_k(bytes src, floats dst, int64_t n) {
    int code[256];
    for (int64_t b = 0; b < n; b++, src += 176, dst += 256) {
        const uint8_t *qh = src + 16;
        nibbles_k(src + 48, code);
        for (int i = 0; i < 8; i++)  /* bit 4 of weight i * 32 + l is bit i of qh[l] */
            for (int l = 0; l < 32; l++)
                code[i * 32 + l] |= ((qh[l] >> i) & 1) << 4;
        q45_k_tail(src, code, dst);
    }
}

void mlmf_deq_q6_k(bytes src, floats dst, int64_t n) {
    int code[256], high[256];
    for (int64_t b = 0; b < n; b++, src += 210, dst += 256) {
        const uint8_t *ql = src;
        const int8_t *scales = (const int8_t *)(src + 192);
        const float d = f16(src + 208);
        crumbs(src + 128, high);
        for (int run = 0; run < 2; run++)
            for (int l = 0; l < 64; l++) {
                code[run * 128 + l] = ql[run * 64 + l] & 15;
                code[run * 128 + 64 + l] = ql[run * 64 + l] >> 4;
            }
        for (int i = 0; i < 16; i++) {
            const float dl = d * (float)scales[i];
            for (int l = 0; l < 16; l++) {
                const int k = i * 16 + l;
                dst[k] = (float)((code[k] | (high[k] << 4)) - 32) * dl;
            }
        }
    }
}
