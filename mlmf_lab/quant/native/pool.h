/* Work split for the native kernels: see pool.c. */
#ifndef MLMF_POOL_H
#define MLMF_POOL_H
#include <stdint.h>

/* fn(ctx, start, stop) for consecutive ranges of `step` items covering [0, total) */
typedef void (*mlmf_task)(void *ctx, int64_t start, int64_t stop);

/* Runs every range of `total` items in steps of `step` on the calling thread and up to
 * `threads - 1` helpers, and returns when all are done. Ranges must write disjoint memory. */
void mlmf_parallel(mlmf_task fn, void *ctx, int64_t total, int64_t step, int threads);

/* Whether the OpenMP runtime this library uses is torch's own (one runtime in the process):
 * then mlmf_parallel tries torch's thread team first (see pool.c). Off until told. */
void mlmf_pool_openmp(int usable);

/* Rows per chunk for rows of `per_row` products each: about 2^17 products, a few
 * microseconds, so a helper is rarely descheduled inside a chunk (see pool.c). */
static inline int64_t mlmf_chunk_rows(int64_t per_row) {
    const int64_t rows = ((int64_t)1 << 17) / (per_row > 0 ? per_row : 1);
    return rows < 1 ? 1 : rows > 64 ? 64 : rows;
}

#endif
