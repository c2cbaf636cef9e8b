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
import pickle
import socket
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple, cast

import torch
import torch.distributed as dist

from ..errors import ConfigError, DistributedError
from .runtime import (
    DEFAULT_HEARTBEAT,
    DEFAULT_TIMEOUT,
    check_heartbeat,
    start_heartbeat,
    teardown,
    use_store,
)

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
            beat: float, args: tuple[Any, ...], conn: Connection) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun: N ranks share the cores
        torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=pg_timeout)
    try:
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
        use_store(store)
        dist.init_process_group("gloo", store=dist.PrefixStore("pg", store), rank=rank,
                                world_size=world_size, timeout=timeout)
        start_heartbeat(beat)
        value = fn(*args)
    except BaseException as e:  # noqa: BLE001  (reported to the parent, then exit 1)
        conn.send((None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"))
        teardown()
        raise SystemExit(1) from None
    # plain pickle bytes: torch's shared-memory reductions would pass file descriptors that
    # vanish when this process exits before the parent reads them
    conn.send((pickle.dumps(value), None))
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
    heartbeat: float = DEFAULT_HEARTBEAT,
    check: bool = True,
) -> list[RankResult]:
    """Run ``fn(*args)`` in ``world_size`` processes joined in a gloo process group.

    Args:
        fn: a module-level function (it is pickled by reference).
        world_size: number of ranks.
        timeout: seconds for the whole run; ranks still alive then are killed.
        pg_timeout: the process group's timeout for each collective.
        heartbeat: seconds of silence after which a rank counts as hung or dead: checked
            steps (``load_shard``, ``gather_state_dict``) then fail on every other rank,
            naming it, instead of waiting for ``pg_timeout``.
        check: raise if any rank failed.

    Returns:
        One ``RankResult`` per rank, in rank order.

    Raises:
        ConfigError: a bad ``world_size`` or ``heartbeat``.
        DistributedError: with ``check``, listing each failed rank's error or exit code.

    Example:
        >>> results = ml.distributed.launch(my_fn, 2, "model.safetensors")  # doctest: +SKIP
    """
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    check_heartbeat(heartbeat)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    sock = _listening_socket()
    port = sock.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=pg_timeout),
                          master_listen_fd=sock.detach())  # the store owns the socket now
    pipes = [ctx.Pipe(duplex=False) for _ in range(world_size)]
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(fn, r, world_size, port, pg_timeout, heartbeat, args,
                               pipes[r][1]))
             for r in range(world_size)]
    got: dict[int, tuple[bytes | None, str | None]] = {}
    stuck: set[int] = set()
    try:
        for p, (_, send_end) in zip(procs, pipes, strict=True):
            p.start()
            send_end.close()  # the child holds it; EOF on ours = the child is gone
        pending = {pipes[r][0]: r for r in range(world_size)}
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            for ready in wait(list(pending), timeout=left):
                conn = cast(Connection, ready)
                r = pending.pop(conn)
                try:
                    got[r] = conn.recv()
                except EOFError:
                    pass  # died without reporting; its exit code tells the rest
        stuck = set(pending.values())
    finally:
        for p in procs:
            if p.pid is None:  # never started
                continue
            p.join(timeout=5.0 if not stuck else 0.5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join()
        for recv_end, _ in pipes:
            recv_end.close()
        del store
    out = []
    for r, p in enumerate(procs):
        blob, error = got.get(r, (None, None))
        if r in stuck:
            error = f"rank {r} did not finish within {timeout:.0f} s and was stopped"
        elif r not in got:
            error = f"rank {r} exited with code {p.exitcode} without reporting"
        value = pickle.loads(blob) if blob is not None else None
        out.append(RankResult(r, value, error, p.exitcode))
    if check and not all(r.ok for r in out):
        raise DistributedError("; ".join(f"rank {r.rank}: {(r.error or '').splitlines()[0]}"
                                         for r in out if not r.ok))
    return out
