"""Records and the common shell shared by every weight-file format.

A format module subclasses ``WeightFile`` (one level, no mixins), fills
``self._infos`` from the file's header when opened, and implements
``_read(info)``. Everything else (iteration, ``info``, ``tensor``, the HTML
table) lives here so that each format reads the same.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import torch

from ..errors import FormatError, MLMFError, UnsupportedError
from ..tables import Column, Table, fields_dict, plain
from ..units import human_bytes

# safetensors dtype codes <-> torch dtypes (the codes the safetensors header uses).
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}


def alias_key(t: torch.Tensor) -> tuple[Any, ...]:
    """Identity of the bytes a tensor views: equal keys mean the same tensor (tied weights).

    The writers store such tensors once and the lineage hashes them once; both use this
    key so that a state dict in memory and the file it was saved to hash the same.
    """
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
            t.dtype)


def no_such_tensor(name: str, names: list[str], holder: str,
                   path: str | os.PathLike[str] | None = None) -> MLMFError:
    """The error for a tensor name that is not there: it names the closest ones that are.

    >>> no_such_tensor("fc.weigth", ["fc.weight", "fc.bias"], "the file").message
    "no tensor named 'fc.weigth'; the file has 2 tensors (closest: 'fc.weight')"
    """
    close = difflib.get_close_matches(str(name), names, n=3)
    shown = (f"closest: {', '.join(map(repr, close))}" if close
             else f"first: {', '.join(map(repr, names[:5])) or 'none'}")
    return MLMFError(f"no tensor named {name!r}; {holder} has {len(names)} tensors ({shown})",
                     path)


# numpy and torch address a tensor's elements (and strides) in int64 bytes, zero dimensions
# aside; a header may state a 0-byte tensor of shape (0, 2**63), which neither can build
MAX_EXTENT = 2**60


def check_extent(name: str, shape: tuple[int, ...] | list[int],
                 path: str | os.PathLike[str] | None) -> None:
    """Refuse a shape whose non-zero dimensions multiply past ``MAX_EXTENT`` elements."""
    if math.prod(max(int(d), 1) for d in shape) > MAX_EXTENT:
        raise FormatError(f"tensor {name!r}: shape {list(shape)} cannot be addressed (its "
                          "non-zero dimensions multiply to more than 2**60 elements)", path)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorInfo:
    """What a file's header says about one tensor; no data is read to build it.

    Attributes:
        name: the tensor's key in the file.
        shape: in PyTorch order (row-major, outermost first).
        dtype: the dtype ``tensor()`` returns by default, e.g. ``"float32"``.
        nbytes: bytes the tensor occupies in the file (all its parts; see ``spans``).
        file: the file holding the bytes.
        offset: absolute byte offset of the data (of its first part) in ``file``.
        quant: storage type when it differs from ``dtype`` (GGUF ``"Q8_0"`` ...), else None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    file: str
    offset: int = 0
    quant: str | None = None

    def __post_init__(self) -> None:
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise MLMFError(f"tensor {self.name!r} has an invalid shape {self.shape}", self.file)
        if self.nbytes < 0 or self.offset < 0:
            raise MLMFError(f"tensor {self.name!r} has a negative size or offset", self.file)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a ``torch.dtype`` (what ``tensor()`` returns by default).

        Raises:
            FormatError: a dtype name torch does not know (a malformed header).
        """
        dtype = getattr(torch, self.dtype, None) if self.dtype.isidentifier() else None
        if not isinstance(dtype, torch.dtype):
            raise FormatError(f"tensor {self.name!r} has unknown dtype {self.dtype!r}", self.file)
        return dtype

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.numel if self.numel else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The header record as JSON data, with ``numel`` and ``bits_per_weight``."""
        return {**fields_dict(self), "numel": self.numel, "bits_per_weight": self.bits_per_weight}

    def rows(self) -> list[dict[str, Any]]:
        """Its row in a file's tensor table: name, shape, storage type, bits/weight, bytes."""
        return [{"name": self.name, "shape": self.shape, "type": self.quant or self.dtype,
                 "bits_per_weight": self.bits_per_weight, "nbytes": self.nbytes,
                 "file": os.path.basename(self.file)}]


