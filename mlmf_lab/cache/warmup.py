"""Background warm-up of a model cache: load a list of files in a thread, with progress."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..progress import bar

if TYPE_CHECKING:
    from .memory import ModelCache


class WarmUp:
    """A background warm-up of a ``ModelCache``; see ``ModelCache.warm``."""

    _ids = itertools.count()

    def __init__(self, cache: ModelCache, paths: list[Any],
                 loader: Callable[[Any], Any] | None, progress: bool) -> None:
        self.paths = paths
        self.errors: dict[str, BaseException] = {}
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(cache, loader, progress),
                                        name=f"mlmf-warm-{next(self._ids)}", daemon=True)
        self._thread.start()

    def _run(self, cache: ModelCache, loader: Callable[[Any], Any] | None,
             progress: bool) -> None:

        start = time.perf_counter()
        for p in bar(self.paths, desc="warming cache", unit="model", hide=not progress):
            try:
                cache.get_or_load(p, loader)
            except Exception as e:  # collected for the caller; one bad file must not stop the rest
                self.errors[str(p)] = e
        self.seconds = time.perf_counter() - start

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> WarmUp:
        """Block until the warm-up finished (or ``timeout`` seconds passed); returns self."""
        self._thread.join(timeout)
        return self


__all__ = ["WarmUp"]
