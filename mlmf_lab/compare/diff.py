"""How two state dicts differ, tensor by tensor: the record of ``CheckpointManager.diff``.

The maths is ``weights.tensor_change`` (the same function ``ml.compare`` uses);
``diff_state_dicts`` applies it to every shared name and lists tensors added, removed or
reshaped; ``CheckpointDiff`` is the record, shown as a table in a notebook.
``ml.plots.plot_checkpoint_diff`` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..formats.base import no_such_tensor
from ..tables import Column, Table, fields_dict, fields_row
from .weights import tensor_change

STATUSES = ("changed", "same", "added", "removed", "reshaped")


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
        rows.append(TensorDiff(name, status, sa, sb, ch.rel_change, ch.cosine, ch.max_abs))
    rows.extend(TensorDiff(n, "added", None, tuple(t.shape)) for n, t in b.items() if n not in a)
    return CheckpointDiff(labels[0], labels[1], tuple(rows))
