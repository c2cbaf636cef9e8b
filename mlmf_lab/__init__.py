"""mlmf_lab: a research workbench for machine-learning model files.

>>> import mlmf_lab as ml
>>> wf = ml.open_weights("model.safetensors")  # doctest: +SKIP

Capability subpackages (``ml.quant``, ``ml.lora``, ...) and their main classes
are imported on first use, so ``import mlmf_lab`` stays fast and a script that
only reads files never imports what it does not use. ``compare`` and ``convert``
(functions) and ``checkpoint`` (which registers a checkpoint step as a side of
``ml.compare``; about 10 ms) are imported at once.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import errors, units
from .checkpoint import CheckpointManager  # also teaches ml.compare a checkpoint step
from .compare import compare  # binds ml.compare to the function, over the subpackage
from .convert import convert  # binds ml.convert to the function, over the submodule
from .errors import MLMFError
from .formats import TensorInfo, WeightFile, load_state_dict, open_weights, save_state_dict
from .loading import LoadReport, load_into

__version__ = "0.1.0"

# name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "quant": ("mlmf_lab.quant", None),
    "lora": ("mlmf_lab.lora", None),
    "distributed": ("mlmf_lab.distributed", None),
    "multimodal": ("mlmf_lab.multimodal", None),
    "plots": ("mlmf_lab.plots", None),
    "examples": ("mlmf_lab.examples", None),
    "cache": ("mlmf_lab.cache", None),
    "provenance": ("mlmf_lab.provenance", None),
    "views": ("mlmf_lab.views", None),
    "ModelCache": ("mlmf_lab.cache", "ModelCache"),
    "Lineage": ("mlmf_lab.provenance", "Lineage"),
    "describe": ("mlmf_lab.provenance", "describe"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mlmf_lab' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CheckpointManager",
    "LoadReport",
    "MLMFError",
    "TensorInfo",
    "WeightFile",
    "compare",
    "convert",
    "checkpoint",
    "errors",
    "units",
    "load_into",
    "load_state_dict",
    "open_weights",
    "save_state_dict",
    *_LAZY,
]
