"""Who hears a model cache's events as they happen: push, not polling.

``ModelCache.subscribe(callback)`` adds a callback that is told every ``CacheEvent`` (hit,
miss, load, evict, pin, ...) right after it is logged. A view marks itself dirty there and
redraws later, at its own pace; nothing is sent anywhere from inside the cache.

Callbacks run in the thread that caused the event (a warm-up's thread, say) while the cache
holds its lock, so they must be short and must not wait for another thread that uses the
cache. One that raises is dropped with a warning: a broken listener never breaks a load.
With no subscriber, publishing costs one truth test.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

from .stats import CacheEvent

Callback = Callable[[CacheEvent], None]


class Subscribers:
    """A thread-safe list of callbacks told each event (see the module docstring)."""

    def __init__(self) -> None:
        self._callbacks: tuple[Callback, ...] = ()  # replaced, never mutated: safe to iterate
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def __len__(self) -> int:
        return len(self._callbacks)

    def add(self, callback: Callback) -> Callable[[], None]:
        """Start telling ``callback`` every event; returns the function that stops it."""
        if not callable(callback):
            raise TypeError(f"a cache subscriber must be callable, found "
                            f"{type(callback).__name__}")
        with self._lock:
            self._callbacks = (*self._callbacks, callback)
        return lambda: self.remove(callback)

    def remove(self, callback: Callback) -> None:
        """Stop telling ``callback`` (no error when it was not subscribed)."""
        with self._lock:
            self._callbacks = tuple(c for c in self._callbacks if c is not callback)

    def publish(self, event: CacheEvent) -> None:
        """Tell every callback; one that raises is removed and a warning names it."""
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception as e:  # a listener's bug must not fail the cache operation
                self.remove(callback)
                warnings.warn(f"cache subscriber {callback!r} raised {e!r} and was removed",
                              RuntimeWarning, stacklevel=2)


__all__ = ["Callback", "Subscribers"]
