"""PyTorch pickle files (``.bin``/``.pt``), only through ``torch.load(weights_only=True)``.

A pickle can run code when unpickled; ``weights_only=True`` restricts it to
tensors and plain containers, and anything else is refused with ``UnsafeFileError``.
The whole file is loaded at open (memory-mapped for the zip format), since a
pickle has no header to read lazily.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import FormatError, UnsafeFileError
from .base import TensorInfo, WeightFile, dtype_name
from .registry import Format, register_format

_PICKLE_PROTOCOL_BYTE = b"\x80"
_ZIP_MAGIC = b"PK\x03\x04"


def _load(path: Path) -> object:
    try:
        return torch.load(
            os.fspath(path),
            map_location="cpu",
            weights_only=True,
            mmap=zipfile.is_zipfile(path),
        )
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling refused"
        raise UnsafeFileError(
            "refusing to unpickle: the file holds objects other than tensors, which could run "
            f"code ({first}). Convert it with a trusted tool, or use safetensors.",
            path,
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, KeyError) as e:
        raise FormatError(f"not a readable PyTorch file ({type(e).__name__}: {e})", path) from None


class PickleFile(WeightFile):
    """A PyTorch ``torch.save`` file holding a state dict."""

    format = "pytorch"

    def __init__(self, path: Path) -> None:
        obj = _load(path)
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]  # Lightning-style wrapper
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise FormatError(
                f"expected a dict of name -> tensor, found {type(obj).__name__}", path
            )
        self._tensors: dict[str, torch.Tensor] | None = obj
        infos = {
            k: TensorInfo(
                k,
                tuple(v.shape),
                dtype_name(v.dtype),
                v.nbytes,
                os.fspath(path),
            )
            for k, v in obj.items()
        }
        super().__init__(path=path, metadata={}, _infos=infos)

    def _read(self, info: TensorInfo) -> torch.Tensor:
        if self._tensors is None:
            raise self.closed_error(info.name)
        return self._tensors[info.name]

    def close(self) -> None:
        self._tensors = None  # the loaded tensors go with it, unless the caller holds them


def _detect(path: Path, head: bytes) -> bool:
    # torch's zip container, or a bare pickle (PROTO opcode 0x80 then protocol 2-5).
    return head.startswith(_ZIP_MAGIC) or (
        head.startswith(_PICKLE_PROTOCOL_BYTE) and len(head) > 1 and 2 <= head[1] <= 5
    )


# the loosest check (two bytes), tried last
register_format(Format("pytorch", _detect, PickleFile, priority=0))
