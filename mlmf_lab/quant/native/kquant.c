/* K-quant quantization (Q4_K, Q6_K) in C, bit for bit the bytes of blocks_k_quant.py.
 *
 * The torch functions are the reference (their docstrings give the algorithm); this file
 * repeats every operation in the same order and precision, so that the bytes are the same:
 * - float sums over a sub-block are torch's: 8-lane partial sums, then the lanes in order
 *   from 0 (32 values: ((x[i] + x[8+i]) + x[16+i]) + x[24+i]; 16 values: x[i] + x[8+i]);
 * - `c / t` on a tensor is torch's reciprocal(t) * c (Tensor.__rtruediv__);
 * - min and max over 32 values pair vectors whose ties keep the second operand, then take the
 *   lanes in order keeping the first, as torch's reduction does (it decides the sign of a
 *   zero, which reaches the fp16 scales); over 8 values, in order, keeping the first;
 * - argmax is the first largest; round is to nearest, ties to even (rintf);
 * - the one transcendental step, Q4_K's root mean square per sub-block, comes from torch (its
 *   vectorized sqrt is not always correctly rounded).
 * Compiled with -ffp-contract=off and without -ffast-math, so nothing is fused or reordered.
 * The quantizer checks itself against the torch functions on a probe before it is used
 * (quant/native/__init__.py), and the tests compare both on many tensors.
 *
 * Sub-blocks are processed 16 at a time, one per lane of arrays [value][lane], so that every
 * operation of the search is one vector instruction over 16 sub-blocks, and a candidate's
 * products are summed as they are made (in torch's order), never stored.
 */
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")  /* 16 lanes: one register per operation */
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { L = 16 };  /* sub-blocks per group, one per lane */

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* float -> IEEE half, rounding to nearest even (as torch's .to(torch.float16)) */
static uint16_t half_of(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = bits_of(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = float_of((bias >> 1) + 0x07800000u) + base;
    const uint32_t b = bits_of(base);
    const uint32_t nonsign = ((b >> 13) & 0x00007C00u) + (b & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/* IEEE half -> float, exact */
static float float_of_half(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {
        const float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    if (exp == 31) return float_of(sign | 0x7f800000u | (man << 13));
    return float_of(sign | ((exp + 112u) << 23) | (man << 13));
}

static void put_half(uint8_t *p, float f) {
    const uint16_t h = half_of(f);
    p[0] = (uint8_t)(h & 0xFF);
    p[1] = (uint8_t)(h >> 8);
}

static int all_finite(const float *x, int64_t count) {
    int ok = 1;
    for (int64_t i = 0; i < count; i++) ok &= isfinite(x[i]) != 0;
    return ok;
}

/* s[l] = sum of a[0..32)[l] in torch's order */
static void sum32(const float a[32][L], float s[L]) {
    for (int l = 0; l < L; l++) s[l] = 0.0f;
    for (int i = 0; i < 8; i++)
        for (int l = 0; l < L; l++) s[l] += ((a[i][l] + a[8 + i][l]) + a[16 + i][l]) + a[24 + i][l];
}

/* min (or max) of a[0..32)[l] with torch's ties */
static void extreme32(const float a[32][L], int want_max, float out[L]) {
    for (int l = 0; l < L; l++) {
        float v[8];
        for (int i = 0; i < 8; i++) {
            float p = a[i][l], q = a[8 + i][l], r = a[16 + i][l], t = a[24 + i][l];
            if (want_max) {
                p = p > q ? p : q;
                r = r > t ? r : t;
                v[i] = p > r ? p : r;
            } else {
                p = p < q ? p : q;
                r = r < t ? r : t;
                v[i] = p < r ? p : r;
            }
        }
        float s = v[0];
        for (int i = 1; i < 8; i++) s = want_max ? (v[i] > s ? v[i] : s) : (v[i] < s ? v[i] : s);
        out[l] = s;
    }
}

/* -- Q4_K ---------------------------------------------------------------------------------- */
typedef struct {
    float x[32][L], w[32][L], shifted[32][L];
    double sum_w[L], sum_x[L], sum_xx[L];
} asym_fit;

static double asym_error(const asym_fit *f, int l, double s, double m, double sl, double sl2,
                         double sxl) {
    return s * s * sl2 + 2 * s * m * sl + m * m * f->sum_w[l] - 2 * s * sxl
           - 2 * m * f->sum_x[l] + f->sum_xx[l];
}

/* torch's three sums of a candidate (sum32's order), fused: no array of products is stored */
static void asym_sums(const asym_fit *f, const float iscale[L], int nmax, double sl[L],
                      double sl2[L], double sxl[L]) {
    float s1[L], s2[L], s3[L];
    for (int l = 0; l < L; l++) s1[l] = s2[l] = s3[l] = 0.0f;
    for (int i = 0; i < 8; i++)
        for (int l = 0; l < L; l++) {
            float p1[4], p2[4], p3[4];
            for (int j = 0; j < 4; j++) {  /* values i, 8 + i, 16 + i, 24 + i */
                float q = rintf(iscale[l] * f->shifted[8 * j + i][l]);
                q = q < 0.0f ? 0.0f : q;
                q = q > (float)nmax ? (float)nmax : q;
                const float wl = f->w[8 * j + i][l] * q;
                p1[j] = wl;
                p2[j] = wl * q;
                p3[j] = wl * f->x[8 * j + i][l];
            }
            s1[l] += ((p1[0] + p1[1]) + p1[2]) + p1[3];
            s2[l] += ((p2[0] + p2[1]) + p2[2]) + p2[3];
            s3[l] += ((p3[0] + p3[1]) + p3[2]) + p3[3];
        }
    for (int l = 0; l < L; l++) {
        sl[l] = s1[l];
        sl2[l] = s2[l];
        sxl[l] = s3[l];
    }
}

/* blocks_k_quant.fit_asymmetric on 16 sub-blocks of 32 (rmin -1, rdelta 0.1, 20 steps) */
static void fit_asymmetric(asym_fit *f, int nmax, float scale_out[L], float min_out[L],
                           uint8_t codes[32][L]) {
    float lo[L], hi[L], span[L], best_iscale[L], iscale[L], tmp[32][L];
    int flat[L];
    double scale[L], best_min[L], best_err[L], sl[L], sl2[L], sxl[L];
    extreme32(f->x, 0, lo);
    extreme32(f->x, 1, hi);
    for (int l = 0; l < L; l++) {
        lo[l] = lo[l] > 0.0f ? 0.0f : lo[l];
        flat[l] = hi[l] == lo[l];
        span[l] = flat[l] ? 1.0f : hi[l] - lo[l];
    }
    for (int i = 0; i < 32; i++)
        for (int l = 0; l < L; l++) {
            f->shifted[i][l] = f->x[i][l] - lo[l];
            tmp[i][l] = f->w[i][l] * f->x[i][l];
        }
    float s[L];
    sum32(f->w, s);
    for (int l = 0; l < L; l++) f->sum_w[l] = s[l];
    sum32(tmp, s);
    for (int l = 0; l < L; l++) f->sum_x[l] = s[l];
    for (int i = 0; i < 32; i++)
        for (int l = 0; l < L; l++) tmp[i][l] = tmp[i][l] * f->x[i][l];
    sum32(tmp, s);
    for (int l = 0; l < L; l++) f->sum_xx[l] = s[l];

    for (int l = 0; l < L; l++) {
        best_iscale[l] = (1.0f / span[l]) * (float)nmax;
        scale[l] = (double)(1.0f / best_iscale[l]);
        best_min[l] = (double)lo[l];
    }
    asym_sums(f, best_iscale, nmax, sl, sl2, sxl);
    for (int l = 0; l < L; l++)
        best_err[l] = asym_error(f, l, scale[l], best_min[l], sl[l], sl2[l], sxl[l]);
    for (int k = 0; k <= 20; k++) {
        const float c = (float)((-1.0 + 0.1 * k) + nmax);
        for (int l = 0; l < L; l++) iscale[l] = (1.0f / span[l]) * c;
        asym_sums(f, iscale, nmax, sl, sl2, sxl);
        for (int l = 0; l < L; l++) {  /* selects, no branches: one vector per step */
            const double sw = f->sum_w[l], sx = f->sum_x[l];
            const double det = sw * sl2[l] - sl[l] * sl[l];
            const double free_scale = (sw * sxl[l] - sx * sl[l]) / det;
            const double free_min = (sl2[l] * sx - sl[l] * sxl[l]) / det;
            const double clipped_scale = sxl[l] / sl2[l];  /* min clipped to 0 */
            const int clip = free_min > 0;
            const double this_scale = clip ? clipped_scale : free_scale;
            const double this_min = clip ? 0.0 : free_min;
            const double err = asym_error(f, l, this_scale, this_min, sl[l], sl2[l], sxl[l]);
            const int better = det > 0 && err < best_err[l];
            best_iscale[l] = better ? iscale[l] : best_iscale[l];
            best_err[l] = better ? err : best_err[l];
            scale[l] = better ? this_scale : scale[l];
            best_min[l] = better ? this_min : best_min[l];
        }
    }
    for (int i = 0; i < 32; i++)
        for (int l = 0; l < L; l++) {
            float q = rintf(best_iscale[l] * f->shifted[i][l]);
            q = q < 0.0f ? 0.0f : q;
            q = q > (float)nmax ? (float)nmax : q;
            codes[i][l] = flat[l] ? 0 : (uint8_t)q;
        }
    for (int l = 0; l < L; l++) {
        scale_out[l] = (float)(flat[l] ? 0.0 : scale[l]);
        min_out[l] = -(float)best_min[l];
    }
}

/* 8 scales (or mins) of one super-block -> 6-bit codes q, and the fp16 step written at out */
static float six_bits(const float v[8], uint8_t q[8]) {
    float top = -INFINITY;
    for (int j = 0; j < 8; j++) top = v[j] > top ? v[j] : top;
    top = top < 0.0f ? 0.0f : top;
    const float inv = top > 0.0f ? (1.0f / top) * 63.0f : 0.0f;
    for (int j = 0; j < 8; j++) {
        float r = rintf(inv * v[j]);
        r = r < 0.0f ? 0.0f : r;
        q[j] = (uint8_t)(r > 63.0f ? 63.0f : r);
    }
    return top / 63.0f;
}

static void q4_k_group(const float *src, const float *rms, int supers, uint8_t *out) {
    static const int per = 8;  /* sub-blocks per super-block */
    asym_fit f;
    float scales[L], mins[L];
    uint8_t codes[32][L];
    for (int l = 0; l < L; l++) {
        const int live = l < supers * per;
        for (int i = 0; i < 32; i++) {
            f.x[i][l] = live ? src[l * 32 + i] : 0.0f;
            f.w[i][l] = live ? rms[l] + fabsf(src[l * 32 + i]) : 0.0f;
        }
    }
    fit_asymmetric(&f, 15, scales, mins, codes);

    for (int sb = 0; sb < supers; sb++, out += 144) {
        const int l0 = sb * per;
        uint8_t ls[8], lm[8];
        const float d = six_bits(scales + l0, ls), dmin = six_bits(mins + l0, lm);
        put_half(out, d);
        put_half(out + 2, dmin);
        const float d_f = float_of_half(half_of(d)), dmin_f = float_of_half(half_of(dmin));
        for (int j = 0; j < 4; j++) {
            out[4 + j] = (uint8_t)(ls[j] | ((ls[4 + j] >> 4) << 6));
            out[8 + j] = (uint8_t)(lm[j] | ((lm[4 + j] >> 4) << 6));
            out[12 + j] = (uint8_t)((ls[4 + j] & 0x0F) | ((lm[4 + j] & 0x0F) << 4));
        }
        uint8_t q[8][32];
        for (int j = 0; j < per; j++) {
            const int l = l0 + j;
            const float dj = d_f * (float)ls[j], dm = dmin_f * (float)lm[j];
            const float safe = dj == 0.0f ? 1.0f : dj;
            for (int i = 0; i < 32; i++) {
                float r = rintf((f.x[i][l] + dm) / safe);
                r = r < 0.0f ? 0.0f : r;
                r = r > 15.0f ? 15.0f : r;
                q[j][i] = dj == 0.0f ? codes[i][l] : (uint8_t)r;
            }
        }
        for (int g = 0; g < 4; g++)  /* sub-blocks 2g (low nibbles) and 2g + 1 (high) */
            for (int i = 0; i < 32; i++)
                out[16 + 32 * g + i] = (uint8_t)((q[2 * g][i] & 0x0F) | (q[2 * g + 1][i] << 4));
    }
}

/* (n, 256) float32 and the root mean square of each sub-block of 32, rms (n, 8), -> (n, 144)
 * Q4_K blocks. Returns 0; 1 (nothing written) if x holds NaN or infinity: the torch
 * reference decides what those become. */
int mlmf_quantize_q4_k(const float *x, const float *rms, uint8_t *out, int64_t n) {
    if (!all_finite(x, n * 256)) return 1;
    for (int64_t b = 0; b < n; b += 2)
        q4_k_group(x + b * 256, rms + b * 8, n - b >= 2 ? 2 : 1, out + b * 144);
    return 0;
}

/* -- Q6_K ---------------------------------------------------------------------------------- */

/* blocks_k_quant.fit_symmetric on 16 sub-blocks of 16 values, nmax 32 */
static void fit_symmetric(const float x[16][L], float scale[L], float codes[16][L]) {
    float peak[L], w[16][L], wx[16][L], sumlx[L], suml2[L], best[L];
    float best_iscale[L], iscale[L];
    int tiny[L];
    for (int l = 0; l < L; l++) {
        float top = fabsf(x[0][l]);
        peak[l] = x[0][l];
        for (int i = 1; i < 16; i++)
            if (fabsf(x[i][l]) > top) {
                top = fabsf(x[i][l]);
                peak[l] = x[i][l];
            }
        tiny[l] = fabsf(peak[l]) < 1e-15f;
        peak[l] = tiny[l] ? 1.0f : peak[l];
    }
    for (int i = 0; i < 16; i++)
        for (int l = 0; l < L; l++) {
            w[i][l] = x[i][l] * x[i][l];
            wx[i][l] = w[i][l] * x[i][l];
        }
    for (int k = -10; k < 10; k++) {  /* k = -10: the plain step, then -9..9 without 0 */
        if (k == 0) continue;
        const float c = k == -10 ? -32.0f : (float)(-(32 + 0.1 * k));
        for (int l = 0; l < L; l++) {
            iscale[l] = (1.0f / peak[l]) * c;
            sumlx[l] = suml2[l] = 0.0f;
        }
        for (int i = 0; i < 8; i++)  /* sum16's order, fused: values i and 8 + i */
            for (int l = 0; l < L; l++) {
                float q0 = rintf(iscale[l] * x[i][l]), q1 = rintf(iscale[l] * x[8 + i][l]);
                q0 = q0 < -32.0f ? -32.0f : q0;
                q0 = q0 > 31.0f ? 31.0f : q0;
                q1 = q1 < -32.0f ? -32.0f : q1;
                q1 = q1 > 31.0f ? 31.0f : q1;
                sumlx[l] += wx[i][l] * q0 + wx[8 + i][l] * q1;
                suml2[l] += (w[i][l] * q0) * q0 + (w[8 + i][l] * q1) * q1;
            }
        for (int l = 0; l < L; l++) {
            if (k == -10) {
                best_iscale[l] = iscale[l];
                scale[l] = suml2[l] != 0.0f ? sumlx[l] / suml2[l] : 0.0f;
                best[l] = scale[l] * sumlx[l];
            } else if (suml2[l] > 0.0f && sumlx[l] * sumlx[l] > best[l] * suml2[l]) {
                best_iscale[l] = iscale[l];
                scale[l] = sumlx[l] / suml2[l];
                best[l] = scale[l] * sumlx[l];
            }
        }
    }
    for (int i = 0; i < 16; i++)
        for (int l = 0; l < L; l++) {
            float q = rintf(best_iscale[l] * x[i][l]);
            q = q < -32.0f ? -32.0f : q;
            q = q > 31.0f ? 31.0f : q;
            codes[i][l] = tiny[l] ? 0.0f : q;
        }
    for (int l = 0; l < L; l++) scale[l] = tiny[l] ? 0.0f : scale[l];
}

static void q6_k_block(const float *src, uint8_t *out) {
    float x[16][L], scales[L], codes[16][L];
    for (int l = 0; l < L; l++)
        for (int i = 0; i < 16; i++) x[i][l] = src[l * 16 + i];
    fit_symmetric(x, scales, codes);

    int top = 0;
    for (int l = 1; l < L; l++) top = fabsf(scales[l]) > fabsf(scales[top]) ? l : top;
    const float max_scale = scales[top];
    if (fabsf(max_scale) < 1e-15f) {  /* an empty super-block is stored as zero bytes */
        memset(out, 0, 210);
        return;
    }
    const float iscale = (1.0f / max_scale) * -128.0f, d = 1.0f / iscale;
    const float d_f = float_of_half(half_of(d));
    uint8_t q[256];
    for (int l = 0; l < L; l++) {
        float r = rintf(iscale * scales[l]);
        r = r < -128.0f ? -128.0f : r;
        const int8_t sc = (int8_t)(r > 127.0f ? 127.0f : r);
        out[192 + l] = (uint8_t)sc;
        const float dl = d_f * (float)sc, safe = dl == 0.0f ? 1.0f : dl;
        for (int i = 0; i < 16; i++) {
            float v = rintf(x[i][l] / safe);
            v = v < -32.0f ? -32.0f : v;
            v = v > 31.0f ? 31.0f : v;
            q[16 * l + i] = (uint8_t)((dl == 0.0f ? codes[i][l] : v) + 32.0f);
        }
    }
    put_half(out + 208, d);
    for (int h = 0; h < 2; h++) {
        const uint8_t *c = q + 128 * h;
        for (int j = 0; j < 64; j++)
            out[64 * h + j] = (uint8_t)((c[j] & 0x0F) | (c[64 + j] << 4));
        for (int j = 0; j < 32; j++)
            out[128 + 32 * h + j] = (uint8_t)((c[j] >> 4) | ((c[32 + j] >> 4) << 2)
                                              | ((c[64 + j] >> 4) << 4) | ((c[96 + j] >> 4) << 6));
    }
}

/* (n, 256) float32 -> (n, 210) Q6_K blocks; returns as mlmf_quantize_q4_k. */
int mlmf_quantize_q6_k(const float *x, uint8_t *out, int64_t n) {
    if (!all_finite(x, n * 256)) return 1;
    for (int64_t b = 0; b < n; b++) q6_k_block(x + b * 256, out + b * 210);
    return 0;
}
