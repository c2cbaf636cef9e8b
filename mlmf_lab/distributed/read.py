"""Read exactly the bytes of a plan's pieces, counting them.

Unquantized tensors in safetensors and GGUF are stored row-major at a known offset, so
a slice along dim 0 is one byte range and a slice along another dim is one range per
outer index. ``RangeReader`` reads them with ``os.preadv`` straight into the result
tensor's memory (no intermediate copy) and counts every byte: that count is what the
"each rank reads only its share" guarantee is checked against. A mapped reader does
not read a slice of one span: it returns a view of a memory map, strided when the
ranges are the rows of a column slice (``mapped_layout``), and counts the bytes it
announces to the kernel.

GGUF block-quantized tensors are read by whole rows (dim 0) or by whole blocks of each
row (last dim), and only those are dequantized. Formats without byte addressing (pickle
files) are read through their own reader and counted as whole tensors.

The counter is what this process asks for; what the disk delivers is decided by the
kernel's readahead, which reads up to ``read_ahead_kb`` (8 MiB on many hosts) past each
read, and the same around each page fault of a memory map. When each rank reads its own
copy of the file (separate machines, or a cold page cache), that pulled 1.2-1.7x the
rank's share for the layers plan. So the reader advises the kernel: ``POSIX_FADV_RANDOM``
on its descriptors and ``MADV_RANDOM`` on its maps (no readahead), then ``WILLNEED`` on
exactly the ranges it is about to read (read in large requests, in the background; for
a strided view, the pages of its rows, merged where they touch: ``page_ranges``). Bytes
still come in whole pages: a rank reading a row-parallel slice narrower than a page
reads the pages it shares with its neighbours (see ``benchmarks/bench_distributed.py``).
A fault on a mapped page also maps the cached pages around it (the kernel's
fault-around, 64 KiB): they count in the process's RSS, though they are page cache (and
possibly the neighbours' columns), and nothing more is read for them.
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

    With ``mapped=True``, ``view`` gives copy-free tensors over a private memory map of the
    file instead (pages are read when first touched, and ranks on one host share them
    through the page cache).
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

    def view(self, path: str, offset: int, length: int, runs: int = 1,
             stride: int = 0) -> torch.Tensor:
        """A uint8 tensor over ``path`` from ``offset``, memory-mapped, covering ``runs`` runs
        of ``length`` bytes each ``stride`` apart (the rows of a column slice).

        Only the runs are counted and announced to the kernel (``WILLNEED``, one call per
        range of pages, ``page_spans``). The bytes between them (other ranks' columns) lie
        inside the returned tensor, for the caller's strided view to skip, and are never
        read unless they share a page with a run.

        Raises:
            FormatError: when the file ends before the last run does (truncated).
        """
        mm = self._maps.get(path)
        if mm is None:
            # ACCESS_COPY: writable for torch, and writes never reach the file
            mm = self._maps[path] = mmap.mmap(self._fd(path), 0, access=mmap.ACCESS_COPY)
            _madvise(mm, 0, len(mm), "MADV_RANDOM")  # no read-around at each page fault
        span = (runs - 1) * stride + length
        if offset + span > len(mm):
            raise FormatError(f"truncated: expected {span} bytes at offset {offset}, the file "
                              f"holds {len(mm)}", path)
        lo, hi = page_spans(offset, length, runs, stride, mmap.PAGESIZE)
        _madvise_ranges(mm, lo, hi, "MADV_WILLNEED")  # these pages, now
        self.calls += 1
        self.bytes_read += runs * length
        return torch.frombuffer(mm, dtype=torch.uint8, count=span, offset=offset)

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


def page_ranges(offset: int, length: int, runs: int, stride: int,
                page: int) -> list[tuple[int, int]]:
    """Page-aligned ``[start, stop)`` byte ranges holding ``runs`` runs of ``length`` bytes,
    ``stride`` apart from ``offset``; runs whose pages touch are merged into one range.

    >>> page_ranges(4100, 10, 1, 0, 4096)
    [(4096, 8192)]
    >>> page_ranges(0, 2048, 4, 4096, 4096)  # half of each 4 KiB row: every page
    [(0, 16384)]
    >>> page_ranges(0, 100, 3, 3 * 4096, 4096)  # a whole page between runs: one range each
    [(0, 4096), (12288, 16384), (24576, 28672)]
    """
    lo, hi = page_spans(offset, length, runs, stride, page)
    return [(a * page, b * page) for a, b in zip(lo, hi, strict=True)]


def page_spans(offset: int, length: int, runs: int, stride: int,
               page: int) -> tuple[list[int], list[int]]:
    """``page_ranges`` as page indices: the ranges are ``[lo[i], hi[i])``."""
    if length <= 0 or runs <= 0:
        return [], []
    if runs == 1 or stride - length < page:  # no whole page fits between two runs
        end = offset + (runs - 1) * stride + length
        return [offset // page], [-(-end // page)]
    starts = offset + torch.arange(runs, dtype=torch.int64) * stride  # vectorized: 1000s of rows
    lo, hi = starts // page, (starts + length - 1) // page + 1  # page indices [lo, hi)
    first = torch.ones(runs, dtype=torch.bool)
    first[1:] = lo[1:] > hi[:-1]  # a run that starts a new range
    last = torch.ones(runs, dtype=torch.bool)
    last[:-1] = first[1:]
    return lo[first].tolist(), hi[last].tolist()


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


def _madvise_ranges(mm: mmap.mmap, lo: list[int], hi: list[int], advice: str) -> None:
    """``_madvise`` over the pages ``[lo[i], hi[i])`` of many ranges (a column slice: one
    per few rows), with one lookup of the advice."""
    flag = getattr(mmap, advice, None)
    if flag is None:
        return
    advise, page = mm.madvise, mmap.PAGESIZE
    try:
        for a, b in zip(lo, hi, strict=True):  # a length past the map's end is clamped
            advise(flag, a * page, (b - a) * page)
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


def row_major_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a contiguous (row-major) tensor of ``shape``."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def mapped_layout(info: TensorInfo, piece: Piece) -> tuple[int, int, int, int] | None:
    """``(offset, length, runs, stride)`` in bytes of the runs ``piece`` covers in the file,
    when one strided view can hold it; None for several spans along one dim (fused
    projections), whose concatenation no single view expresses.

    A slice ``[a, b)`` along ``dim`` of a row-major tensor is, for each index of the dims
    before ``dim`` (``runs`` of them), one run of ``(b - a) * inner`` bytes, the runs
    ``shape[dim] * inner`` bytes apart (``inner``: the bytes of one index along ``dim``).
    """
    itemsize = info.torch_dtype.itemsize
    if piece.dim is None:
        return info.offset, info.numel * itemsize, 1, 0
    if len(piece.spans) != 1:
        return None
    (a, b), dim = piece.spans[0], piece.dim
    inner = math.prod(info.shape[dim + 1:]) * itemsize
    runs = math.prod(info.shape[:dim])
    return info.offset + a * inner, (b - a) * inner, runs, info.shape[dim] * inner


def _bytes_view(t: torch.Tensor) -> memoryview:
    # flatten first: a 0-dim tensor (CLIP's logit_scale) cannot be viewed as bytes, a 1-dim can
    arr: Any = t.reshape(-1).view(torch.uint8).numpy()
    return memoryview(arr)


def read_piece(reader: RangeReader, wf: WeightFile, piece: Piece,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """The tensor of ``piece``, read into ``out`` (contiguous, of the piece's shape and
    dtype; e.g. a view into a send buffer), or into a fresh tensor, or (a mapped reader and
    a piece with one span, see ``mapped_layout``) as a copy-free view of the file: a slice
    along dim 0 is contiguous, a slice along a later dim is a strided view, like
    ``full.narrow(dim, a, b - a)``."""
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
    layout = mapped_layout(info, piece)
    if out is None and reader.mapped and numel and layout is not None:
        start, length, runs, stride = layout
        flat = reader.view(info.file, start, length, runs, stride).view(dtype)
        return flat.as_strided(shape, row_major_strides(info.shape))
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
