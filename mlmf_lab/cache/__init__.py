"""Model caching: an in-memory cache under a byte budget, a disk cache of derived files.

>>> cache = ml.ModelCache("2GiB")                   # doctest: +SKIP
>>> sd = cache.get_or_load("model.safetensors")   # doctest: +SKIP

Modules: ``memory`` (ModelCache), ``entry``, ``keys`` (file stamps and keys), ``stats``,
``disk`` (DiskCache), ``collect`` (its garbage collection), ``warmup`` (background loads),
``footprint`` (measured bytes).
"""

from __future__ import annotations

from .disk import DiskCache, derive_key
from .footprint import Footprint, measure
from .memory import ModelCache
from .stats import CacheStats
from .warmup import WarmUp

__all__ = [
    "CacheStats",
    "DiskCache",
    "Footprint",
    "ModelCache",
    "WarmUp",
    "derive_key",
    "measure",
]
