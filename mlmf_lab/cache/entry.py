"""What ModelCache keeps per key: the cached entry, a load in flight, and why a value cannot fit."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ..files import Stamp
from ..units import human_bytes
from .footprint import Footprint


@dataclass
class Entry:
    """One cached value with its measured size and the file stamp it was loaded from."""

    label: str
    value: Any
    size: Footprint
    stamp: Stamp
    loaded_at: float
    load_seconds: float
    pinned: bool = False
    hits: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.size.total  # read on every hit: a plain attribute, not a property


class Pending:
    """A load in progress that other threads asking for the same key wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def wait(self) -> Any:
        """Block until the owning thread finished; its value, or its error raised here too."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


def does_not_fit(label: str, size: Footprint, max_bytes: int, pinned_bytes: int) -> str:
    """Why a value of ``size`` cannot be cached under ``max_bytes`` with ``pinned_bytes`` pinned."""
    why = (f"{label}: {human_bytes(size.total)} ({size.total} bytes: "
           f"{size.anonymous} anonymous, {size.mapped} memory-mapped) ")
    return why + (f"is larger than the whole budget of {human_bytes(max_bytes)}"
                  if size.total > max_bytes else
                  f"does not fit: pinned entries hold {human_bytes(pinned_bytes)} of the "
                  f"{human_bytes(max_bytes)} budget; unpin some")
