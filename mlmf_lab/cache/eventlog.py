"""The model cache's event log: appended on every lookup, read as a snapshot in O(1).

``ModelCache.stats()`` hands out the log with every snapshot, and a view asks for one ten
times a second. Copying 100,000 events into a tuple each time cost 300 ms. Here the log is
a list that is only ever appended to; a snapshot is that list plus the range it covered,
so events appended later lie past its end. Dropping the oldest events makes a new list
(once per quarter of ``max_events`` appends: about one copied reference per event), and a
snapshot keeps the list it was taken from, so it never changes.

>>> log = EventLog(max_events=3)
>>> for i in range(5):
...     log.append((float(i), "hit", "k", 0, 0, ""))
>>> [e.time for e in log.snapshot()]
[2.0, 3.0, 4.0]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, overload

from .stats import CacheEvent

Row = tuple[float, str, str, int, int, str]  # a CacheEvent's fields, as logged


class EventLog:
    """The latest ``max_events`` rows: ``append`` in O(1) amortized, ``snapshot`` in O(1)."""

    def __init__(self, max_events: int) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, found {max_events}")
        self.max_events = max_events
        self._limit = max_events + max(1, max_events // 4)  # rows held before a trim
        self._rows: list[Row] = []

    def append(self, row: Row) -> None:
        rows = self._rows
        rows.append(row)
        if len(rows) > self._limit:
            self._rows = rows[-self.max_events:]  # a new list: snapshots keep the old one

    def __len__(self) -> int:
        return min(len(self._rows), self.max_events)

    def snapshot(self) -> Events:
        """The log as it is now, as an immutable sequence of ``CacheEvent``."""
        n = len(self._rows)
        return Events(self._rows, max(0, n - self.max_events), n)


class Events(Sequence[CacheEvent]):
    """An immutable view of the event log at one moment; rows become records when read."""

    __slots__ = ("_rows", "_start", "_stop")

    def __init__(self, rows: list[Row], start: int, stop: int) -> None:
        self._rows, self._start, self._stop = rows, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, i: int) -> CacheEvent: ...
    @overload
    def __getitem__(self, i: slice) -> list[CacheEvent]: ...
    def __getitem__(self, i: int | slice) -> CacheEvent | list[CacheEvent]:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            rows = self._rows[self._start + start: self._start + stop: step] if step > 0 else [
                self._rows[self._start + j] for j in range(start, stop, step)]
            return list(map(CacheEvent._make, rows))
        j = i + len(self) if i < 0 else i
        if not 0 <= j < len(self):
            raise IndexError(f"event {i} of {len(self)}")
        return CacheEvent._make(self._rows[self._start + j])

    def __iter__(self) -> Iterator[CacheEvent]:
        return map(CacheEvent._make, islice(self._rows, self._start, self._stop))

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, Events | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other,
                                                                           strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash

    def __repr__(self) -> str:
        return f"<{len(self)} cache events>"


__all__ = ["EventLog", "Events", "Row"]
