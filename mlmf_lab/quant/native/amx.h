/* int8 products on AMX tiles, for int8.c's many-rows path: see amx.c. */
#ifndef MLMF_AMX_H
#define MLMF_AMX_H
#include <stdint.h>

/* 1 once this process may use the tiles (asked of Linux the first time), else 0 */
int mlmf_amx_ready(void);

/* Bytes mlmf_amx_pack writes for m rows of k (k a multiple of 64) */
int64_t mlmf_amx_packed_size(int64_t m, int64_t k);

/* Rows x (m, k) uint8 into the tiles' layout (see amx.c); rows past m are zeros */
void mlmf_amx_pack(const uint8_t *x, int64_t m, int64_t k, uint8_t *packed);

/* c[a][b] = sum_i w[a, i] * x[r0 + b, i] for the 32 weight rows at w (n rows of k, signed)
 * and the packed rows r0.. r0 + 31 (r0 a multiple of 32); exact int32 sums */
void mlmf_amx_block(const int8_t *w, int64_t k, const uint8_t *packed, int64_t r0,
                    int32_t c[32][32]);

#endif
