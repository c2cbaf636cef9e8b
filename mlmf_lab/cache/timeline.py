"""A cache's event log made small enough to redraw ten times a second.

``CacheView`` and anything else that draws a live cache show three things: the bytes held
over time against the budget, the hits, misses and evictions as marks on a timeline, and
the entries with when each was last used. The event log may hold 100,000 events; these
functions bound what is drawn (``max_points`` samples, ``max_marks`` marks) so the page
gets a few KB per update whatever the log's length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .stats import CacheEvent, CacheStats

MARKS = ("hit", "miss", "evict")  # what the timeline shows as marks
USES = ("hit", "load", "put")  # events that count as using an entry


def held_series(events: Sequence[CacheEvent], max_points: int = 240) -> list[list[float]]:
    """``[time, bytes held]`` after each event, at most ``max_points`` of them.

    Past ``max_points`` events, consecutive events share a bucket that keeps its last time
    and its **largest** held value: a short peak near the budget stays visible.

    Example:
        >>> ev = [CacheEvent(float(t), "load", "k", 1, h) for t, h in enumerate([1, 5, 2, 3])]
        >>> held_series(ev, 2)
        [[1.0, 5.0], [3.0, 3.0]]
    """
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, found {max_points}")
    step = max(1, math.ceil(len(events) / max_points))
    out = []
    for start in range(0, len(events), step):
        bucket = events[start: start + step]
        out.append([float(bucket[-1].time), float(max(e.held for e in bucket))])
    return out


def event_marks(events: Sequence[CacheEvent], max_marks: int = 400) -> list[list[Any]]:
    """The latest ``max_marks`` hits, misses and evictions as ``[time, event, key, reason]``."""
    marks = [e for e in events if e.event in MARKS]
    return [[float(e.time), e.event, e.key, e.reason] for e in marks[-max_marks:]]


def last_uses(events: Sequence[CacheEvent]) -> dict[str, float]:
    """key -> time of its latest hit, load or put (the cache's clock)."""
    return {e.key: float(e.time) for e in events if e.event in USES}


def cache_view_state(stats: CacheStats, rows: Sequence[Mapping[str, Any]],
                     max_points: int = 240, max_marks: int = 400) -> dict[str, Any]:
    """Everything a live cache view draws, as JSON data from one snapshot.

    Args:
        stats: ``cache.stats()``.
        rows: ``cache.rows()``: one dict per entry (``key``, ``bytes``, ``pinned``, ``hits``).

    Returns:
        ``budget``, ``held``, ``counts`` (lookups, hits, misses, loads, evictions by reason),
        ``series`` (``held_series``), ``marks`` (``event_marks``), ``now`` (time of the last
        event) and ``entries`` (each row with ``last_use``, None if never used).
    """
    used = last_uses(stats.events)
    counts = {"lookups": stats.lookups, "hits": stats.hits, "misses": stats.misses,
              "loads": stats.loads, "evictions": stats.evictions_total,
              **{f"evicted_{k}": v for k, v in stats.evictions.items()}}
    entries = [{"key": str(r["key"]), "name": str(r.get("name", r["key"])),
                "bytes": int(r["bytes"]), "hits": int(r["hits"]), "pinned": bool(r["pinned"]),
                "last_use": used.get(str(r["key"]))} for r in rows]
    return {"budget": stats.max_bytes, "held": stats.bytes_held, "counts": counts,
            "series": held_series(stats.events, max_points),
            "marks": event_marks(stats.events, max_marks),
            "now": float(stats.events[-1].time) if stats.events else 0.0,
            "entries": entries}


__all__ = ["cache_view_state", "event_marks", "held_series", "last_uses"]
