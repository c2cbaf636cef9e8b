/* Work split for the native kernels, built so that a busy neighbour cannot stall a call.
 *
 * The work is cut into small chunks (a few microseconds each) that threads claim one at a
 * time from a shared counter, the calling thread among them. Two kinds of helpers take
 * chunks:
 *
 * - torch's own OpenMP team, first: on a quiet machine its threads are still spinning after
 *   torch's last operation, so they start at once, where a thread of ours would have to
 *   share a core with them. But an OpenMP region ends at a barrier: the caller waits for
 *   every thread of the team, even one the scheduler has not run yet, and with one other
 *   busy process on a 2-core machine that thread waits for the other's time slice (4-8 ms,
 *   where the whole call takes 0.1-0.3 ms; 2 threads took 1.5-16x the time of one, issue
 *   21). So the caller times its wait at the barrier; a wait over STALL_NS means a team
 *   thread was descheduled, and the jobs of the next 0.25 s go to the helpers below (a wait
 *   that doubles with each stall, up to 8 s, and halves with each prompt team: a lasting
 *   neighbour costs a stall every few seconds, and the team is back soon after it leaves) -
 * - helper threads of this file: the caller waits only for chunks a helper has claimed and
 *   not finished, so a helper that has not been scheduled yet finds nothing left and goes
 *   back to sleep while the caller does its share. Helpers touch the caller's memory only
 *   inside a claimed chunk, so nothing is read after the call returns.
 *
 * Here the job's generation and its next chunk share one 64-bit word (generation << 32 |
 * chunk), so a claim is one compare-and-swap that fails once the job a helper read has ended.
 * One caller uses the helpers at a time; a concurrent caller runs its job alone. After each
 * job helpers poll for SPIN_NS (back-to-back calls then find them awake), then sleep on a
 * futex. A forked child starts without helpers and makes new ones on its first call; it
 * never uses the OpenMP team (GNU OpenMP does not survive a fork).
 */
#define _GNU_SOURCE
#include "pool.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

enum { MAX_HELPERS = 255 };
#define CLOSED 0xFFFFFFFFu         /* chunk field of the word between jobs */
static const int64_t SPIN_NS = 100000;      /* helpers poll this long after a job */
static const int64_t WAIT_SPIN_NS = 20000;  /* the caller polls this long for claimed chunks */
static const int64_t STALL_NS = 50000;      /* a team thread this late was descheduled */
/* then this file's helpers, for a while that doubles with every stall in a row */
#define BACKOFF_MIN_NS INT64_C(250000000)
#define BACKOFF_MAX_NS INT64_C(8000000000)

/* torch's OpenMP runtime is the one this library uses (mlmf_pool_openmp); off in a child */
static atomic_int openmp_usable;
static _Atomic int64_t openmp_after;  /* now_ns() from which the team may be tried again */
static _Atomic int64_t openmp_backoff = BACKOFF_MIN_NS;

static struct {
    _Atomic uint64_t word;      /* generation << 32 | next chunk to claim */
    _Atomic uint32_t done;      /* chunks finished in this generation (a futex word) */
    _Atomic uint32_t wake;      /* bumped to wake sleeping helpers (a futex word) */
    _Atomic int sleepers;       /* helpers asleep on `wake` */
    _Atomic int caller_asleep;  /* the caller sleeps on `done` */
    /* the job of the current generation */
    _Atomic(mlmf_task) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t total, step;
    _Atomic uint32_t chunks;
    _Atomic int wanted;         /* helpers with a smaller id take part */
    pthread_mutex_t lock;       /* held by the caller that uses the helpers */
    int started;                /* helper threads running (under `lock`) */
} P = {.word = CLOSED, .lock = PTHREAD_MUTEX_INITIALIZER};

static void cpu_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t expected) {
#if defined(__linux__)
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
#else
    (void)addr; (void)expected;
    sched_yield();
#endif
}

static void futex_wake(_Atomic uint32_t *addr) {
#if defined(__linux__)
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)addr;
#endif
}

