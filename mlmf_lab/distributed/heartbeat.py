"""Heartbeats: tell a rank that is hung or dead from one that is only slow.

Each rank posts a counter to the process group's key-value store every ``timeout / 10``
seconds from a daemon thread. A rank that waits for its peers (``watch``) or explains a
failure (``runtime.diagnose``) reads their counters: a counter that has not moved for
``timeout`` seconds of the reader's own clock belongs to a rank that is stopped (SIGSTOP,
a debugger), dead, or has held the GIL that long. Only the reader's clock is used, so
hosts need not agree on the time.

Why not the process group's timeout: gloo notices a peer that closed its sockets at once,
but a peer that is alive and silent only when the collective times out (60 s by default),
and a timed wait on gloo work closes the connection, so it cannot be polled. ``watch``
therefore runs the collective in a helper thread and polls the heartbeats; when a peer
falls silent it raises at once and leaves that thread to gloo's own timeout (the process
group is torn down and not used again).

The store must outlive a hung rank: ``ml.distributed.launch`` hosts it in the parent and
torchrun in its agent; a store served by rank 0 itself (``env://`` without torchrun) stops
answering when rank 0 is stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")
DEFAULT_HEARTBEAT = 5.0  # seconds of silence after which a rank counts as hung or dead
POLL = 0.2  # seconds between heartbeat readings while waiting


class PeersSilent(Exception):  # noqa: N818 - internal signal, turned into a DistributedError
    """Raised by ``watch``: these ranks went silent (rank -> seconds without a heartbeat)."""

    def __init__(self, silent: dict[int, float]) -> None:
        super().__init__("; ".join(f"no heartbeat from rank {r} for {s:.0f} s"
                                   for r, s in silent.items()))
        self.silent = silent


class Heartbeat:
    """This rank's heartbeat, and what it has seen of its peers' (see the module docstring).

    Args:
        store: the process group's store (``dist.Store``).
        rank, world_size: this rank and the group's size.
        timeout: seconds of silence after which a peer counts as hung or dead.
    """

    def __init__(self, store: dist.Store, rank: int, world_size: int,
                 timeout: float = DEFAULT_HEARTBEAT) -> None:
        if not timeout > 0:
            raise ValueError(f"the heartbeat timeout must be positive, found {timeout!r}")
        self.store, self.rank, self.world_size, self.timeout = store, rank, world_size, timeout
        self.interval = timeout / 10
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mlmf-heartbeat")
        self._seen: dict[int, tuple[Any, float]] = {}  # peer -> (counter, when it last moved)
        self._lock = threading.Lock()

    def start(self) -> Heartbeat:
        self._post(0)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _post(self, n: int) -> bool:
        try:
            self.store.set(f"mlmf/beat/{self.rank}", str(n))
        except Exception:  # noqa: BLE001 - the store is gone: the run is over
            return False
        return True

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            if not self._post(n):
                return

    def _read(self, rank: int) -> Any:
        key = f"mlmf/beat/{rank}"
        try:
            return self.store.get(key) if self.store.check([key]) else None
        except Exception:  # noqa: BLE001 - an unreadable store says nothing of the rank
            return "unreadable"

    def silent(self, ranks: list[int] | None = None) -> dict[int, float]:
        """Peers (of ``ranks``, default all) silent for at least ``timeout`` seconds.

        A peer is timed from the first reading this process made of it, so the first call
        never reports one; call it again while waiting.
        """
        now = time.monotonic()
        out: dict[int, float] = {}
        peers = [r for r in (range(self.world_size) if ranks is None else ranks)
                 if r != self.rank]
        with self._lock:
            for r in peers:
                value = self._read(r)
                last = self._seen.get(r)
                if last is None or last[0] != value:
                    self._seen[r] = (value, now)
                elif now - last[1] >= self.timeout:
                    out[r] = now - last[1]
        return out


_BEAT: list[Heartbeat] = []  # this process's running heartbeat, if any


def start(store: dist.Store, rank: int, world_size: int, timeout: float) -> Heartbeat:
    """Start this process's heartbeat (replacing a previous one)."""
    stop()
    _BEAT.append(Heartbeat(store, rank, world_size, timeout).start())
    return _BEAT[0]


def stop() -> None:
    while _BEAT:
        _BEAT.pop().stop()


def current() -> Heartbeat | None:
    return _BEAT[0] if _BEAT else None


def watch(fn: Callable[[], T], beat: Heartbeat | None) -> T:
    """``fn()``, run in a helper thread while the peers' heartbeats are read.

    Raises:
        PeersSilent: a peer went silent before ``fn`` returned (``fn``'s thread is left
            blocked; the caller tears the process group down).
        Exception: whatever ``fn`` raised.
    """
    if beat is None:
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="mlmf-collective").start()
    beat.silent()  # the first reading: peers are timed from here
    while not done.wait(POLL):
        silent = beat.silent()
        if silent:
            raise PeersSilent(silent)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


__all__ = ["DEFAULT_HEARTBEAT", "Heartbeat", "PeersSilent", "current", "start", "stop",
           "watch"]
