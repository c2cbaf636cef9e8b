"""PyTorch pickle files (``.bin``/``.pt``), only through ``torch.load(weights_only=True)``.

A pickle can run code when unpickled; ``weights_only=True`` restricts it to
tensors and plain containers, and anything else is refused with ``UnsafeFileError``.
The whole file is loaded at open (memory-mapped for the zip format), since a
pickle has no header to read lazily.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import torch

from ..errors import FormatError, UnsafeFileError
from ..files import open_regular
from .base import TensorInfo, WeightFile, dtype_name
from .registry import Format, register_format

_PICKLE_PROTOCOL_BYTE = b"\x80"
_ZIP_MAGIC = b"PK\x03\x04"


def torch_reason(e: BaseException) -> str:
    """The first line of torch's own words in ``e`` (past its general preamble about
    ``weights_only``), at most 200 characters; "" when it says nothing."""
    lines = (str(e).partition("WeightsUnpickler error:")[2] or str(e)).strip().splitlines()
    return lines[0][:200] if lines else ""


def _load(path: Path) -> object:
    try:
        zipped = zipfile.is_zipfile(path)
    except zipfile.BadZipFile as e:  # raised, not answered, for some damaged end records
        raise FormatError(f"not a readable PyTorch file (BadZipFile: {e})", path) from None
    if not zipped:
        _check_legacy_sizes(path)
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        reason = torch_reason(e) or "unpickling refused"
        if reason.startswith("Unsupported operand"):  # an opcode no pickler writes: damage
            raise FormatError(f"not a readable PyTorch file (its pickle is damaged: {reason})",
                              path) from None
        raise UnsafeFileError(
            "refusing to unpickle: the file holds objects other than tensors, which could run "
            f"code ({reason}). Convert it with a trusted tool, or use safetensors.",
            path,
        ) from None
    except Exception as e:  # damaged bytes fail in whatever torch, zip or struct raise
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise FormatError(f"not a readable PyTorch file ({type(e).__name__}: {text})",
                          path) from None


class _Anything:
    """Stands for every object of the pickle while its storage sizes are read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, value: object) -> None:
        pass

    def extend(self, values: object) -> None:
        pass


class _SizeReader(pickle.Unpickler):
    """Unpickles the legacy format's object graph without building anything: it records
    the bytes each storage claims (``numel`` times the element size), and calls nothing."""

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.sizes: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> object:
        itemsize = ITEMSIZES.get(name.removesuffix("Storage")) if module == "torch" else None
        return _Anything if itemsize is None else _StorageType(itemsize)

    def persistent_load(self, pid: object) -> object:
        if isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage"):
            kind, key, numel = pid[1], pid[2], pid[4]
            if isinstance(kind, _StorageType) and type(numel) is int and numel >= 0:
                self.sizes[str(key)] = numel * kind.itemsize
        return _Anything()


class _StorageType(NamedTuple):
    itemsize: int


# bytes per element of the storage classes the legacy format names (``torch.FloatStorage``)
ITEMSIZES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4,
             "Short": 2, "Char": 1, "Byte": 1, "Bool": 1, "ComplexDouble": 16,
             "ComplexFloat": 8, "QInt8": 1, "QUInt8": 1, "QInt32": 4, "QUInt4x2": 1,
             "QUInt2x4": 1, "Untyped": 1}


class _Bounded:
    """A file whose reads never ask for more than the bytes left: a pickle opcode claiming
    2**40 bytes makes the unpickler fail on truncation, not allocate the claim."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.f.tell()
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self, n: int = -1) -> bytes:
        left = self.size - self.f.tell()
        return self.f.readline(left if n < 0 else min(n, left))

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


def _check_legacy_sizes(path: Path) -> None:
    """The legacy (pre-zip) format allocates every storage at the size its pickle states
    before reading a byte of it, so one flipped byte can ask for terabytes: read the pickles
    first, and refuse storages that claim more bytes than follow them in the file. Bytes
    this scan cannot parse are left to ``torch.load``, which refuses or reports them."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        # every pickle through _SizeReader, which resolves no global (it runs nothing)
        scan = _SizeReader(_Bounded(f, size))
        with contextlib.suppress(Exception):  # torch.load fails on these bytes and says why
            for _ in range(4):  # magic number, protocol version, system info, the objects
                scan.load()
        left = size - f.tell()
    claimed = sum(scan.sizes.values()) + 8 * len(scan.sizes)  # each storage: 8-byte size first
    if claimed > left:
        raise FormatError(f"the pickle's {len(scan.sizes)} storages claim {claimed} bytes, but "
                          f"only {left} bytes follow it; the file is damaged", path)


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
