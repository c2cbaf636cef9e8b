"""Background warm-up of a model cache: load a list of files in a thread, with progress.

``WarmUp`` knows nothing of the cache: it calls the ``load`` it is given (``ModelCache.warm``
hands it ``get_or_load``) once per path and collects what fails.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from ..progress import Progress, bar


class WarmUp:
    """``load(path)`` for every path in a background thread; see ``ModelCache.warm``.

    Args:
        load: called once per path; whatever it raises is kept in ``errors``.
        paths: what to load, in order.
        progress: True for a tqdm bar, False for none, or a function ``(done, total)``.
    """

    _ids = itertools.count()

    def __init__(self, load: Callable[[Any], Any], paths: list[Any],
                 progress: Progress) -> None:
        self.paths = paths
        self.errors: dict[str, BaseException] = {}
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(load, progress),
                                        name=f"mlmf-warm-{next(self._ids)}", daemon=True)
        self._thread.start()

    def _run(self, load: Callable[[Any], Any], progress: Progress) -> None:

        start = time.perf_counter()
        for p in bar(self.paths, progress=progress, desc="warming cache", unit="model"):
            try:
                load(p)
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
