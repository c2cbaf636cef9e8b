/* int8 products on AMX tiles (Intel Sapphire Rapids and later), for int8.c's many-rows path.
 *
 * A tile multiply (TDPBSUD) adds 16 x 16 dot products of 64 signed by 64 unsigned bytes in
 * one instruction, about 8 times the work of the AVX512-VNNI loop per cycle. The weights
 * are read as they are stored, 16 rows of 64 bytes per tile; the activations are repacked
 * once per call into the layout a right-hand tile wants: for each 16 input rows and each 64
 * bytes of k, 16 lines holding 4 bytes of every row,
 *     packed[((g * steps + s) * 16 + line) * 64 + 4 * row + byte] = x[16 g + row][64 s + 4 line + byte].
 * The sums are the exact int32 ones, the same as the VNNI loop's.
 *
 * Linux hands the tiles to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM, once); each
 * thread loads its tile configuration before use and releases the tiles after, so the
 * context switches of other code stay as cheap as before.
 */
#define _GNU_SOURCE  /* syscall() under -std=c11 */
#include "amx.h"

#include <stdatomic.h>
#include <string.h>
#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define MLMF_AMX 1
#else
#define MLMF_AMX 0
#endif

enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };

int mlmf_amx_ready(void) {
#if MLMF_AMX
    static atomic_int state;  /* 0 not asked yet, 1 granted, -1 refused */
    int s = atomic_load(&state);
    if (s == 0) {
        s = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
        atomic_store(&state, s);
    }
    return s == 1;
#else
    return 0;
#endif
}

int64_t mlmf_amx_packed_size(int64_t m, int64_t k) {
    return (m + 31) / 32 * 32 * k;  /* whole blocks of 32 rows: mlmf_amx_block reads two groups */
}

void mlmf_amx_pack(const uint8_t *x, int64_t m, int64_t k, uint8_t *packed) {
    const int64_t groups = (m + 31) / 32 * 2, steps = k / 64;
    for (int64_t g = 0; g < groups; g++)
        for (int64_t s = 0; s < steps; s++) {
            uint8_t *tile = packed + (g * steps + s) * 1024;
            for (int row = 0; row < 16; row++) {
                const int64_t r = 16 * g + row;
                for (int line = 0; line < 16; line++) {
                    uint8_t *dst = tile + line * 64 + 4 * row;
                    if (r < m)
                        memcpy(dst, x + r * k + 64 * s + 4 * line, 4);
                    else
                        memset(dst, 0, 4);
                }
            }
        }
}

#if MLMF_AMX
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;
#endif

void mlmf_amx_block(const int8_t *w, int64_t k, const uint8_t *packed, int64_t r0,
                    int32_t c[32][32]) {
#if MLMF_AMX
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {  /* every tile: 16 rows of 64 bytes */
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    const int64_t steps = k / 64;
    const uint8_t *x0 = packed + (r0 / 16) * steps * 1024, *x1 = x0 + steps * 1024;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t s = 0; s < steps; s++) {
        _tile_loadd(4, w + 64 * s, k);           /* weight rows 0-15 */
        _tile_loadd(5, w + 16 * k + 64 * s, k);  /* weight rows 16-31 */
        _tile_loadd(6, x0 + s * 1024, 64);       /* input rows r0 .. r0 + 15 */
        _tile_loadd(7, x1 + s * 1024, 64);       /* input rows r0 + 16 .. r0 + 31 */
        _tile_dpbsud(0, 4, 6);
        _tile_dpbsud(1, 4, 7);
        _tile_dpbsud(2, 5, 6);
        _tile_dpbsud(3, 5, 7);
    }
    _tile_stored(0, &c[0][0], 128);
    _tile_stored(1, &c[0][16], 128);
    _tile_stored(2, &c[16][0], 128);
    _tile_stored(3, &c[16][16], 128);
    _tile_release();
#else
    (void)w; (void)k; (void)packed; (void)r0;
    memset(c, 0, sizeof(int32_t) * 32 * 32);
#endif
}
