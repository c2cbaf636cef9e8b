"""Figures for distributed loading: who holds which bytes, and what each rank read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..distributed.spans import byte_spans

if TYPE_CHECKING:
    from ..distributed import ShardPlan

ROLE_COLORS = {
    "whole": "#4c72b0", "column": "#55a868", "row": "#dd8452", "vocab": "#8172b3",
    "replicate": "#b0b0b0", "shared": "#c0a060",
}


def plot_shard_plan(plan: ShardPlan, bytes_read: Sequence[int] | None = None) -> Figure:
    """Left: the file's bytes in order (x) against ranks (y), coloured by how each piece is
    split (``mlmf_lab.distributed.spans.byte_spans``, as in the view). Right: bytes per rank
    by role, the ideal ``total / N`` dashed, and the bytes each rank actually read (black
    ticks) when ``bytes_read`` is given."""
    fig = Figure(figsize=(10, 1.6 + 0.5 * plan.world_size))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.4]})
    mib = 2**20
    bars: dict[tuple[int, str, bool], list[tuple[float, float]]] = {}
    for sp in byte_spans(plan):
        bars.setdefault((sp.rank, sp.role, sp.primary), []).append(
            (sp.start / mib, (sp.stop - sp.start) / mib))
    for (rank, role, primary), boxes in bars.items():  # one collection per rank and role
        left.broken_barh(boxes, (rank - 0.4, 0.8), facecolors=ROLE_COLORS.get(role, "#4c72b0"),
                         alpha=1.0 if primary else 0.45, linewidth=0)
    left.set_yticks(range(plan.world_size), [f"rank {r}" for r in range(plan.world_size)])
    left.invert_yaxis()
    left.set_xlim(0, max(plan.total_bytes, 1) / mib)
    left.set_xlabel("position in the file (MiB of tensor data)")
    left.set_title(f"{plan.strategy!r} plan over {plan.world_size} ranks", fontsize=10)
    roles = sorted({p.role for p in plan.pieces}, key=list(ROLE_COLORS).index)
    handles: list[Any] = [Patch(color=ROLE_COLORS[r], label=r) for r in roles]

    ranks = range(plan.world_size)
    bottom = [0.0] * plan.world_size
    for role in roles:
        vals = [plan.roles(r).get(role, 0) / mib for r in ranks]
        right.barh(list(ranks), vals, left=bottom, color=ROLE_COLORS[role], height=0.6)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    right.axvline(plan.total_bytes / plan.world_size / mib, color="#c44e52", ls="--", lw=1,
                  label="total / N")
    if bytes_read is not None:
        right.scatter([b / mib for b in bytes_read], list(ranks), marker="|", s=300, color="k",
                      label="bytes read", zorder=3)
    right.set_yticks(list(ranks), [str(r) for r in ranks])
    right.invert_yaxis()
    right.set_xlabel("MiB per rank")
    right.set_title(f"imbalance {plan.imbalance:.2f}", fontsize=10)
    handles += right.get_legend_handles_labels()[0]
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))  # room for the legend below
    return fig
