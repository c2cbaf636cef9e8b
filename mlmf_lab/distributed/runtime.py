"""Process groups on torch.distributed: setup, fail-fast checked steps, a local launcher.

Every rank posts its status ("reading <file>", "ok", "failed: ...") to the process
group's key-value store before and after each step, then the ranks exchange statuses
with one collective. A rank that raised is reported by name to every rank; a rank that
died breaks the collective at once (gloo sees the closed socket) and the survivors read
its last status from the store, so the error names the rank and the file it was reading.
Every wait is bounded by the process group's timeout.
"""

from __future__ import annotations

import datetime
import itertools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from ..errors import ConfigError, DistributedError

T = TypeVar("T")
DEFAULT_TIMEOUT = 60.0  # seconds; every collective and store wait is bounded by it
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_STORE: list[dist.Store] = []  # keeps the store (and a server it may host) alive
_STEPS = itertools.count()


def world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments, else the process group, else torchrun's env.

    Raises:
        ConfigError: when neither is given nor discoverable, or the rank is out of range.
    """
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    env_rank, env_size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and env_rank is not None:
        rank = int(env_rank)
    if world_size is None and env_size is not None:
        world_size = int(env_size)
    if world_size is None:
        raise ConfigError("world_size is unknown: pass world_size=, start a process group "
                          "(ml.distributed.setup()) or run under torchrun")
    rank = 0 if rank is None and world_size == 1 else rank
    if rank is None or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not within 0..{world_size - 1}")
    return rank, world_size


def setup(timeout: float = DEFAULT_TIMEOUT, backend: str = "gloo") -> tuple[int, int]:
    """Start the process group from torchrun's environment; returns (rank, world_size).

    On a single host (``MASTER_ADDR`` is loopback) gloo is pinned to the loopback
    interface, so no socket listens beyond 127.0.0.1.

    Raises:
        ConfigError: when the environment lacks torchrun's variables.
    """
    needed = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in needed if k not in os.environ]
    if missing:
        raise ConfigError(f"not under torchrun: missing {', '.join(missing)} in the environment")
    if os.environ["MASTER_ADDR"] in LOOPBACK:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    _STORE.clear()
    return dist.get_rank(), dist.get_world_size()


def teardown() -> None:
    """Destroy the process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def use_store(store: dist.Store) -> None:
    """Use ``store`` for status keys (the launcher passes its own)."""
    _STORE[:] = [store]


def _store() -> dist.Store | None:
    if not _STORE:
        try:
            _STORE.append(dist.distributed_c10d._get_default_store())
        except (RuntimeError, AttributeError, ValueError):
            return None
    return _STORE[0]


def _post(key: str, value: str) -> None:
    store = _store()
    if store is not None:
        try:
            store.set(key, value)
        except Exception:  # noqa: BLE001  (a lost store must not hide the real error)
            pass


def _status(store: dist.Store | None, key: str) -> str | None:
    if store is None:
        return None
    try:
        return store.get(key).decode() if store.check([key]) else None
    except Exception:  # noqa: BLE001
        return "unreachable"


def diagnose(step: str, world_size: int, me: int, cause: BaseException) -> str:
    """Explain a failed collective from the other ranks' last posted statuses."""
    store = _store()
    problems = []
    for r in range(world_size):
        if r == me:
            continue
        s = _status(store, f"{step}/{r}")
        if s is None:
            problems.append(f"rank {r} never started this step (died earlier or unreachable)")
        elif s.startswith("failed:"):
            problems.append(f"rank {r} {s}")
        elif s != "ok":
            problems.append(f"rank {r} died or stopped responding while {s}")
    reason = str(cause).split(". This is")[0][:160]
    return ("; ".join(problems) or "a peer failed") + f" [rank {me} saw: {reason}]"


def checked(what: str, file: str | os.PathLike[str], step: Callable[[], T],
            collective: bool = False) -> T:
    """Run ``step`` on every rank; return its result only if every rank succeeded.

    Args:
        what: verb for the status, e.g. ``"reading"``.
        file: the file the step works on (named in errors).
        step: the work; may itself run collectives when ``collective`` is True.
        collective: a rank whose step fails then tears the group down, so peers blocked
            in the step's collectives fail at once instead of waiting for the timeout.

    Raises:
        DistributedError: on every rank, naming the failing rank(s) and the file.
    """
    file = os.fspath(file)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return step()
    rank, size = dist.get_rank(), dist.get_world_size()
    key = f"mlmf/{next(_STEPS)}"
    _post(f"{key}/{rank}", f"{what} {file}")
    result: Any = None
    local: BaseException | None = None
    try:
        result = step()
        status = "ok"
    except Exception as e:  # noqa: BLE001  (every rank must hear of it, then it is re-raised)
        local, status = e, f"failed: {type(e).__name__}: {e}"
    _post(f"{key}/{rank}", status)
    if local is not None and collective:
        # a peer's failure often surfaces here as a broken connection: name that peer
        others = diagnose(key, size, rank, local) if isinstance(local, RuntimeError) else ""
        teardown()
        message = others if others and not others.startswith("a peer") else f"rank {rank} {status}"
        raise DistributedError(message, file) from local
    statuses: list[Any] = [None] * size
    try:
        dist.all_gather_object(statuses, status)
    except (RuntimeError, ValueError) as e:
        message = diagnose(key, size, rank, e)
        teardown()  # the group is broken anyway; closing it makes the other peers fail fast
        raise DistributedError(message, file) from e
    failed = [f"rank {r} {s}" for r, s in enumerate(statuses) if s != "ok"]
    if failed:
        raise DistributedError("; ".join(failed), file) from local
    return result


def require_group(world_size: int, what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(f"{what} needs a running process group (ml.distributed.setup())")
    if dist.get_world_size() != world_size:
        raise ConfigError(f"{what}: the plan is for {world_size} ranks, the process group has "
                          f"{dist.get_world_size()}")


__all__ = ["DEFAULT_TIMEOUT", "checked", "diagnose", "setup", "teardown", "use_store", "world"]
