"""``ml.lora.summary(model)``: one row per (adapter, module), as text and as an HTML table."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

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


@dataclass(frozen=True)
class LoraSummary:
    """The adapters of a model, row by row; shows as a table in notebooks."""

    rows: tuple[AdapterRow, ...]

    @property
    def modules(self) -> list[str]:
        """Distinct module paths, in model order."""
        return list(dict.fromkeys(r.module for r in self.rows))

    @property
    def adapters(self) -> list[str]:
        return list(dict.fromkeys(r.adapter for r in self.rows))

    @property
    def params(self) -> int:
        """Parameters in the LoRA factors (A and B) of every row."""
        return sum(r.params for r in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _cells(self) -> list[list[str]]:
        return [[r.adapter, r.module, str(r.rank), f"{r.alpha:g}", f"{r.scaling:.4g}",
                 f"{r.params:,}", f"{r.delta_norm:.4g}",
                 "-" if r.weight is None else f"{r.weight:g}", "yes" if r.merged else "no"]
                for r in self.rows]

    HEADER = ("adapter", "module", "rank", "alpha", "scaling", "trainable params", "‖ΔW‖",
              "active weight", "merged")

    def __str__(self) -> str:
        cells = [list(self.HEADER), *self._cells()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in cells]
        lines.append(f"{len(self.rows)} rows, {len(self.modules)} modules, "
                     f"{self.params:,} LoRA parameters")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"LoraSummary({len(self.rows)} rows, adapters={self.adapters})"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.HEADER)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._cells()
        )
        foot = (f"<caption style='caption-side:bottom'>{len(self.rows)} rows, "
                f"{len(self.modules)} modules, {self.params:,} LoRA parameters</caption>")
        return f"<table>{foot}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
