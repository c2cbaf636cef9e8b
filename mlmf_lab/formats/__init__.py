"""Weight-file formats: one module per format, registered by content detection.

Order matters only for detection: the first detector that accepts a file wins.
"""

from . import pickle, safetensors, sharded  # noqa: F401  (each registers itself)
from .base import TensorInfo, WeightFile, human_bytes
from .registry import (
    FORMATS,
    WRITERS,
    Format,
    Writer,
    detect,
    load_state_dict,
    open_weights,
    register_format,
    register_writer,
    save_state_dict,
)

__all__ = [
    "FORMATS",
    "WRITERS",
    "Format",
    "TensorInfo",
    "WeightFile",
    "Writer",
    "detect",
    "human_bytes",
    "load_state_dict",
    "open_weights",
    "register_format",
    "register_writer",
    "save_state_dict",
]
