"""Weight-file formats: one module per format, registered by content detection.

Order matters only for detection: the first detector that accepts a file wins.
"""

# Detection order: the strict structural checks first, the loosest (pickle) last.
from . import gguf  # noqa: F401, I001  (magic bytes first: a GGUF header can look like safetensors)
from . import safetensors, sharded  # noqa: F401, I001  (each registers itself)
from . import pickle  # noqa: F401, E402
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
