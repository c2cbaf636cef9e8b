"""``ml.lora.summary(model)``: one row per (adapter, module), as text and as an HTML table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..tables import Column, Table, fields_dict, fields_row
from .layer import lora_layers
from .math import delta_norm


@dataclass(frozen=True)
class AdapterRow:
    """One adapter at one module. ``weight`` is its weight in the active combination
    (``None`` when inactive); ``delta_norm`` is the Frobenius norm of ``s·B·A``."""

    adapter: str
    module: str
    rank: int
    alpha: float
    scaling: float
    params: int
    delta_norm: float
    weight: float | None
    merged: bool

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


@dataclass(frozen=True)
class LoraSummary:
    """The adapters of a model, one entry per (adapter, module); shows as a table."""

    entries: tuple[AdapterRow, ...]

    @property
    def modules(self) -> list[str]:
        """Distinct module paths, in model order."""
        return list(dict.fromkeys(r.module for r in self.entries))

    @property
    def adapters(self) -> list[str]:
        return list(dict.fromkeys(r.adapter for r in self.entries))

    @property
    def params(self) -> int:
        """Parameters in the LoRA factors (A and B) of every entry."""
        return sum(r.params for r in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def as_dict(self) -> dict[str, Any]:
        return {"entries": [r.as_dict() for r in self.entries], "adapters": self.adapters,
                "modules": self.modules, "params": self.params}

    def rows(self) -> list[dict[str, Any]]:
        return [row for r in self.entries for row in r.rows()]

    def table(self) -> Table:
        return Table(
            [Column("adapter"), Column("module", code=True), Column("rank"),
             Column("alpha", fmt="g"), Column("scaling", fmt=".4g"),
             Column("params", "trainable params", ","), Column("delta_norm", "‖ΔW‖", ".4g"),
             Column("weight", "active weight", "g"), Column("merged")],
            self.rows(), notes=[f"{len(self.entries)} rows, {len(self.modules)} modules, "
                                f"{self.params:,} LoRA parameters"])

    def __str__(self) -> str:
        return self.table().text()

    def __repr__(self) -> str:
        return f"LoraSummary({len(self.entries)} rows, adapters={self.adapters})"

    def _repr_html_(self) -> str:
        return self.table().html()


def summary(model: nn.Module, names: Sequence[str] | None = None) -> LoraSummary:
    """Every adapter at every wrapped module: rank, alpha, trainable params, ‖ΔW‖.

    Args:
        model: a model with LoRA layers (none gives an empty summary).
        names: only these adapters (default all).

    Returns:
        A ``LoraSummary`` (``print`` it, or let the notebook render its HTML table).
    """
    rows = []
    for path, layer in lora_layers(model).items():
        active = dict(layer.active)
        for name, spec in layer.specs.items():
            if names is not None and name not in names:
                continue
            A, B = layer.lora_A[name], layer.lora_B[name]
            rows.append(AdapterRow(
                name, path, spec.rank, spec.alpha, spec.scaling, A.numel() + B.numel(),
                delta_norm(A, B, spec.scaling), active.get(name),
                any(n == name for n, _ in layer.merged),
            ))
    return LoraSummary(tuple(rows))