@dataclass
class WeightFile:
    """An open weight file: tensor names, infos and lazily read tensors.

    Use ``ml.open_weights(path)`` rather than the subclasses directly.
    """

    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    _infos: dict[str, TensorInfo] = field(default_factory=dict, repr=False)
    # tied names the file stores once: alias -> the stored name
    aliases: dict[str, str] = field(default_factory=dict, repr=False)

    format: ClassVar[str] = "?"

    # -- what each format implements ---------------------------------------------------
    def _read(self, info: TensorInfo) -> torch.Tensor:
        raise NotImplementedError  # every registered format overrides this

    def close(self) -> None:
        """Release the file handles and memory maps (tensors already returned stay valid)."""

    def closed_error(self, name: str) -> MLMFError:
        """The error for reading tensor ``name`` after ``close()``."""
        return MLMFError(f"cannot read tensor {name!r}: the file was closed (close(), or the "
                         "end of its with block); open it again with ml.open_weights", self.path)

    # -- shared behaviour ----------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def keys(self) -> list[str]:
        return list(self._infos)

    def infos(self) -> list[TensorInfo]:
        return list(self._infos.values())

    def info(self, name: str) -> TensorInfo:
        """The header record of tensor ``name``."""
        try:
            return self._infos[name]
        except KeyError:
            raise no_such_tensor(name, list(self._infos), "the file", self.path) from None

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor ``name``, backed by the memory map; a copy only when ``dtype`` casts it."""
        t = self._read(self.info(name))
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def raw(self, name: str) -> Any:
        """The tensor as stored; for unquantized formats this equals ``tensor(name)``."""
        return self.tensor(name)

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Every tensor, tied names included (sharing their target's tensor)."""
        out = {name: self.tensor(name, dtype=dtype) for name in self}
        for alias, target in self.aliases.items():
            if target in out and alias not in out:
                out[alias] = out[target]
        return out

    def spans(self, name: str) -> list[tuple[str, int, int]]:
        """Where the bytes of ``name`` lie: ``(file, offset, nbytes)`` per stored part.

        One span, ``info``'s own, except for a weight stored as several parts (int8/int4
        in safetensors: codes, scales, zeros), whose parts need not be adjacent.
        """
        info = self.info(name)
        return [(info.file, info.offset, info.nbytes)]

    def __enter__(self) -> WeightFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- summaries ----------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return sum(i.numel for i in self._infos.values())

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def bytes_by_type(self) -> dict[str, int]:
        """Bytes per storage type (dtype, or quant type where there is one)."""
        out: dict[str, int] = {}
        for i in self._infos.values():
            key = i.quant or i.dtype
            out[key] = out.get(key, 0) + i.nbytes
        return out

    def as_dict(self) -> dict[str, Any]:
        """The file as JSON data (what ``mlmf-lab inspect --json`` prints)."""
        return {
            "path": os.fspath(self.path),
            "format": self.format,
            "metadata": plain(self.metadata),
            "tensors": [i.as_dict() for i in self._infos.values()],
            "num_tensors": len(self),
            "num_parameters": self.num_parameters,
            "nbytes": self.nbytes,
            "bytes_by_type": self.bytes_by_type(),
        }

    def rows(self) -> list[dict[str, Any]]:
        """One row per tensor, in file order (``TensorInfo.rows``)."""
        return [row for i in self._infos.values() for row in i.rows()]

    def table(self, max_rows: int | None = None) -> Table:
        """The tensor table, titled with the format and path, totals below."""
        types = ", ".join(f"{k} {human_bytes(v)}" for k, v in self.bytes_by_type().items())
        total = (f"total: {len(self)} tensors, {self.num_parameters:,} parameters, "
                 f"{human_bytes(self.nbytes)} ({types}); {len(self.metadata)} metadata keys")
        return Table(
            [Column("name", code=True), Column("shape", fmt="shape"), Column("type"),
             Column("bits_per_weight", "bits/w", fmt=".4g"), Column("nbytes", "bytes", "bytes")],
            self.rows(), title=f"{self.format} {os.fspath(self.path)}", notes=[total],
            max_rows=max_rows, noun="tensors")

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.format} {os.fspath(self.path)!r}: "
            f"{len(self)} tensors, {self.num_parameters:,} parameters, {human_bytes(self.nbytes)}>"
        )

    def _repr_html_(self) -> str:
        return self.table(max_rows=60).html()


def torch_dtype(code: str, path: str | os.PathLike[str] | None = None) -> torch.dtype:
    """The torch dtype for a safetensors dtype code, or an error listing the known codes."""
    try:
        return ST_DTYPES[code]
    except (KeyError, TypeError):
        raise UnsupportedError(
            f"unknown dtype {code!r}; supported: {', '.join(ST_DTYPES)}", path
        ) from None
