"""An in-memory model cache whose byte budget is never exceeded.

>>> cache = ml.ModelCache("2GiB", ttl=3600, min_available_memory="1GiB")  # doctest: +SKIP
>>> sd = cache.get_or_load("model.safetensors")  # miss: loads with ml.load_state_dict
>>> sd = cache.get_or_load("model.safetensors")  # hit: the same dict, no I/O

Sizes are measured (``mlmf_lab.cache.footprint.measure``), never guessed: each storage is counted
once, whether it sits in anonymous memory or is memory-mapped from the file. **Both count
against the budget**: the budget bounds the bytes the cache keeps alive, and a memory-mapped
state dict pins its file's pages in the page cache as soon as it is used. ``stats()``
reports the two apart.

Rules: least recently used goes first; pinned entries are never evicted (not by the
budget, nor by TTL, nor by memory pressure; only ``evict``/``clear`` remove them); when
available memory (psutil) drops below ``min_available_memory``, unpinned entries are
evicted in LRU order until it recovers. A file's key includes its ``files.file_stamp``, so a
changed file is reloaded (to check the bytes instead, key by ``derive_key(..., content=True)``).
Every method is thread-safe; loads run outside the lock, and two threads asking for the same
missing key load it once.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import CacheError, ConfigError, MLMFError
from ..files import Stamp, file_stamp
from ..progress import Progress
from ..tables import Table
from ..units import human_bytes, parse_size
from .entry import Entry, Pending, does_not_fit
from .eventlog import EventLog
from .footprint import Footprint, available_bytes, measure
from .keys import Ident, find_entry, identify
from .ledger import Ledger
from .stats import EVICTION_REASONS, CacheEvent, CacheStats, entries_table, entry_row
from .subscribers import Subscribers
from .warmup import WarmUp


def _load_file(path: Any) -> Any:
    from ..formats import load_state_dict

    return load_state_dict(path)


class ModelCache:
    """A thread-safe LRU cache of loaded models under a byte budget.

    Args:
        max_bytes: the budget, e.g. ``2**30`` or ``"1GiB"``; bytes held never exceed it.
        ttl: seconds an unpinned entry may stay after it was loaded; None = forever.
        min_available_memory: evict (LRU, unpinned) while the system's available memory is
            below this, e.g. ``"1GiB"``; None = ignore memory pressure.
        available_memory: function returning available bytes (default: psutil's); tests
            inject their own.
        clock: monotonic seconds, for TTL and the event log (default ``time.monotonic``).
        max_events: the event log keeps the latest this many events.

    Raises:
        ConfigError: a budget, TTL or threshold that is not a positive number.
    """

    PRESSURE_INTERVAL = 0.25  # seconds between memory readings on the lookup path

    def __init__(
        self,
        max_bytes: int | str,
        ttl: float | None = None,
        min_available_memory: int | str | None = None,
        *,
        available_memory: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_events: int = 100_000,
    ) -> None:
        self.max_bytes = parse_size(max_bytes, "max_bytes")
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"ttl must be a positive number of seconds or None, found {ttl!r}")
        self.ttl = ttl
        self.min_available_memory = (None if min_available_memory is None else
                                     parse_size(min_available_memory, "min_available_memory"))
        self._available = available_memory or available_bytes
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.RLock()
        self._ledger = Ledger()  # the entries, LRU first, and the bytes they hold
        self._pending: dict[tuple[Ident, Stamp], Pending] = {}
        self._events = EventLog(max_events)  # plain tuples; records when read
        self._next_pressure_check = self._t0
        self._counts = dict.fromkeys(("lookups", "hits", "misses", "loads", "load_errors",
                                      "puts"), 0)
        self._evictions = dict.fromkeys(EVICTION_REASONS, 0)
        self._abspaths: dict[str, str] = {}
        self._subscribers = Subscribers()
        self._load_seconds = self._saved_seconds = 0.0

    # -- keys ---------------------------------------------------------------------------
    def _identify(self, key: Any, must_be_file: bool = False) -> tuple[Ident, Stamp, str]:
        return identify(key, must_be_file, self._ledger.entries, self._abspaths)

    # -- the lookup path ----------------------------------------------------------------
    def get_or_load(
        self, path_or_key: Any, loader: Callable[[Any], Any] | None = None, *,
        uncached_ok: bool = False,
    ) -> Any:
        """The cached value for a file or key, loading it on a miss.

        Args:
            path_or_key: a weight file or folder (keyed by path and ``file_stamp``), or
                any hashable key.
            loader: called as ``loader(path_or_key)`` on a miss; default ``ml.load_state_dict``
                (files only).
            uncached_ok: when the loaded value cannot fit the budget, return it without
                caching instead of raising.

        Returns:
            The value (the same object on every hit).

        Raises:
            CacheError: the value is larger than the budget (or than what pinned entries
                leave free) and ``uncached_ok`` is False; or no loader for a non-file key.
            Exception: whatever the loader raises (every waiting thread gets it too).
        """
        ident, stamp, label = self._identify(path_or_key, must_be_file=loader is None)
        with self._lock:
            entry = self._lookup(ident, stamp, label)
            if entry is not None:
                return entry.value
            pending = self._pending.get((ident, stamp))
            owner = pending is None
            if pending is None:
                pending = self._pending[(ident, stamp)] = Pending()
        if not owner:
            return pending.wait()
        load = loader if loader is not None else _load_file
        try:
            start = time.perf_counter()
            try:
                value = load(path_or_key)
            except BaseException:
                with self._lock:
                    self._counts["load_errors"] += 1
                raise
            seconds = time.perf_counter() - start
            size = measure(value)
            with self._lock:
                self._counts["loads"] += 1
                self._load_seconds += seconds
                self._store(ident, stamp, label, value, size, seconds, uncached_ok, "load")
            pending.value = value
            return value
        except BaseException as e:
            pending.error = e
            raise
        finally:
            with self._lock:
                del self._pending[(ident, stamp)]
            pending.done.set()

    def get(self, path_or_key: Any, default: Any = None) -> Any:
        """The cached value, or ``default`` on a miss (counted as a lookup either way)."""
        ident, stamp, label = self._identify(path_or_key)
        with self._lock:
            entry = self._lookup(ident, stamp, label)
            return default if entry is None else entry.value

    def _lookup(self, ident: Ident, stamp: Stamp, label: str) -> Entry | None:
        """Count a lookup; a hit refreshes recency, an expired or stale entry is dropped."""
        now = self._clock()
        if self.min_available_memory is not None and now >= self._next_pressure_check:
            self._relieve_pressure()
        counts = self._counts
        counts["lookups"] += 1
        entry = self._ledger.entries.get(ident)
        if entry is not None:
            if entry.stamp != stamp:
                self._drop(ident, "stale")
                entry = None
            elif self.ttl is not None and self._expired(entry, now):
                self._drop(ident, "ttl")
                entry = None
        if entry is None:
            counts["misses"] += 1
            self._log("miss", label, 0, now=now)
            return None
        self._ledger.entries.move_to_end(ident)
        entry.hits += 1
        counts["hits"] += 1
        self._saved_seconds += entry.load_seconds
        self._log("hit", label, entry.nbytes, now=now)
        return entry

    # -- storing ------------------------------------------------------------------------
    def put(self, path_or_key: Any, value: Any, *, pin: bool = False,
            uncached_ok: bool = False) -> Footprint:
        """Store a value (replacing any entry under the same key); returns its measured size.

        Raises:
            CacheError: as in ``get_or_load`` when it cannot fit and ``uncached_ok`` is False.
        """
        ident, stamp, label = self._identify(path_or_key)
        size = measure(value)
        with self._lock:
            self._counts["puts"] += 1
            self._store(ident, stamp, label, value, size, 0.0, uncached_ok, "put", pin)
        return size

    def _store(self, ident: Ident, stamp: Stamp, label: str, value: Any, size: Footprint,
               seconds: float, uncached_ok: bool, event: str, pin: bool = False) -> bool:
        """Under the lock: expire, make room (LRU, unpinned), insert, log ``event``, pin.

        Returns False when the value was served uncached (logged as ``uncached``); a refusal
        is logged as ``refused`` and raised.
        """
        old = self._ledger.entries.get(ident)
        if old is not None:  # a newer value for the same key replaces the old one
            self._drop(ident, "stale" if old.stamp != stamp else "manual")
        self.expire()
        free_at_most = self.max_bytes - self._ledger.pinned_bytes
        if size.total > free_at_most:
            self._log("uncached" if uncached_ok else "refused", label, size.total)
            if uncached_ok:
                return False
            why = does_not_fit(label, size, self.max_bytes, self._ledger.pinned_bytes)
            raise CacheError(why + "; raise max_bytes, or pass uncached_ok=True to get the "
                             "value without caching it")
        ledger = self._ledger
        while ledger.held + size.total > self.max_bytes and (lru := ledger.lru_unpinned()):
            self._drop(lru, "budget")
        entry = Entry(label, value, size, stamp, self._clock(), seconds)
        ledger.add(ident, entry)
        assert ledger.held <= self.max_bytes, "budget invariant"
        self._log(event, label, size.total)
        if pin:  # before relieving pressure, which could evict the new entry first
            self._pin(entry)
        if self.min_available_memory is not None:
            self._relieve_pressure()
        return True

    def _drop(self, ident: Ident, reason: str) -> None:
        entry = self._ledger.pop(ident)
        self._evictions[reason] += 1
        self._log("evict", entry.label, entry.size.total, reason)

    def _expired(self, entry: Entry, now: float) -> bool:
        return self.ttl is not None and not entry.pinned and now - entry.loaded_at >= self.ttl

    def _log(self, event: str, label: str, nbytes: int, reason: str = "",
             now: float | None = None) -> None:
        now = self._clock() if now is None else now
        record = (now - self._t0, event, label, nbytes, self._ledger.held, reason)
        self._events.append(record)
        if self._subscribers:
            self._subscribers.publish(CacheEvent._make(record))

    # -- eviction by policy ---------------------------------------------------------------
    def expire(self) -> int:
        """Drop every unpinned entry older than the TTL; returns how many were dropped."""
        with self._lock:
            if self.ttl is None:
                return 0
            now = self._clock()
            old = [k for k, e in self._ledger.entries.items() if self._expired(e, now)]
            for k in old:
                self._drop(k, "ttl")
            return len(old)

    def check_memory(self) -> int:
        """Evict unpinned entries (LRU first) while available memory is below the threshold.

        Returns:
            How many entries were evicted (0 without ``min_available_memory``).
        """
        with self._lock:
            return self._relieve_pressure() if self.min_available_memory is not None else 0

    def _relieve_pressure(self) -> int:
        assert self.min_available_memory is not None
        self._next_pressure_check = self._clock() + self.PRESSURE_INTERVAL
        evicted = 0
        while self._available() < self.min_available_memory:
            if (ident := self._ledger.lru_unpinned()) is None:
                break
            self._drop(ident, "memory")
            evicted += 1
        return evicted

    # -- explicit control ---------------------------------------------------------------
    def _entry(self, path_or_key: Any) -> tuple[Ident, Entry]:
        return find_entry(self._ledger.entries, path_or_key)

    def pin(self, path_or_key: Any) -> None:
        """Keep an entry whatever happens (budget, TTL, memory pressure) until ``unpin``."""
        with self._lock:
            self._pin(self._entry(path_or_key)[1])

    def _pin(self, entry: Entry) -> None:
        if self._ledger.pin(entry):
            self._log("pin", entry.label, entry.size.total)

    def unpin(self, path_or_key: Any) -> None:
        """Make a pinned entry evictable again."""
        with self._lock:
            _, entry = self._entry(path_or_key)
            if self._ledger.unpin(entry):
                self._log("unpin", entry.label, entry.size.total)

    def evict(self, path_or_key: Any) -> bool:
        """Remove an entry (pinned or not); False when it was not cached."""
        with self._lock:
            try:
                ident, _ = self._entry(path_or_key)
            except CacheError:
                return False
            self._drop(ident, "manual")
            return True

    def clear(self) -> None:
        """Remove every entry, pinned ones included (counted as manual evictions)."""
        with self._lock:
            for ident in list(self._ledger.entries):
                self._drop(ident, "manual")

    # -- warm-up ------------------------------------------------------------------------
    def warm(self, paths: Iterable[Any], loader: Callable[[Any], Any] | None = None, *,
             progress: Progress = True) -> WarmUp:
        """Load ``paths`` into the cache in a background thread.

        Errors do not stop the warm-up; they are collected in ``WarmUp.errors``.
        ``progress``: a tqdm bar, none, or a function told ``(paths tried, paths)`` from
        the warm-up's thread.

        Returns:
            A ``WarmUp`` handle: ``.wait()`` blocks until every path was tried.
        """
        return WarmUp(functools.partial(self.get_or_load, loader=loader), list(paths),
                      progress)

    # -- views --------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[CacheEvent], None]) -> Callable[[], None]:
        """Tell ``callback`` every event as it is logged; returns the unsubscribe function.

        The callback runs in the thread that caused the event, under the cache's lock: keep
        it short (see ``mlmf_lab.cache.subscribers``).
        """
        return self._subscribers.add(callback)

    def stats(self) -> CacheStats:
        """A consistent snapshot of every counter and the event log (shared, not copied)."""
        with self._lock:
            entries = list(self._ledger.entries.values())
            return CacheStats(
                max_bytes=self.max_bytes, bytes_held=self._ledger.held,
                anonymous_bytes=sum(e.size.anonymous + e.size.device for e in entries),
                mapped_bytes=sum(e.size.mapped for e in entries),
                pinned_bytes=self._ledger.pinned_bytes, entries=len(entries),
                pinned=sum(e.pinned for e in entries), evictions=dict(self._evictions),
                load_seconds=self._load_seconds, saved_seconds=self._saved_seconds,
                events=self._events.snapshot(), **self._counts,
            )

    @property
    def bytes_held(self) -> int:
        return self._ledger.held

    def __len__(self) -> int:
        return len(self._ledger.entries)

    def __contains__(self, path_or_key: Any) -> bool:
        """True when cached and fresh (no lookup is counted)."""
        with self._lock:
            try:
                ident, entry = self._entry(path_or_key)
            except CacheError:
                return False
            kind, name = ident
            try:
                fresh = kind != "file" or entry.stamp == file_stamp(name)
            except MLMFError:  # the file is gone
                return False
            return fresh and not self._expired(entry, self._clock())

    def keys(self) -> list[str]:
        """Labels of the cached entries, least recently used first."""
        with self._lock:
            return [e.label for e in self._ledger.entries.values()]

    def __repr__(self) -> str:
        return (f"ModelCache({len(self)} entries, {human_bytes(self._ledger.held)} of "
                f"{human_bytes(self.max_bytes)})")

    def rows(self) -> list[dict[str, Any]]:
        """One row per entry, most recently used first: key, bytes by kind, pinned, hits."""
        with self._lock:
            return [entry_row(e) for e in reversed(self._ledger.entries.values())]

    def as_dict(self) -> dict[str, Any]:
        """The statistics and the entries as JSON data, taken together under the lock."""
        with self._lock:
            return {"stats": self.stats().as_dict(), "entries": self.rows()}

    def table(self) -> Table:
        with self._lock:
            return entries_table(self.rows(), self.stats())

    def _repr_html_(self) -> str:
        return self.table().html()


__all__ = ["ModelCache"]
