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


__all__ = ["ByteSpan", "byte_spans", "tensor_offsets"]
