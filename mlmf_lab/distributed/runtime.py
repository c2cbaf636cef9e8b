"""Process groups on torch.distributed: setup, fail-fast checked steps, a local launcher.

Every rank posts its status ("reading <file>", "ok", "failed: ...") to the process
group's key-value store before and after each step, then the ranks exchange statuses
with one collective. A rank whose own work raised posts "failed: ..." and is reported by
name to every rank. A rank whose collective broke because of a peer (a closed socket)
posts "broken: ..." instead, which blames nobody: survivors never post a peer's
connection error as their own failure. A rank that died or hangs (SIGSTOP) stops its
heartbeat (``heartbeat.py``): waits notice it within ``heartbeat`` seconds (not at the
process group's timeout), and the error names that rank, what it was doing, and the file.
"""

from __future__ import annotations

import datetime
import itertools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from ..errors import ConfigError, DistributedError
from . import heartbeat
from .heartbeat import DEFAULT_HEARTBEAT, PeersSilent

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


def setup(timeout: float = DEFAULT_TIMEOUT, backend: str = "gloo",
          heartbeat: float = DEFAULT_HEARTBEAT) -> tuple[int, int]:
    """Start the process group from torchrun's environment; returns (rank, world_size).

    On a single host (``MASTER_ADDR`` is loopback) gloo is pinned to the loopback
    interface, so no socket listens beyond 127.0.0.1.

    Args:
        timeout: seconds the process group waits for any collective.
        backend: the torch.distributed backend.
        heartbeat: seconds of silence after which a peer counts as hung or dead (checked
            steps then fail naming it); raise it for ranks that may hold the GIL longer.

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
    start_heartbeat(heartbeat)
    return dist.get_rank(), dist.get_world_size()


def start_heartbeat(timeout: float = DEFAULT_HEARTBEAT) -> None:
    """Post this rank's heartbeat to the store (``setup`` and the launcher call it).

    Raises:
        ConfigError: a timeout that is not a positive number of seconds.
    """
    check_heartbeat(timeout)
    store = _store()
    if store is not None and dist.get_world_size() > 1:
        heartbeat.start(store, dist.get_rank(), dist.get_world_size(), float(timeout))


def check_heartbeat(timeout: float) -> None:
    """Raise ``ConfigError`` unless ``timeout`` is a positive number of seconds."""
    if isinstance(timeout, bool) or not (isinstance(timeout, int | float) and timeout > 0):
        raise ConfigError(f"heartbeat must be a positive number of seconds, found {timeout!r}")


def teardown() -> None:
    """Stop the heartbeat and destroy the process group if there is one."""
    heartbeat.stop()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def use_store(store: dist.Store) -> None:
    """Use ``store`` for status keys (the launcher passes its own)."""
    _STORE[:] = [store]


class PeerLost(Exception):  # noqa: N818 - internal signal, turned into a DistributedError
    """A collective failed because of a peer (closed socket, timeout): see ``talking``."""


def talking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` for a collective: its RuntimeError is a peer's doing.

    torch raises the same RuntimeError for a closed socket as for many local errors; only
    where the call is made is it known to be communication.
    """
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:
        raise PeerLost(str(e)) from e


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


def _describe(r: int, s: str | None, silent: dict[int, float], beating: bool) -> str | None:
    """Blame for peer ``r`` with last status ``s``, or None when it is not to blame."""
    if s is not None and s.startswith("failed:"):
        return f"rank {r} {s}"
    if s in ("ok", "unreachable") or (s or "").startswith("broken:"):
        return None
    if not beating:  # no heartbeat (no store): unfinished is all that is known
        doing = "never started this step" if s is None else f"did not finish {s}"
        return f"rank {r} {doing} (died, hung or slow: no heartbeat to tell)"
    if r not in silent:
        return None
    quiet = f"no heartbeat for {silent[r]:.0f} s"
    if s is None:
        return f"rank {r} died or stopped responding before this step ({quiet})"
    return f"rank {r} died or stopped responding while {s} ({quiet})"


def diagnose(step: str, world_size: int, me: int, cause: BaseException) -> str:
    """Explain a failed step from the other ranks' statuses and heartbeats.

    Waits (at most the heartbeat timeout) until each peer has posted how the step ended or
    has fallen silent, so the blame goes to the rank that failed, died or hung, never to
    a survivor that only saw the broken connection.
    """
    store, beat = _store(), heartbeat.current()
    peers = [r for r in range(world_size) if r != me]
    silent = dict(cause.silent) if isinstance(cause, PeersSilent) else {}
    deadline = time.monotonic() + (beat.timeout + 2 * beat.interval if beat else 0.0)
    if beat is not None:
        beat.silent(peers)  # start timing the peers now (if not yet)
    while True:
        statuses = {r: _status(store, f"{step}/{r}") for r in peers}
        if beat is not None:
            silent.update(beat.silent(peers))
        settled = all(s is not None and (s in ("ok", "unreachable") or s.startswith(
            ("failed:", "broken:"))) or r in silent for r, s in statuses.items())
        if settled or time.monotonic() >= deadline:
            break
        time.sleep(heartbeat.POLL)
    problems = [p for r in peers
                if (p := _describe(r, statuses[r], silent, beat is not None)) is not None]
    reason = str(cause).split(". This is")[0][:160] or type(cause).__name__
    return ("; ".join(problems) or "a peer failed") + f" [rank {me} saw: {reason}]"


def checked(what: str, file: str | os.PathLike[str], step: Callable[[], T],
            collective: bool = False) -> T:
    """Run ``step`` on every rank; return its result only if every rank succeeded.

    Args:
        what: verb for the status, e.g. ``"reading"``.
        file: the file the step works on (named in errors).
        step: the work; may itself run collectives (through ``talking``) when
            ``collective`` is True.
        collective: a rank whose step fails then tears the group down, so peers blocked
            in the step's collectives fail at once instead of waiting for the timeout;
            the step is watched with the heartbeats, so a hung peer is noticed too.

    Raises:
        DistributedError: on every rank, naming the failing rank(s) and the file.
    """
    file = os.fspath(file)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return step()
    rank, size = dist.get_rank(), dist.get_world_size()
    key = f"mlmf/{next(_STEPS)}"
    beat = heartbeat.current()
    if beat is None:  # a group started without setup() or launch(): beat from here on
        start_heartbeat()
        beat = heartbeat.current()
    _post(f"{key}/{rank}", f"{what} {file}")
    result: Any = None
    local: BaseException | None = None
    try:
        result = heartbeat.watch(step, beat) if collective else step()
        status = "ok"
    except (PeerLost, PeersSilent) as e:  # a peer's doing: blame nobody here
        local, status = e, f"broken: {str(e).split('. This is')[0][:160]}"
    except Exception as e:  # noqa: BLE001  (every rank must hear of it, then it is re-raised)
        local, status = e, f"failed: {type(e).__name__}: {e}"
    _post(f"{key}/{rank}", status)
    if local is not None and collective:
        message = (f"rank {rank} {status}" if status.startswith("failed:")
                   else diagnose(key, size, rank, local))
        teardown()
        raise DistributedError(message, file) from local
    statuses: list[Any] = [None] * size
    try:
        heartbeat.watch(lambda: talking(dist.all_gather_object, statuses, status), beat)
    except (PeerLost, PeersSilent, ValueError) as e:
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


__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_TIMEOUT", "PeerLost", "check_heartbeat", "checked",
           "diagnose", "setup", "start_heartbeat", "talking", "teardown", "use_store", "world"]
