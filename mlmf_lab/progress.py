"""``progress=``: a tqdm bar (True), nothing (False), or a function told ``(done, total)``.

Every long operation takes ``progress=`` and hands it to ``bar``, the one place that reads
it. A function is called with ``(0, total)`` first, then after each step with the work
done so far (items, or bytes where the operation counts bytes), from the thread doing the
work; a view or a log can follow it without tqdm.

tqdm reads ``TQDM_*`` environment variables as defaults only: an explicit ``disable=``, even
``False``, overrides ``TQDM_DISABLE``. ``bar`` passes ``disable`` only to hide a bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from .errors import ConfigError

Progress = bool | Callable[[int, int], Any]


class Reporter:
    """What ``bar`` returns for a function: iterates like tqdm and reports each step.

    Attributes:
        done: steps (or bytes) finished so far.
        total: what ``done`` reaches at the end.
    """

    def __init__(self, report: Callable[[int, int], Any], iterable: Iterable[Any] | None,
                 total: int) -> None:
        self._report, self._iterable = report, iterable
        self.done, self.total = 0, total
        report(0, total)

    def update(self, n: int = 1) -> None:
        """``n`` more steps done (tqdm's ``update``)."""
        self.done += n
        self._report(self.done, self.total)

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterable or ():
            yield item
            self.update()  # once the caller finished with the item, as tqdm counts

    def close(self) -> None:
        """Nothing to release (tqdm's ``close``)."""

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def bar(iterable: Iterable[Any] | None = None, *, progress: Progress = True,
        total: int | None = None, min_total: int = 0, **kwargs: Any) -> Any:
    """Progress over ``iterable`` (or ``total`` steps, counted with ``update``).

    Args:
        iterable: what to iterate over, or None to count with ``.update(n)``.
        progress: True = a ``tqdm.auto`` bar, False = none, a function = called with
            ``(done, total)``, first ``(0, total)``.
        total: steps (or bytes) in all; default ``len(iterable)``.
        min_total: a bar only when ``total`` is at least this (small work finishes before
            a bar helps); a function is told whatever the total.
        **kwargs: passed to tqdm (``desc``, ``unit``, ``leave`` ...).

    Returns:
        An object to iterate over, or to ``update(n)``, usable as a context manager.

    Raises:
        ConfigError: ``progress`` is neither a bool nor a function.

    Example:
        >>> seen = []
        >>> list(bar("ab", progress=lambda done, total: seen.append((done, total))))
        ['a', 'b']
        >>> seen
        [(0, 2), (1, 2), (2, 2)]
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not isinstance(progress, bool):
        if not callable(progress):
            raise ConfigError(f"progress must be True, False or a function (done, total); "
                              f"got {type(progress).__name__} {progress!r}")
        return Reporter(progress, iterable, total or 0)
    from tqdm.auto import tqdm

    if not progress or (total or 0) < min_total:
        kwargs["disable"] = True
    return tqdm(iterable, total=total, **kwargs)


def stage(progress: Progress, offset: int, total: int) -> Progress:
    """``progress`` for one stage of a longer job: a function is told ``(offset + done,
    total)``, so it sees one count from 0 to ``total`` across the stages; a bool as it is.

    Example:
        >>> seen = []
        >>> list(bar("ab", progress=stage(lambda d, t: seen.append((d, t)), 2, 4)))
        ['a', 'b']
        >>> seen
        [(2, 4), (3, 4), (4, 4)]
    """
    if isinstance(progress, bool) or not callable(progress):
        return progress
    report = progress
    return lambda done, _: report(offset + done, total)


__all__ = ["Progress", "Reporter", "bar", "stage"]
