"""Run a function on N local ranks (gloo on 127.0.0.1), bounded in time, cleaned up after.

The parent hosts the key-value store on a socket it bound to 127.0.0.1 itself (so it
outlives any rank and never listens beyond loopback); ranks are forked from a
``forkserver`` that has already imported torch, so starting them is cheap and safe.
For multi-host runs use ``torchrun`` and ``ml.distributed.setup()`` instead.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import torch.distributed as dist

from ..errors import ConfigError, DistributedError
from .runtime import DEFAULT_TIMEOUT, teardown, use_store

PRELOAD = ["torch", "torch.distributed", "mlmf_lab.distributed"]


class RankResult(NamedTuple):
    """What one rank returned (``value``) or why it failed (``error``)."""

    rank: int
    value: Any
    error: str | None
    exitcode: int | None

    @property
    def ok(self) -> bool:
        return self.error is None


def _worker(fn: Callable[..., Any], rank: int, world_size: int, port: int, pg_timeout: float,
            args: tuple[Any, ...], results: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    timeout = datetime.timedelta(seconds=pg_timeout)
    try:
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
        use_store(store)
        dist.init_process_group("gloo", store=dist.PrefixStore("pg", store), rank=rank,
                                world_size=world_size, timeout=timeout)
        value = fn(*args)
    except BaseException as e:  # noqa: BLE001  (reported to the parent, then exit 1)
        results.put((rank, None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"))
        teardown()
        raise SystemExit(1) from None
    results.put((rank, value, None))
    teardown()


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def launch(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    pg_timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
) -> list[RankResult]:
    """Run ``fn(*args)`` in ``world_size`` processes joined in a gloo process group.

    Args:
        fn: a module-level function (it is pickled by reference).
        world_size: number of ranks.
        timeout: seconds for the whole run; ranks still alive then are killed.
        pg_timeout: the process group's timeout for each collective.
        check: raise if any rank failed.

    Returns:
        One ``RankResult`` per rank, in rank order.

    Raises:
        DistributedError: with ``check``, listing each failed rank's error or exit code.

    Example:
        >>> results = ml.distributed.launch(my_fn, 2, "model.safetensors")  # doctest: +SKIP
    """
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    sock = _listening_socket()
    port = sock.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=pg_timeout),
                          master_listen_fd=sock.fileno())
    results: Any = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, pg_timeout, args, results),
                         daemon=True) for r in range(world_size)]
    got: dict[int, tuple[Any, str | None]] = {}
    stuck = [False] * world_size
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while len(got) < world_size and time.monotonic() < deadline:
            try:
                rank, value, error = results.get(timeout=0.2)
                got[rank] = (value, error)
            except queue.Empty:
                if all(p.exitcode is not None for p in procs):
                    _drain(results, got)
                    break
        stuck = [p.is_alive() and r not in got for r, p in enumerate(procs)]
    finally:
        for p in procs:
            p.join(timeout=max(0.0, 5.0 if len(got) == world_size else 0.5))
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()
        del store
        sock.close()
    out = []
    for r, p in enumerate(procs):
        value, error = got.get(r, (None, None))
        if r not in got:
            error = (f"rank {r} did not finish within {timeout:.0f} s and was stopped" if stuck[r]
                     else f"rank {r} exited with code {p.exitcode} without reporting")
        out.append(RankResult(r, value, error, p.exitcode))
    if check and not all(r.ok for r in out):
        raise DistributedError("; ".join(f"rank {r.rank}: {(r.error or '').splitlines()[0]}"
                                         for r in out if not r.ok))
    return out


def _drain(results: Any, got: dict[int, tuple[Any, str | None]]) -> None:
    while True:
        try:
            rank, value, error = results.get(timeout=0.2)
        except queue.Empty:
            return
        got[rank] = (value, error)
