"""Where each rank's bytes lie in the file: a plan's pieces as byte ranges, plain data.

The static figure (``ml.plots.plot_shard_plan``) and the interactive view draw the same
ranges, so they are computed here. Positions count tensor data only, in the order the
tensors are laid out on disk (by file, then offset): headers and padding between
tensors are left out, and a sharded folder's files follow each other.

A piece cut along dim 0 holds a contiguous run of the tensor's bytes, and its range is
exact. A cut along a later dim holds strided bytes (a slice of every row); its range is
the same share of the tensor's extent, placed where the cut falls along that dim: a
stand-in that keeps the proportions and the order of the ranks.

>>> from mlmf_lab.formats import TensorInfo
>>> from mlmf_lab.distributed.plans import Piece, ShardPlan
>>> w = TensorInfo("w", (4, 8), "float32", 128, "m.safetensors")
>>> halves = [Piece("w", r, 0, ((2 * r, 2 * r + 2),), 64, "row", True) for r in (0, 1)]
>>> plan = ShardPlan("m.safetensors", "tensor", 2, (w,), tuple(halves))
>>> [(s.rank, s.start, s.stop) for s in byte_spans(plan)]
[(0, 0, 64), (1, 64, 128)]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .plans import ShardPlan


class ByteSpan(NamedTuple):
    """``[start, stop)`` of the tensor data (see the module docstring) held by one rank.

    Attributes:
        rank: the rank holding the bytes.
        name: the tensor they belong to.
        role: the piece's role (``whole``, ``column``, ``row``, ``vocab``, ...).
        primary: False for a replica that ``gather_state_dict`` does not take.
        start, stop: positions in bytes of tensor data.
    """

    rank: int
    name: str
    role: str
    primary: bool
    start: int
    stop: int

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


def tensor_offsets(plan: ShardPlan) -> dict[str, int]:
    """Tensor name -> position of its first byte, in disk order (file, then offset)."""
    out: dict[str, int] = {}
    position = 0
    for info in sorted(plan.tensors, key=lambda i: (i.file, i.offset)):
        out[info.name] = position
        position += info.nbytes
    return out


def byte_spans(plan: ShardPlan) -> list[ByteSpan]:
    """One ``ByteSpan`` per span of every piece, in the plan's piece order.

    A whole tensor is one span; a piece cut along ``dim`` gives one span per
    ``[a, b)`` range of that dim, at ``offset + nbytes * a // n`` with ``n`` the dim's size,
    so the spans of a tensor's primary pieces tile its bytes with no gap and no overlap.
    """
    offsets = tensor_offsets(plan)
    by_name = {i.name: i for i in plan.tensors}
    out: list[ByteSpan] = []
    for p in plan.pieces:
        info = by_name[p.name]
        x0 = offsets[p.name]
        if p.dim is None:
            ranges = [(x0, x0 + info.nbytes)]
        else:
            n = info.shape[p.dim]
            ranges = [(x0 + info.nbytes * a // n, x0 + info.nbytes * b // n) for a, b in p.spans]
        out += [ByteSpan(p.rank, p.name, p.role, p.primary, a, b) for a, b in ranges]
    return out


def file_ranges(plan: ShardPlan, rank: int) -> list[tuple[str, int, int]]:
    """The exact ``(file, start, stop)`` byte ranges ``rank`` reads, as ``read_piece`` does.

    A whole tensor or a cut along dim 0 is one range per span; a cut along a later dim is
    one range per span and outer index (a slice of every row).
    """
    out = []
    for p in plan.for_rank(rank):
        info = plan.info(p.name)
        if p.dim is None:
            out.append((info.file, info.offset, info.offset + info.nbytes))
            continue
        n = info.shape[p.dim]
        outer = math.prod(info.shape[:p.dim])
        inner = info.nbytes // (outer * n) if outer * n else 0  # bytes per index along dim
        out += [(info.file, info.offset + (o * n + a) * inner, info.offset + (o * n + b) * inner)
                for o in range(outer) for a, b in p.spans]
    return out


def pages_touched(plan: ShardPlan, rank: int, page: int = 4096) -> int:
    """Bytes of the ``page``-sized pages that ``rank``'s byte ranges and the header touch.

    Storage delivers whole pages, so this is what an exact reader reads from a cold copy
    of the file. A row-parallel slice narrower than a page shares its pages with the
    neighbouring ranks' slices; every rank then reads those pages, and the tensor plan
    reads more than its share (``benchmarks/bench_distributed.py`` measures it).
    """
    first: dict[str, int] = {}  # each file's header: everything before its first tensor
    for info in plan.tensors:
        first[info.file] = min(first.get(info.file, info.offset), info.offset)
    pages = {(file, k) for file, end in first.items() for k in range(-(-end // page))}
    for file, a, b in file_ranges(plan, rank):
        if b > a:
            pages.update((file, k) for k in range(a // page, (b - 1) // page + 1))
    return len(pages) * page


__all__ = ["ByteSpan", "byte_spans", "file_ranges", "pages_touched", "tensor_offsets"]
