"""Read exactly the bytes of a plan's pieces, counting them.

Unquantized tensors in safetensors and GGUF are stored row-major at a known offset, so
a slice along dim 0 is one byte range and a slice along another dim is one range per
outer index. ``RangeReader`` reads them with ``os.preadv`` straight into the result
tensor's memory (no intermediate copy) and counts every byte: that count is what the
"each rank reads only its share" guarantee is checked against.

GGUF block-quantized tensors are read by whole rows (dim 0) or by whole blocks of each
row (last dim), and only those are dequantized. Formats without byte addressing (pickle
files) are read through their own reader and counted as whole tensors.

The counter is what this process asks for; what the disk delivers is decided by the
kernel's readahead, which reads up to ``read_ahead_kb`` (8 MiB on many hosts) past each
read, and the same around each page fault of a memory map. When each rank reads its own
copy of the file (separate machines, or a cold page cache), that pulled 1.2-1.7x the
rank's share for the layers plan. So the reader advises the kernel: ``POSIX_FADV_RANDOM``
on its descriptors and ``MADV_RANDOM`` on its maps (no readahead), then ``WILLNEED`` on
exactly the contiguous ranges it is about to read (read in large requests, in the
background). Bytes still come in whole pages: a rank reading a row-parallel slice
narrower than a page reads the pages it shares with its neighbours (see
``benchmarks/bench_distributed.py``).
"""

from __future__ import annotations

import math
import mmap
import os
from typing import Any

import torch

from ..errors import FormatError
from ..formats import TensorInfo, WeightFile
from .plans import Piece, local_shape

BYTE_ADDRESSED = ("safetensors", "gguf")