/* Claims and runs chunks of generation `gen` until none is left. */
static void run_chunks(uint32_t gen) {
    /* read before the first claim: once a claim of `gen` succeeds these are gen's values,
     * since the next job's are written only after every chunk of this one is done */
    const mlmf_task fn = atomic_load_explicit(&P.fn, memory_order_relaxed);
    void *const ctx = atomic_load_explicit(&P.ctx, memory_order_relaxed);
    const int64_t total = atomic_load_explicit(&P.total, memory_order_relaxed);
    const int64_t step = atomic_load_explicit(&P.step, memory_order_relaxed);
    const uint32_t chunks = atomic_load_explicit(&P.chunks, memory_order_relaxed);
    uint64_t w = atomic_load(&P.word);
    for (;;) {
        if ((uint32_t)(w >> 32) != gen || (uint32_t)w >= chunks) return;
        if (!atomic_compare_exchange_weak(&P.word, &w, w + 1)) continue;  /* w reloaded */
        const int64_t start = (int64_t)(uint32_t)w * step;
        fn(ctx, start, start + step < total ? start + step : total);
        if (atomic_fetch_add(&P.done, 1) + 1 == chunks && atomic_load(&P.caller_asleep))
            futex_wake(&P.done);
        w = atomic_load(&P.word);
    }
}

/* Waits until the generation moves past `seen` (polling, then asleep); returns the new one. */
static uint32_t wait_for_job(uint32_t seen) {
    int64_t until = now_ns() + SPIN_NS;
    for (unsigned spins = 1;; spins++) {
        const uint32_t gen = (uint32_t)(atomic_load(&P.word) >> 32);
        if (gen != seen) return gen;
        if (spins % 64 != 0 || now_ns() < until) {
            cpu_pause();
            continue;
        }
        const uint32_t ticket = atomic_load(&P.wake);
        atomic_fetch_add(&P.sleepers, 1);
        if ((uint32_t)(atomic_load(&P.word) >> 32) == seen) futex_wait(&P.wake, ticket);
        atomic_fetch_sub(&P.sleepers, 1);
        until = now_ns() + SPIN_NS;
    }
}

static void *helper_main(void *arg) {
    const int id = (int)(intptr_t)arg;
    uint32_t gen = (uint32_t)(atomic_load(&P.word) >> 32);
    for (;;) {
        gen = wait_for_job(gen);
        if (id < atomic_load(&P.wanted)) run_chunks(gen);
    }
    return NULL;
}

/* Starts helpers until `n` run (under P.lock); returns how many run. Signals stay with the
 * threads that expect them: helpers block all of them. */
static int start_helpers(int n) {
    sigset_t all, before;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &before);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (; P.started < n; P.started++) {
        pthread_t thread;
        if (pthread_create(&thread, &attr, helper_main, (void *)(intptr_t)P.started) != 0) break;
#if defined(__linux__)
        pthread_setname_np(thread, "mlmf-kernel");
#endif
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    return P.started;
}

static void wait_done(uint32_t chunks) {
    const int64_t until = now_ns() + WAIT_SPIN_NS;
    for (unsigned spins = 1;; spins++) {
        uint32_t done = atomic_load(&P.done);
        if (done >= chunks) return;
        if (spins % 64 != 0 || now_ns() < until) {
            cpu_pause();
            continue;
        }
        /* a helper was descheduled inside its chunk: sleeping leaves this core idle, so the
         * scheduler can move the helper here */
        atomic_store(&P.caller_asleep, 1);
        done = atomic_load(&P.done);
        if (done < chunks) futex_wait(&P.done, done);
        atomic_store(&P.caller_asleep, 0);
    }
}

void mlmf_pool_openmp(int usable) {
    atomic_store(&openmp_usable, usable != 0);
}

/* The job on torch's OpenMP team (the same chunk counter); returns how long the caller
 * waited at the closing barrier after the last chunk was claimed, in ns. */
