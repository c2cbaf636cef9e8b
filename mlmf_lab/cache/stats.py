"""Records of the model cache: its event log and its statistics, with their HTML tables."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..units import human_bytes
from .footprint import Footprint

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
    events: tuple[CacheEvent, ...] = field(repr=False, default=())

    @property
    def hit_ratio(self) -> float:
        """hits / lookups (0.0 before the first lookup)."""
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def evictions_total(self) -> int:
        return sum(self.evictions.values())

    def _repr_html_(self) -> str:
        ev = ", ".join(f"{r} {n}" for r, n in self.evictions.items() if n) or "none"
        rows = [
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
        return html_table(("", ""), rows, "cache statistics")


def entries_html(rows: Sequence[tuple[str, Footprint, bool, int]], stats: CacheStats) -> str:
    """The cache as a table: (label, size, pinned, hits) rows, most recently used first."""
    cells = [(os.path.basename(label) or label, human_bytes(size.total),
              human_bytes(size.anonymous + size.device), human_bytes(size.mapped),
              "yes" if pinned else "", str(hits)) for label, size, pinned, hits in rows]
    caption = (f"ModelCache: {human_bytes(stats.bytes_held)} of {human_bytes(stats.max_bytes)}, "
               f"{stats.hits} hits / {stats.misses} misses, evictions: "
               f"{stats.evictions_total} (most recently used first)")
    return html_table(("entry", "bytes", "anonymous", "memory-mapped", "pinned", "hits"),
                      cells, caption)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str) -> str:
    """A small escaped HTML table (shared by the cache, its statistics and the disk tier)."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in r)
        + "</tr>" for r in rows
    )
    return (f"<table><caption style='text-align:left'><b>{html.escape(caption)}</b></caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


__all__ = ["EVENTS", "EVICTION_REASONS", "CacheEvent", "CacheStats", "entries_html", "html_table"]
