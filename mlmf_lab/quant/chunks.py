"""Run block maths chunk by chunk: the calling thread plus helpers, each single-threaded.

Why not torch's own intra-op threads: block (de)quantization is a dozen small elementwise
ops per chunk, and each op would open and join a parallel region. On an idle machine that
costs a few microseconds per op; on a busy one (a shared 2-core box) every join waits for
the slowest thread and throughput collapses by 10x or more.

Instead the chunks go to ``torch.get_num_threads()`` independent loops that take the next
chunk from a shared counter: the caller's own thread (running torch single-threaded for the
duration) and ``n - 1`` helper threads. No loop waits for another: when the other cores are
busy, the caller simply does most chunks itself, as fast as a plain single-threaded loop;
when they are free, the helpers share the work. The ops release the GIL, so the loops run
in parallel. Helpers are dropped in forked children and run in the caller's inference/grad
mode, so a buffer made under ``torch.inference_mode()`` can be filled.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch

PREFIX = "mlmf-quant"
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_size = 0


def _forget_pool() -> None:
    global _pool, _size
    _pool, _size = None, 0  # the threads do not exist in a forked child


os.register_at_fork(after_in_child=_forget_pool)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops of the current thread on one thread, then restore the setting."""
    before = torch.get_num_threads()
    if before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before > 1:
            torch.set_num_threads(before)


def helpers(n: int) -> ThreadPoolExecutor | None:
    """The shared pool of ``n`` helper threads (each with one torch thread), or None."""
    global _pool, _size
    if n < 1:
        return None
    with _lock:
        if _pool is None or _size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(n, thread_name_prefix=PREFIX,
                                       initializer=torch.set_num_threads, initargs=(1,))
            _size = n
        return _pool


def run_chunks(fn: Callable[[int, int], None], total: int, step: int) -> None:
    """Call ``fn(start, stop)`` for consecutive ranges of ``step`` items covering ``total``.

    ``fn`` must only write to disjoint parts of its outputs. The first exception raised by
    ``fn`` stops the remaining chunks and is re-raised here.
    """
    starts = iter(range(0, total, step))
    taken = threading.Lock()
    failed = threading.Event()

    def drain() -> None:
        while not failed.is_set():
            with taken:
                start = next(starts, None)
            if start is None:
                return
            try:
                fn(start, min(start + step, total))
            except BaseException:
                failed.set()
                raise

    n_chunks = -(-total // step) if step > 0 else 0
    inside = threading.current_thread().name.startswith(PREFIX)
    n_helpers = 0 if n_chunks < 2 or inside else torch.get_num_threads() - 1
    pool = helpers(n_helpers)
    futures: list[Future[None]] = []
    if pool is not None:
        inference = torch.is_inference_mode_enabled()

        def helper() -> None:
            with torch.inference_mode(inference), torch.no_grad():
                drain()

        futures = [pool.submit(helper) for _ in range(min(n_helpers, n_chunks - 1))]
    # the helpers' set_num_threads(1) also sets the process default for threads started
    # later; waiting for them inside the context lets its exit restore the caller's value
    with single_threaded():
        try:
            drain()
        finally:
            errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
