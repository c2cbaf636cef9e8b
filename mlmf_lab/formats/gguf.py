"""GGUF files (llama.cpp's format): the header parsed by ``gguf_header`` (or, on request, by
``gguf.GGUFReader``), tensors memory-mapped, written through ``gguf.GGUFWriter``; blocks
(de)quantized by ``mlmf_lab.quant.ggml`` (torch, with fused C kernels for dequantization).

Reading is lazy: the header is parsed and checked, the file is memory-mapped copy-on-write
(tensors are writable views; the file is never modified), and no tensor data is read until
asked for. Metadata arrays of ``gguf_header.LAZY_ITEMS`` items or more (a vocabulary) are
checked and skipped at open and decoded on first access of their key (``metadata`` is a
``gguf_meta.LazyMetadata``, a dict to every reader). Two header readers give the same result
on a valid file (the tests check it field by field); ``reader=`` chooses one:

- ``"mlmf"`` (default): our parser (``gguf_header.read_header``). It checks every count,
  length and offset against the file size and explains each problem, and it is fast.
- ``"gguf"``: the gguf package's ``gguf.GGUFReader`` (``gguf_reader``), the reference
  reader. It walks metadata arrays element by element, so a Llama-3-sized vocabulary
  (128k tokens, 280k merges) takes 8-15 s to open against 0.04 s with ours (0.2 s with every
  array decoded; ``benchmarks/bench_gguf_open.py``), and it trusts the counts a file states
  (a hostile count can keep it busy for hours). So our parser checks the file first either
  way, and ``"gguf"`` costs both readers' time.

Shapes are given in PyTorch order (GGUF stores dimensions innermost first). Quantized
tensors report ``dtype="float32"`` (what ``tensor()`` returns) and ``quant="Q8_0"`` etc.;
``raw()`` keeps them as a ``QTensor`` of the stored bytes. Float and integer tensors (F32,
F16, BF16, F64, I8 ... I64) come back in their own dtype.

Writing: ``save_state_dict(tensors, "x.gguf", metadata=..., quant="q8_0")``. With ``quant``,
floating-point tensors of two or more dimensions whose rows divide into blocks are
quantized; 1-D tensors (norms, biases) and tensors whose rows do not divide are stored as
F32, as llama.cpp does; with ``q4_k``/``q6_k``, rows that are not a multiple of 256 weights
take ``q5_0``/``q8_0`` instead (llama.cpp's fallback) when they divide into 32.
``general.architecture`` comes from the metadata (default ``"unknown"``);
``general.quantization_version`` is set when blocks are written and only then (a value
passed in is not carried over), and safetensors' ``format: pt`` marker is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import atomic
from ..errors import MLMFError, UnsupportedError
from ..files import sha256_file
from ..progress import bar
from ..quant.base import QTensor
from ..quant.ggml import BLOCK_TYPES, BY_ID, block_type, dequantize_tensor, quantizable
from ..quant.ggml import quantize_tensor as quantize_blocks
from .base import TensorInfo, WeightFile, dtype_name
from .gguf_header import MAX_DIMS, Header, read_header
from .gguf_meta import decode_metadata, encode_metadata
from .gguf_reader import read_header_with_gguf
from .metadata import QUANTIZATION_VERSION_KEY
from .registry import Format, Writer, register_format, register_writer
from .write import dedupe_shared

# ggml types stored as plain tensors: type name -> torch dtype
NATIVE: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
}
TORCH_TO_GGML = {v: k for k, v in NATIVE.items()}
NUMPY_VIEW: dict[str, type[np.generic]] = {  # how the mapped bytes are viewed (BF16: raw bits)
    "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
    "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
}
QUANTIZATION_VERSION = 2  # the block layouts of ggml's current quantization version


def _checked_then_gguf(path: Path, sizes: dict[int, tuple[int, int]]) -> Header:
    """``gguf.GGUFReader``'s header, once our parser has found the file sound: a hostile
    count must not make GGUFReader loop or fill the memory."""
    read_header(path, sizes)
    return read_header_with_gguf(path, sizes)


# reader= name -> the function reading the header (path, ggml type sizes) -> Header
READERS: dict[str, Callable[[Path, dict[int, tuple[int, int]]], Header]] = {
    "mlmf": read_header,  # the default: checked and fast
    "gguf": _checked_then_gguf,  # gguf.GGUFReader, the reference reader
}


def _known_types() -> dict[int, tuple[int, int]]:
    from gguf import GGML_QUANT_SIZES

    return {int(t): sizes for t, sizes in GGML_QUANT_SIZES.items()}


class GGUFFile(WeightFile):
    """One ``.gguf`` file, memory-mapped; quantized tensors dequantized on demand.

    Args:
        path: the file.
        reader: which header reader to use, a key of ``READERS``: ``"mlmf"`` (default) or
            ``"gguf"`` (``gguf.GGUFReader``); see the module docstring.

    Raises:
        UnsupportedError: an unknown ``reader``; the message lists the accepted ones.
        FormatError: a malformed file.
    """

    format = "gguf"

    def __init__(self, path: Path, reader: str = "mlmf") -> None:
        from gguf import GGMLQuantizationType

        if reader not in READERS:
            raise UnsupportedError(
                f"unknown GGUF reader={reader!r}; accepted: "
                f"{', '.join(map(repr, READERS))} (default 'mlmf')",
                path,
            )
        sizes = _known_types()
        header = READERS[reader](path, sizes)
        meta, aliases = decode_metadata(header.metadata, path)
        mapped = np.memmap(path, mode="c") if header.tensors else np.zeros(0, np.uint8)
        infos: dict[str, TensorInfo] = {}
        self._arrays: dict[str, np.ndarray[Any, Any]] = {}
        for e in header.tensors:
            shape = tuple(reversed(e.dims))
            type_name = GGMLQuantizationType(e.type_id).name
            start = header.data_start + e.offset
            flat = mapped[start : start + e.nbytes]
            if type_name in NATIVE:
                quant, dtype = None, NATIVE[type_name]
                self._arrays[e.name] = flat.view(NUMPY_VIEW[type_name]).reshape(shape)
            else:  # blocks: one row of bytes per row of weights
                block, type_size = sizes[e.type_id]
                quant, dtype = type_name, torch.float32
                row_bytes = shape[-1] // block * type_size  # the header checked shape is 1-D+
                self._arrays[e.name] = flat.reshape(*shape[:-1], row_bytes)
            infos[e.name] = TensorInfo(
                e.name, shape, dtype_name(dtype), e.nbytes, os.fspath(path), start, quant
            )
        super().__init__(path=path, metadata=meta, _infos=infos, aliases=aliases)
        self.reader = reader
        self.version = header.version
        self.alignment = header.alignment
        self.value_types = header.value_types
        self._closed = False

    def _array(self, name: str) -> np.ndarray[Any, Any]:
        if self._closed:
            raise self.closed_error(name)
        return self._arrays[name]

    def _read(self, info: TensorInfo) -> torch.Tensor:
        if info.quant is None:
            data = torch.from_numpy(self._array(info.name))
            dtype = info.torch_dtype
            if data.dtype != dtype:  # BF16 comes as bytes
                data = data.view(dtype)
            return data.reshape(info.shape)
        return dequantize_tensor(self.raw_blocks(info.name))

    def raw(self, name: str) -> QTensor | torch.Tensor:
        """A quantized tensor as a ``QTensor`` of its GGUF bytes (no dequantization).

        Float and integer tensors have no blocks to keep: they come back as ``tensor(name)``.
        """
        info = self.info(name)
        return self.tensor(name) if info.quant is None else self.raw_blocks(name)

    def raw_blocks(self, name: str) -> QTensor:
        """The ``QTensor`` of a quantized tensor; an error names the type if it is unsupported."""
        info = self.info(name)
        key = info.quant or ""
        if key not in BLOCK_TYPES:
            supported = ", ".join(BLOCK_TYPES)
            raise UnsupportedError(
                f"tensor {name!r} is stored as {key or info.dtype}, which this lab cannot "
                f"dequantize; supported: {supported}",
                self.path,
            )
        return QTensor(BLOCK_TYPES[key].scheme, info.shape, torch.from_numpy(self._array(name)))

    def close(self) -> None:
        self._arrays, self._closed = {}, True  # tensors returned keep the memory map alive


def _detect(path: Path, head: bytes) -> bool:
    return not path.is_dir() and head[:4] == b"GGUF"


# -- writing --------------------------------------------------------------------------------
# Rows that do not divide into K-quant super-blocks fall back as in llama.cpp's quantizer.
K_FALLBACK = {"q4_k": "q5_0", "q6_k": "q8_0"}


def _plan(
    name: str, t: torch.Tensor, quant: str | None, path: Path
) -> tuple[np.ndarray[Any, Any], int | None]:
    """The array to write for one tensor and its ggml type id (None = from the numpy dtype)."""
    from gguf import GGMLQuantizationType

    if t.dim() > MAX_DIMS:
        raise MLMFError(f"tensor {name!r} has {t.dim()} dimensions; GGUF allows {MAX_DIMS}", path)
    t = t.detach().to("cpu").contiguous()
    if quant is not None and t.is_floating_point():
        scheme: str | None = str(quant).lower()
        while t.dim() >= 2 and scheme is not None:
            bt = block_type(scheme)
            if t.shape[-1] % bt.block_size == 0:
                return quantize_blocks(t, scheme).data.numpy(), bt.type_id
            scheme = K_FALLBACK.get(scheme)  # rows of 384 cannot hold 256-weight blocks
        t = t.float()  # 1-D tensors and rows that do not divide into blocks stay F32
    if t.dtype not in TORCH_TO_GGML:
        raise MLMFError(
            f"tensor {name!r} has dtype {t.dtype}, which GGUF cannot store; supported: "
            f"{', '.join(dtype_name(d) for d in TORCH_TO_GGML)}",
            path,
        )
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint8).numpy(), int(GGMLQuantizationType.BF16)
    return t.numpy(), None


def write_gguf(
    tensors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, Any] | None = None,
    quant: str | None = None,
    keep: Collection[str] = (),
) -> str:
    """Write a GGUF file atomically (see the module docstring for the rules); its sha256.

    ``gguf.GGUFWriter`` writes the file, so its sha256 is read back from it (from the page
    cache) before it replaces ``path``. Tensors named in ``keep`` are written as they are,
    whatever ``quant`` says (llama.cpp keeps norms and position embeddings in F32).
    """
    from gguf import GGMLQuantizationType, GGUFWriter

    kept, aliases = dedupe_shared(tensors)
    # this writer's own markers: safetensors' "format: pt" is not GGUF's, and the
    # quantization version follows what is written here, not what the source said
    given = {k: v for k, v in (metadata or {}).items()
             if k != QUANTIZATION_VERSION_KEY and (k, v) != ("format", "pt")}
    entries = encode_metadata(given, aliases, path)
    arch = next((e.value for e in entries if e.key == "general.architecture"), "unknown")
    planned = {
        name: _plan(name, t, None if name in keep else quant, path)
        for name, t in bar(kept.items(), progress=quant is not None, min_total=8,
                           desc="quantizing", leave=False)
    }
    with atomic.replacing(path) as tmp:
        writer = GGUFWriter(tmp, arch=str(arch))
        try:
            for e in entries:
                if e.key == "general.architecture":
                    continue  # the writer adds it from arch=
                if e.key == "general.alignment" and isinstance(e.value, int):
                    writer.data_alignment = e.value
                writer.add_key_value(e.key, e.value, e.vtype, e.sub_type)
            blocks = [t for _, t in planned.values() if t is not None and BY_ID[t].block_size > 1]
            if blocks:
                writer.add_quantization_version(QUANTIZATION_VERSION)
            for name, (array, type_id) in planned.items():
                raw_dtype = None if type_id is None else GGMLQuantizationType(type_id)
                writer.add_tensor(name, array, raw_dtype=raw_dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        except (ValueError, OverflowError) as e:  # gguf's own checks on names and values
            raise MLMFError(f"could not write GGUF: {e}", path) from None
        finally:
            writer.close()
        return sha256_file(tmp)


def _save(
    tensors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
    quant: str | None = None,
) -> dict[str, str]:
    if max_shard_size is not None:
        raise MLMFError(
            "GGUF files are written whole; max_shard_size applies to folder targets "
            "(the HF safetensors layout). Drop max_shard_size or save to a folder.",
            path,
        )
    return {path.name: write_gguf(tensors, path, metadata, quant)}


# magic bytes, checked first: a GGUF header can look like the start of other formats
register_format(Format("gguf", _detect, GGUFFile, priority=40, readers=tuple(READERS)))
register_writer(Writer("gguf", ".gguf", _save, tuple(quantizable())))

__all__ = ["GGUFFile", "NATIVE", "READERS", "write_gguf"]
