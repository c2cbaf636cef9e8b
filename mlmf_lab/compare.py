"""How two sets of weights differ, tensor by tensor.

``tensor_change`` is the maths (relative change, cosine similarity, max abs
difference, computed in float64); ``diff_state_dicts`` applies it to every
shared name and lists tensors added, removed or reshaped; ``CheckpointDiff`` is
the record, shown as a table in a notebook. ``ml.plots.plot_checkpoint_diff``
draws it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .formats.base import no_such_tensor
from .tables import Column, Table, fields_dict, fields_row

STATUSES = ("changed", "same", "added", "removed", "reshaped")


class TensorChange(NamedTuple):
    """How tensor b differs from tensor a (same shape)."""

    rel_change: float  # ||b - a|| / ||a||; inf when a is all zeros and b is not
    cosine: float  # <a, b> / (||a|| ||b||); 1.0 when both are zero, nan when only one is
    max_abs: float  # max |b - a|

    def as_dict(self) -> dict[str, Any]:
        """JSON data; NaN and inf are None."""
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


def tensor_change(a: torch.Tensor, b: torch.Tensor) -> TensorChange:
    """Relative change, cosine similarity and max abs difference of two same-shape tensors.

    Args:
        a: the reference tensor.
        b: the other tensor, same shape (any float/int dtype; computed in float64).

    Returns:
        A ``TensorChange``.

    Raises:
        ValueError: the shapes differ (an internal misuse: callers list reshaped tensors apart).

    Example:
        >>> tensor_change(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 5.0])).rel_change
        0.2
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x = a.detach().reshape(-1).to("cpu", torch.float64)
    y = b.detach().reshape(-1).to("cpu", torch.float64)
    if x.numel() == 0:
        return TensorChange(0.0, 1.0, 0.0)
    d = y - x
    na, nb, nd = (float(torch.linalg.vector_norm(v)) for v in (x, y, d))
    rel = nd / na if na else (0.0 if nd == 0 else math.inf)
    if na and nb:
        cos = max(-1.0, min(1.0, float(torch.dot(x, y)) / (na * nb)))
    else:
        cos = 1.0 if na == nb else math.nan
    return TensorChange(rel, cos, float(d.abs().max()))


@dataclass(frozen=True)
class TensorDiff:
    """One row of a diff: a tensor's status and, when shapes match, its change."""

    name: str
    status: str  # one of STATUSES
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    rel_change: float = math.nan
    cosine: float = math.nan
    max_abs: float = math.nan

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {self.status!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON data; a change that was not computed (NaN) is None."""
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        """Its row in the diff's table (the same keys as ``as_dict``)."""
        return [fields_row(self)]


@dataclass(frozen=True)
class CheckpointDiff:
    """Per-tensor differences between weights ``a`` and ``b`` (labels say which)."""

    a: str
    b: str
    tensors: tuple[TensorDiff, ...]

    def by_status(self, status: str) -> list[TensorDiff]:
        """The rows with this status (one of ``STATUSES``)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {status!r}")
        return [r for r in self.tensors if r.status == status]

    def __getitem__(self, name: str) -> TensorDiff:
        """The row of tensor ``name``; an ``MLMFError`` naming the closest names if absent."""
        for r in self.tensors:
            if r.name == name:
                return r
        raise no_such_tensor(name, [r.name for r in self.tensors],
                             f"the diff {self.a} -> {self.b}")

    def counts(self) -> dict[str, int]:
        """How many tensors have each status."""
        return {s: sum(r.status == s for r in self.tensors) for s in STATUSES}

    def summary(self) -> str:
        """One line: the counts and the most changed tensor."""
        parts = [f"{n} {s}" for s, n in self.counts().items() if n]
        compared = [r for r in self.tensors if r.status in ("changed", "same")]
        if compared:
            top = max(compared, key=lambda r: r.rel_change)
            parts.append(f"largest relative change {top.rel_change:.3g} in {top.name}")
        return f"{self.a} -> {self.b}: " + ", ".join(parts or ["no tensors"])

    def __repr__(self) -> str:
        return f"<CheckpointDiff {self.summary()}>"

    def as_dict(self) -> dict[str, Any]:
        """JSON data: the labels, the counts per status and every tensor's row."""
        return {"a": self.a, "b": self.b, "counts": self.counts(),
                "tensors": [t.as_dict() for t in self.tensors]}

    def rows(self) -> list[dict[str, Any]]:
        """One row per tensor (``TensorDiff.rows``)."""
        return [row for t in self.tensors for row in t.rows()]

    def table(self, max_rows: int | None = None) -> Table:
        """The tensors as a table under the one-line summary."""
        return Table(
            [Column("name", "tensor", code=True), Column("status"),
             Column("shape_a", "shape a", "shape"), Column("shape_b", "shape b", "shape"),
             Column("rel_change", "relative change", ".3e"), Column("cosine", fmt=".6f"),
             Column("max_abs", "max |Δ|", ".3e")],
            self.rows(), title=self.summary(), max_rows=max_rows, noun="tensors")

    def _repr_html_(self) -> str:
        return self.table(max_rows=60).html()


def diff_state_dicts(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
    labels: tuple[str, str] = ("a", "b"),
) -> CheckpointDiff:
    """Compare two state dicts tensor by tensor.

    Args:
        a: the reference weights (name -> tensor).
        b: the other weights.
        labels: how the two sides are named in the summary and the table.

    Returns:
        A ``CheckpointDiff`` with rows in ``a``'s order, then tensors only in ``b``.
        A tensor is "same" when it is bit-for-bit equal (max abs difference 0).

    Example:
        >>> d = diff_state_dicts(model_a.state_dict(), model_b.state_dict())  # doctest: +SKIP
    """
    rows: list[TensorDiff] = []
    for name, ta in a.items():
        if name not in b:
            rows.append(TensorDiff(name, "removed", tuple(ta.shape), None))
            continue
        tb = b[name]
        sa, sb = tuple(ta.shape), tuple(tb.shape)
        if sa != sb:
            rows.append(TensorDiff(name, "reshaped", sa, sb))
            continue
        ch = tensor_change(ta, tb)
        status = "same" if ch.max_abs == 0 else "changed"
        rows.append(TensorDiff(name, status, sa, sb, *ch))
    rows.extend(TensorDiff(n, "added", None, tuple(t.shape)) for n, t in b.items() if n not in a)
    return CheckpointDiff(labels[0], labels[1], tuple(rows))