class RangeReader:
    """Positioned reads (``os.preadv``) from files kept open, with a byte counter.

    With ``mapped=True``, contiguous byte ranges come back as copy-free tensors over a
    private memory map of the file instead (pages are read when first touched, and ranks
    on one host share them through the page cache); other ranges are still read.
    """

    def __init__(self, mapped: bool = False) -> None:
        self.bytes_read = 0
        self.calls = 0
        self.mapped = mapped
        self._fds: dict[str, int] = {}
        self._maps: dict[str, mmap.mmap] = {}

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
            _fadvise(fd, 0, 0, "POSIX_FADV_RANDOM")  # exactly the bytes asked for
        return fd

    def prime(self, path: str, length: int) -> None:
        """Bring ``path``'s first ``length`` bytes (its header) into the page cache, uncounted.

        The format's own header parse (a buffered read, or a memory map for GGUF) would
        otherwise start the kernel's readahead: up to ``read_ahead_kb`` past the header,
        and a mark on a page ahead that restarts it, whatever this reader's advice, when
        a later read reaches that page. Found in the cache, the header starts nothing.
        """
        if length > 0:
            _fadvise(self._fd(path), 0, length, "POSIX_FADV_WILLNEED")

    def read_into(self, path: str, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes of ``path`` at ``offset``.

        Raises:
            FormatError: when the file ends before ``offset + len(out)`` (truncated).
        """
        fd, done, size = self._fd(path), 0, len(out)
        if size >= PREFETCH:
            _fadvise(fd, offset, size, "POSIX_FADV_WILLNEED")  # one large request, now
        while done < size:
            n = os.preadv(fd, [out[done:]], offset + done)
            self.calls += 1
            if n == 0:
                raise FormatError(
                    f"truncated: expected {size} bytes at offset {offset}, the file ends after "
                    f"{done}", path)
            done += n
        self.bytes_read += size

    def view(self, path: str, offset: int, length: int) -> torch.Tensor:
        """A uint8 tensor over ``length`` bytes of ``path`` at ``offset``, memory-mapped.

        Raises:
            FormatError: when the file ends before ``offset + length`` (truncated).
        """
        mm = self._maps.get(path)
        if mm is None:
            # ACCESS_COPY: writable for torch, and writes never reach the file
            mm = self._maps[path] = mmap.mmap(self._fd(path), 0, access=mmap.ACCESS_COPY)
            _madvise(mm, 0, len(mm), "MADV_RANDOM")  # no read-around at each page fault
        if offset + length > len(mm):
            raise FormatError(f"truncated: expected {length} bytes at offset {offset}, the file "
                              f"holds {len(mm)}", path)
        start = offset - offset % mmap.PAGESIZE
        _madvise(mm, start, offset + length - start, "MADV_WILLNEED")  # these pages, now
        self.calls += 1
        self.bytes_read += length
        return torch.frombuffer(mm, dtype=torch.uint8, count=length, offset=offset)

    def close(self) -> None:
        # maps stay open while tensors use them; they close when the last one is freed
        self._maps.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


PREFETCH = 1 << 20  # bytes: a read at least this long is announced (WILLNEED) first


def _fadvise(fd: int, offset: int, length: int, advice: str) -> None:
    """``os.posix_fadvise`` where the platform has it (advice only: never an error)."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, getattr(os, advice))
        except OSError:
            pass


def _madvise(mm: mmap.mmap, start: int, length: int, advice: str) -> None:
    """``mmap.madvise`` where the platform has it (advice only: never an error)."""
    if length > 0 and hasattr(mmap, advice):
        try:
            mm.madvise(getattr(mmap, advice), start, length)
        except (OSError, ValueError):
            pass


def byte_addressed(wf: WeightFile, info: TensorInfo) -> bool:
    """True when ``info``'s bytes are a plain row-major array at ``info.offset``."""
    return (wf.format in BYTE_ADDRESSED and info.quant is None
            and info.nbytes == info.numel * info.torch_dtype.itemsize)


def block_addressed(wf: WeightFile, info: TensorInfo) -> bool:
    """True for a GGUF block-quantized tensor this lab can dequantize: its rows (dim 0)
    are contiguous runs of whole blocks, so a row range is a byte range."""
    from ..quant.ggml import BLOCK_TYPES

    return wf.format == "gguf" and info.quant in BLOCK_TYPES and len(info.shape) >= 1


def _read_blocks(reader: RangeReader, info: TensorInfo, piece: Piece,
                 shape: tuple[int, ...], out: torch.Tensor | None) -> torch.Tensor:
    """Read the quantized rows of ``piece`` and dequantize only them (into ``out``)."""
    from ..quant.base import QTensor
    from ..quant.ggml import BLOCK_TYPES, dequantize_tensor

    bt = BLOCK_TYPES[info.quant or ""]
    if piece.dim is None or piece.dim == 0:  # whole rows: one byte range per span
        outer, unit = 1, info.nbytes // info.shape[0]  # bytes of one row
        spans = piece.spans if piece.dim == 0 else ((0, info.shape[0]),)
    else:  # whole blocks of every row (split_tensor cuts only at block boundaries)
        outer, unit = math.prod(info.shape[:-1]), bt.type_size
        spans = tuple((a // bt.block_size, b // bt.block_size) for a, b in piece.spans)
    row_bytes = info.nbytes // outer
    per_row = sum(b - a for a, b in spans) * unit
    raw = torch.empty(outer * per_row, dtype=torch.uint8)
    view, at = _bytes_view(raw), 0
    for o in range(outer):
        for a, b in spans:
            start = info.offset + o * row_bytes + a * unit
            reader.read_into(info.file, start, view[at:at + (b - a) * unit])
            at += (b - a) * unit
    return dequantize_tensor(QTensor(bt.scheme, shape, raw), out=out)


def _bytes_view(t: torch.Tensor) -> memoryview:
    # flatten first: a 0-dim tensor (CLIP's logit_scale) cannot be viewed as bytes, a 1-dim can
    arr: Any = t.reshape(-1).view(torch.uint8).numpy()
    return memoryview(arr)


def read_piece(reader: RangeReader, wf: WeightFile, piece: Piece,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """The tensor of ``piece``, read into ``out`` (contiguous, of the piece's shape and
    dtype; e.g. a view into a send buffer), or into a fresh tensor, or (a mapped reader
    and a contiguous range) as a copy-free view of the file."""
    info = wf.info(piece.name)
    shape = local_shape(info, piece)
    if block_addressed(wf, info) and piece.dim in (None, 0, len(info.shape) - 1):
        return _read_blocks(reader, info, piece, shape, out)
    if not byte_addressed(wf, info):
        full = wf.tensor(piece.name)
        reader.bytes_read += info.nbytes
        if piece.dim is not None:
            full = torch.cat([full.narrow(piece.dim, a, b - a) for a, b in piece.spans],
                             dim=piece.dim)
        return full.clone() if out is None else out.copy_(full)
    dtype = info.torch_dtype
    dim = piece.dim
    numel: int = math.prod(shape)
    one_range = dim is None or (math.prod(info.shape[:dim]) == 1 and len(piece.spans) == 1)
    if out is None and reader.mapped and numel and one_range:
        start = info.offset
        if dim is not None:
            start += piece.spans[0][0] * info.nbytes // info.shape[dim]
        mapped = reader.view(info.file, start, numel * dtype.itemsize)
        return mapped.view(dtype).reshape(shape)
    if out is None:
        out = torch.empty(shape, dtype=dtype)
    elif tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"{piece.name}: out must be contiguous {dtype} of shape {shape}")
    if not out.numel():
        return out
    view = _bytes_view(out)
    if dim is None:
        reader.read_into(info.file, info.offset, view)
        return out
    outer = math.prod(info.shape[:dim])
    inner = math.prod(info.shape[dim + 1:]) * dtype.itemsize  # bytes of one index along dim
    n, local_n = info.shape[dim], shape[dim]
    for o in range(outer):
        dst = o * local_n * inner
        for a, b in piece.spans:
            length = (b - a) * inner
            reader.read_into(info.file, info.offset + (o * n + a) * inner, view[dst:dst + length])
            dst += length
    return out
