"""Progress bars (``tqdm.auto``) that the caller can hide and ``TQDM_DISABLE`` can switch off.

tqdm reads ``TQDM_*`` environment variables as defaults only: an explicit ``disable=``, even
``False``, overrides ``TQDM_DISABLE``. ``bar`` passes ``disable`` only to hide a bar.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def bar(iterable: Iterable[Any] | None = None, *, hide: bool = False, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(iterable, **kwargs)``, hidden when ``hide`` is true."""
    from tqdm.auto import tqdm

    if hide:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
