"""ModelCache's entries in recency order and the bytes they hold, kept exact together."""

from __future__ import annotations

from collections import OrderedDict

from .entry import Entry
from .keys import Ident


class Ledger:
    """The cached entries, least recently used first, with their byte totals.

    ``held`` is the sum of every entry's size and ``pinned_bytes`` that of the pinned ones.
    Entries are added, removed, pinned and unpinned only through these methods, so both
    sums stay exact without ever being recounted. Not locked: ``ModelCache`` calls it
    under its own lock.

    >>> from mlmf_lab.cache.footprint import Footprint
    >>> ledger = Ledger()
    >>> ledger.add(("key", "a"), Entry("a", None, Footprint(100, 0, 0), (), 0.0, 0.0))
    >>> ledger.pin(ledger.entries["key", "a"]), ledger.held, ledger.pinned_bytes
    (True, 100, 100)
    >>> ledger.lru_unpinned() is None, ledger.pop(("key", "a")).label, ledger.held
    (True, 'a', 0)
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[Ident, Entry] = OrderedDict()
        self.held = 0
        self.pinned_bytes = 0

    def add(self, ident: Ident, entry: Entry) -> None:
        """Insert ``entry`` as the most recently used (its key must be free)."""
        assert ident not in self.entries, "replace by pop, then add"
        self.entries[ident] = entry
        self.held += entry.nbytes
        if entry.pinned:
            self.pinned_bytes += entry.nbytes

    def pop(self, ident: Ident) -> Entry:
        entry = self.entries.pop(ident)
        self.held -= entry.nbytes
        if entry.pinned:
            self.pinned_bytes -= entry.nbytes
        return entry

    def pin(self, entry: Entry) -> bool:
        """Pin ``entry``; False when it was pinned already."""
        if entry.pinned:
            return False
        entry.pinned = True
        self.pinned_bytes += entry.nbytes
        return True

    def unpin(self, entry: Entry) -> bool:
        """Unpin ``entry``; False when it was not pinned."""
        if not entry.pinned:
            return False
        entry.pinned = False
        self.pinned_bytes -= entry.nbytes
        return True

    def lru_unpinned(self) -> Ident | None:
        """The least recently used entry that may be evicted, if any."""
        return next((k for k, e in self.entries.items() if not e.pinned), None)


__all__ = ["Ledger"]
