"""Run block maths chunk by chunk on a small pool of single-threaded workers.

Why not torch's own intra-op threads: block (de)quantization is a dozen small elementwise
ops per chunk, and each op would open and join a parallel region. On an idle machine that
costs a few microseconds per op; on a busy one (a shared 2-core box) every join waits for the
slowest thread and throughput collapses by 10x or more. Independent workers, each running
whole chunks on one thread, need no joins: a descheduled worker just takes fewer chunks.
The ops release the GIL, so the workers run in parallel.

The pool has ``torch.get_num_threads()`` workers (rebuilt if that changes), is dropped in
forked children, and each task runs in the caller's inference/grad mode, so a buffer made
under ``torch.inference_mode()`` can be filled.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

PREFIX = "mlmf-quant"
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_size = 0


def _forget_pool() -> None:
    global _pool, _size
    _pool, _size = None, 0  # the threads do not exist in a forked child


os.register_at_fork(after_in_child=_forget_pool)


def _start(n: int) -> ThreadPoolExecutor:
    """A pool of ``n`` started workers, each with one torch thread."""
    ready = threading.Barrier(n + 1)

    def init() -> None:
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(n, thread_name_prefix=PREFIX, initializer=init)
    for _ in range(n):
        pool.submit(lambda: None)
    ready.wait()
    # set_num_threads also records a process-wide default for threads started later:
    # put back the caller's value so only our workers run single-threaded
    torch.set_num_threads(n)
    return pool


def workers() -> ThreadPoolExecutor | None:
    """The shared pool, or None when torch runs single-threaded."""
    global _pool, _size
    n = torch.get_num_threads()
    if n <= 1:
        return None
    with _lock:
        if _pool is None or _size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _size = _start(n), n
        return _pool


def run_chunks(fn: Callable[[int, int], None], total: int, step: int) -> None:
    """Call ``fn(start, stop)`` for consecutive ranges of ``step`` items covering ``total``.

    The ranges run on the worker pool when there are several; ``fn`` must only write to
    disjoint parts of its outputs. The first exception raised by ``fn`` is re-raised here.
    """
    starts = range(0, total, step)
    pool = None if len(starts) < 2 or threading.current_thread().name.startswith(PREFIX) \
        else workers()
    if pool is None:
        for start in starts:
            fn(start, min(start + step, total))
        return
    inference = torch.is_inference_mode_enabled()

    def task(start: int) -> None:
        with torch.inference_mode(inference), torch.no_grad():
            fn(start, min(start + step, total))

    for _ in pool.map(task, starts):
        pass
