"""CacheView: a model cache live: bytes against the budget, hits and misses, its entries.

>>> view = ml.views.CacheView(cache)          # doctest: +SKIP
>>> cache.warm(paths)                          # the view follows the warm-up as it loads

Push, not polling: the view subscribes to the cache (``ModelCache.subscribe``). Each event
only marks the view dirty; a timer thread sends one snapshot (``cache_view_state``) at most
``max_rate`` times a second, so a burst of 10,000 hits costs the page ten updates. Synced
state may be set from that thread (ipykernel sends comm messages from any thread); nothing
here writes to an Output widget. The page's pin/unpin/evict buttons come back as messages
and act on the Python cache, whose events then redraw the page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import traitlets as t

from ..cache.memory import ModelCache
from ..cache.timeline import cache_view_state
from ..errors import CacheError, MLMFError
from .base import View

ACTIONS: dict[str, Callable[[ModelCache, str], Any]] = {
    "pin": ModelCache.pin, "unpin": ModelCache.unpin, "evict": ModelCache.evict,
}


class Throttle:
    """Run ``action`` at most once per ``interval`` seconds after ``poke``, in a timer thread.

    ``poke`` never blocks and never runs ``action`` itself (it is called under the cache's
    lock); pokes that arrive while a run is scheduled are folded into it.
    """

    def __init__(self, interval: float, action: Callable[[], None]) -> None:
        self.interval = interval
        self._action = action
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last = 0.0
        self.runs = 0

    def poke(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            delay = max(0.0, self._last + self.interval - time.monotonic())
            self._timer = threading.Timer(delay, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self.runs += 1
        self._action()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class CacheView(View):
    """The live view of a ``ModelCache`` (see the module docstring).

    Args:
        cache: the ``ml.ModelCache`` to follow.
        max_rate: at most this many updates per second reach the page.
        max_points, max_marks: how much of the event log is drawn.

    Raises:
        ConfigError-like ``MLMFError``: ``cache`` is not a ``ModelCache``, or ``max_rate`` <= 0.
    """

    view_name = "cache"

    state = t.Dict().tag(sync=True)
    title = t.Unicode("model cache").tag(sync=True)
    error = t.Unicode("").tag(sync=True)  # the last refused button action, shown in the page

    def __init__(self, cache: ModelCache, *, max_rate: float = 10.0, max_points: int = 240,
                 max_marks: int = 400, title: str = "model cache") -> None:
        if not isinstance(cache, ModelCache):
            raise MLMFError(f"CacheView follows an ml.ModelCache, found {type(cache).__name__}")
        if not max_rate > 0:
            raise MLMFError(f"max_rate must be a positive number of updates per second, "
                            f"found {max_rate!r}")
        self.cache = cache
        self._limits = (max_points, max_marks)
        super().__init__(title=title, state=self.snapshot())
        self._throttle = Throttle(1.0 / max_rate, self.refresh)
        self._unsubscribe = cache.subscribe(lambda _event: self._throttle.poke())
        self.on_msg(self._on_action)

    def snapshot(self) -> dict[str, Any]:
        """What the page draws, taken from the cache now."""
        stats = self.cache.stats()
        return cache_view_state(stats, self.cache.rows(), *self._limits)

    def refresh(self) -> None:
        """Send a fresh snapshot to the page (the throttle calls this; so may you)."""
        self.state = self.snapshot()

    def act(self, action: str, key: str) -> None:
        """Do what a button asks: ``pin``, ``unpin`` or ``evict`` the entry ``key``.

        Raises:
            CacheError: an unknown action, or a key that is not cached.
        """
        if action not in ACTIONS:
            raise CacheError(f"unknown cache action {action!r}; supported: "
                             f"{', '.join(ACTIONS)}")
        if action == "evict" and key not in {e["key"] for e in self.cache.rows()}:
            raise CacheError(f"{key!r} is not in the cache")
        ACTIONS[action](self.cache, key)

    def _on_action(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        try:
            self.act(str(content.get("action")), str(content.get("key")))
            self.error = ""
        except MLMFError as e:
            self.error = str(e)
        self.refresh()

    def close(self) -> None:
        """Stop following the cache and close the widget."""
        if hasattr(self, "_unsubscribe"):
            self._unsubscribe()
            self._throttle.cancel()
        super().close()

    def __repr__(self) -> str:
        return f"CacheView({self.cache!r}, live)"

    def _fallback_figure(self) -> Any:
        from ..plots.cache import plot_cache_timeline

        return plot_cache_timeline(self.cache.stats(), x="event")


__all__ = ["CacheView", "Throttle"]