static int64_t run_openmp(mlmf_task fn, void *ctx, int64_t total, int64_t step,
                          int64_t chunks, int threads) {
#if defined(_OPENMP)
    _Atomic int64_t next = 0;
    int64_t claimed_all = 0;
    #pragma omp parallel num_threads(threads)
    {
        for (int64_t c; (c = atomic_fetch_add(&next, 1)) < chunks;)
            fn(ctx, c * step, c * step + step < total ? c * step + step : total);
        if (omp_get_thread_num() == 0) claimed_all = now_ns();
    }
    return now_ns() - claimed_all;
#else
    (void)threads;
    for (int64_t c = 0; c < chunks; c++)
        fn(ctx, c * step, c * step + step < total ? c * step + step : total);
    return 0;
#endif
}

void mlmf_parallel(mlmf_task fn, void *ctx, int64_t total, int64_t step, int threads) {
    if (total <= 0) return;
    if (step < total / (CLOSED - 1) + 1) step = total / (CLOSED - 1) + 1;  /* chunks fit */
    const int64_t chunks = (total + step - 1) / step;
    int helpers = threads - 1;
    helpers = helpers < chunks - 1 ? helpers : (int)(chunks - 1);
    helpers = helpers < MAX_HELPERS ? helpers : MAX_HELPERS;
    if (helpers > 0 && atomic_load(&openmp_usable)) {
        const int64_t now = now_ns();
        if (now >= atomic_load(&openmp_after)) {
            if (run_openmp(fn, ctx, total, step, chunks, helpers + 1) > STALL_NS) {
                const int64_t wait = atomic_load(&openmp_backoff);
                atomic_store(&openmp_after, now_ns() + wait);
                atomic_store(&openmp_backoff, wait < BACKOFF_MAX_NS / 2 ? 2 * wait
                                                                       : BACKOFF_MAX_NS);
            } else {  /* calm again: shorter waits, one step at a time */
                const int64_t wait = atomic_load(&openmp_backoff);
                atomic_store(&openmp_backoff, wait > 2 * BACKOFF_MIN_NS ? wait / 2
                                                                        : BACKOFF_MIN_NS);
            }
            return;
        }
    }
    if (helpers > 0 && pthread_mutex_trylock(&P.lock) == 0) {
        helpers = start_helpers(helpers) < helpers ? P.started : helpers;
        atomic_store_explicit(&P.fn, fn, memory_order_relaxed);
        atomic_store_explicit(&P.ctx, ctx, memory_order_relaxed);
        atomic_store_explicit(&P.total, total, memory_order_relaxed);
        atomic_store_explicit(&P.step, step, memory_order_relaxed);
        atomic_store_explicit(&P.chunks, (uint32_t)chunks, memory_order_relaxed);
        atomic_store(&P.wanted, helpers);
        atomic_store(&P.done, 0);
        const uint32_t gen = (uint32_t)(atomic_load(&P.word) >> 32) + 1;
        atomic_store(&P.word, (uint64_t)gen << 32);  /* publishes the fields above */
        if (atomic_load(&P.sleepers) > 0) {
            atomic_fetch_add(&P.wake, 1);
            futex_wake(&P.wake);
        }
        run_chunks(gen);
        wait_done((uint32_t)chunks);
        atomic_store(&P.word, (uint64_t)gen << 32 | CLOSED);
        pthread_mutex_unlock(&P.lock);
        return;
    }
    for (int64_t start = 0; start < total; start += step)  /* alone */
        fn(ctx, start, start + step < total ? start + step : total);
}

/* The helpers do not exist in a forked child; another thread of the parent may have held the
 * lock at the fork; GNU OpenMP's team does not work there. */
static void forget_helpers(void) {
    atomic_store(&openmp_usable, 0);
    P.started = 0;
    atomic_store(&P.sleepers, 0);
    atomic_store(&P.caller_asleep, 0);
    atomic_store(&P.word, (atomic_load(&P.word) & ~(uint64_t)CLOSED) | CLOSED);
    pthread_mutex_init(&P.lock, NULL);
}

__attribute__((constructor)) static void register_fork_handler(void) {
    pthread_atfork(NULL, NULL, forget_helpers);
}
