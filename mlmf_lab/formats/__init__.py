"""Weight-file formats: one module per format, each registering itself.

Which format a file opens as is decided by content, detectors tried by their explicit
``priority`` (``registry.register_format``), so the order of the imports below does not
matter; the writer follows the target's suffix.
"""

from . import dcp, gguf, pickle, safetensors, sharded  # noqa: F401  (each registers itself)
from .base import TensorInfo, WeightFile
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
    "load_state_dict",
    "open_weights",
    "register_format",
    "register_writer",
    "save_state_dict",
]
