"""Records of the model cache: its event log and its statistics, and its entries' table."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..tables import Column, Table, fields_dict, fields_row
from ..units import human_bytes
from .entry import Entry

# Why an entry left the cache. "stale": its file changed on disk since it was loaded.
EVICTION_REASONS = ("budget", "ttl", "memory", "manual", "stale")
# What the event log records. "load" and "put" are logged once the value is stored (so
# ``held`` includes it); a loaded or put value that is not stored is "uncached" or "refused".
EVENTS = ("hit", "miss", "load", "put", "evict", "pin", "unpin", "uncached", "refused")


class CacheEvent(NamedTuple):
    """One line of the cache's event log.

    Attributes:
        time: seconds since the cache was created (its clock).
        event: one of ``EVENTS``.
        key: the entry's label (a file path or ``repr`` of the key).
        bytes: the entry's measured size.
        held: bytes the cache holds right after the event.
        reason: for ``evict``, one of ``EVICTION_REASONS``; for ``refused``, why.
    """

    time: float
    event: str
    key: str
    bytes: int
    held: int
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


@dataclass(frozen=True)
class CacheStats:
    """A consistent snapshot of a ``ModelCache``'s counters (taken under its lock).

    Invariants: ``hits + misses == lookups``; ``loads + load_errors <= misses`` (a lookup
    that waits for another thread's load of the same key is a miss that loads nothing);
    ``bytes_held <= max_bytes``; ``sum(evictions.values())`` is every entry that left.
    """

    max_bytes: int
    bytes_held: int
    anonymous_bytes: int
    mapped_bytes: int
    pinned_bytes: int
    entries: int
    pinned: int
    lookups: int
    hits: int
    misses: int
    loads: int
    load_errors: int
    puts: int
    evictions: Mapping[str, int]
    load_seconds: float
    saved_seconds: float
    # the log as it was at the snapshot (``eventlog.Events``: taking it copies nothing)
    events: Sequence[CacheEvent] = field(repr=False, default=())

    @property
    def hit_ratio(self) -> float:
        """hits / lookups (0.0 before the first lookup)."""
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def evictions_total(self) -> int:
        return sum(self.evictions.values())

    def as_dict(self) -> dict[str, Any]:
        """Every counter as JSON data, with ``hit_ratio``, ``evictions_total`` and the log."""
        return {**fields_dict(self, exclude=("events",)), "hit_ratio": self.hit_ratio,
                "evictions_total": self.evictions_total,
                "events": [e.as_dict() for e in self.events]}

    def rows(self) -> list[dict[str, Any]]:
        """The counters in words, one (statistic, value) row per line of the table."""
        ev = ", ".join(f"{r} {n}" for r, n in self.evictions.items() if n) or "none"
        lines = [
            ("held", f"{human_bytes(self.bytes_held)} of {human_bytes(self.max_bytes)} "
                     f"({human_bytes(self.anonymous_bytes)} anonymous, "
                     f"{human_bytes(self.mapped_bytes)} memory-mapped)"),
            ("entries", f"{self.entries} ({self.pinned} pinned, "
                        f"{human_bytes(self.pinned_bytes)})"),
            ("lookups", f"{self.lookups}: {self.hits} hits, {self.misses} misses "
                        f"(hit ratio {self.hit_ratio:.1%})"),
            ("loads", f"{self.loads} ({self.load_errors} failed), {self.puts} puts"),
            ("evictions", ev),
            ("load time", f"{self.load_seconds * 1e3:.1f} ms spent, "
                          f"{self.saved_seconds * 1e3:.1f} ms saved by hits"),
        ]
        return [{"statistic": k, "value": v} for k, v in lines]

    def table(self) -> Table:
        return Table([Column("statistic", ""), Column("value", "")], self.rows(),
                     title="cache statistics")

    def _repr_html_(self) -> str:
        return self.table().html()


def entry_row(entry: Entry) -> dict[str, Any]:
    """One cached entry as a table row: key, name, bytes by kind, pinned, hits."""
    size = entry.size
    return {"key": entry.label, "name": os.path.basename(entry.label) or entry.label,
            "bytes": size.total, "anonymous": size.anonymous + size.device,
            "mapped": size.mapped, "pinned": entry.pinned, "hits": entry.hits}


def entries_table(rows: Sequence[Mapping[str, Any]], stats: CacheStats) -> Table:
    """The cache's entries (``entry_row`` rows, most recently used first) under its totals."""
    title = (f"ModelCache: {human_bytes(stats.bytes_held)} of {human_bytes(stats.max_bytes)}, "
             f"{stats.hits} hits / {stats.misses} misses, evictions: "
             f"{stats.evictions_total} (most recently used first)")
    return Table([Column("name", "entry", code=True), Column("bytes", fmt="bytes"),
                  Column("anonymous", fmt="bytes"), Column("mapped", "memory-mapped", "bytes"),
                  Column("pinned", fmt=lambda pinned: "yes" if pinned else ""), Column("hits")],
                 rows, title=title)


__all__ = ["EVENTS", "EVICTION_REASONS", "CacheEvent", "CacheStats", "entries_table", "entry_row"]
