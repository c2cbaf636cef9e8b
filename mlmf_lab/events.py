"""Operation events: how library operations report themselves to the lineage store.

Library code wraps an operation in ``with events.activity("quantize", used=[...]) as act:``
and adds what it produced with ``act.generated.append(...)``. When no listener is
registered (no ``ml.Lineage`` active) the context manager does nothing but yield,
so recording costs nothing. ``mlmf_lab.provenance`` registers the listener.

Items in ``used``/``generated`` are file paths (``str``/``PathLike``) or live
objects (an ``nn.Module``, a state dict); the listener decides how to identify them.

Only the outermost activity is emitted: ``convert`` calls ``load_state_dict`` and
``save_state_dict``, which are activities of their own, but the user asked for one
conversion, so the nested ``load``/``save`` stay silent. Listeners run while the
activity is still open, so library calls a listener makes are never recorded either.

A writer that hashes a file's content as it writes it (``formats.safetensors``) hands the
hash to the open activity (``report_hash``), so the store does not read the file back to
hash it; it does that only while one is recording (``recording()``).
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

ACTIVITIES = (
    "load", "save", "convert", "quantize", "lora-inject", "lora-train", "lora-load",
    "lora-save", "merge", "unmerge", "checkpoint", "checkpoint-load",
)
_KNOWN = frozenset(ACTIVITIES)


@dataclass
class Event:
    """One finished operation: what it used, what it generated, with which parameters."""

    activity: str
    used: list[Any] = field(default_factory=list)
    generated: list[Any] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    # content hashes of written files, computed by their writer: real path -> (sha256, kind)
    hashes: dict[str, tuple[str, str]] = field(default_factory=dict)


LISTENERS: list[Callable[[Event], None]] = []
# How many activities are open in this thread/task; only depth 0 -> 1 emits.
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("mlmf_activity_depth", default=0)
# The outermost open activity that listeners will receive, while it is open.
_OPEN: contextvars.ContextVar[Event | None] = contextvars.ContextVar("mlmf_open_activity",
                                                                     default=None)


def recording() -> bool:
    """Whether an open activity will reach a listener (then writers report their hashes)."""
    return bool(LISTENERS) and _OPEN.get() is not None


def report_hash(path: str | os.PathLike[str], sha256: str, kind: str) -> None:
    """Tell the open activity the content hash of a file it wrote (``kind`` as
    ``provenance.hashing.ContentHash``); nothing happens outside an activity."""
    event = _OPEN.get()
    if event is not None:
        event.hashes[os.path.realpath(path)] = (sha256, kind)


def emit(event: Event) -> None:
    for listener in list(LISTENERS):
        listener(event)


class _Activity:
    """The context manager behind ``activity``: nearly free when nobody listens."""

    __slots__ = ("event", "_token", "_open")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._token: contextvars.Token[int] | None = None
        self._open: contextvars.Token[Event | None] | None = None

    def __enter__(self) -> Event:
        if LISTENERS:
            self.event.started = time.time()
            self._token = _DEPTH.set(_DEPTH.get() + 1)
            if self._token.old_value in (contextvars.Token.MISSING, 0):
                self._open = _OPEN.set(self.event)
        return self.event

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token = self._token
        if token is None:  # no listener when the activity began: nothing to record
            return
        try:
            outermost = token.old_value is contextvars.Token.MISSING or token.old_value == 0
            if exc_type is None and outermost and LISTENERS:
                self.event.ended = time.time()
                emit(self.event)  # still at depth >= 1: a listener's own calls stay silent
        finally:
            _DEPTH.reset(token)
            if self._open is not None:
                _OPEN.reset(self._open)


def activity(
    name: str, used: list[Any] | None = None, params: dict[str, Any] | None = None
) -> AbstractContextManager[Event]:
    """Time an operation and emit it on success (nothing is emitted when it raises).

    Activities opened inside another one are not emitted: the outermost stands for them.
    With no listener registered, this costs about as much as creating the ``Event``.

    Raises:
        ValueError: ``name`` is not one of ``ACTIVITIES``.
    """
    if name not in _KNOWN:
        raise ValueError(f"unknown activity {name!r}; known: {', '.join(ACTIVITIES)}")
    return _Activity(Event(name, list(used) if used else [], [], dict(params) if params else {}))
