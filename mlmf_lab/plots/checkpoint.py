"""Figures for checkpoints: metrics across checkpoints, and a per-tensor diff."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from matplotlib.figure import Figure

from ..checkpoint.record import CheckpointRecord
from ..compare import CheckpointDiff


def plot_checkpoint_metrics(
    records: Sequence[CheckpointRecord], metrics: str | Sequence[str] | None = None,
    kept: Collection[int] | None = None, best_step: int | None = None,
    best_metric: str | None = None,
) -> Figure:
    """Metrics against step, one line per metric; the best checkpoint starred.

    Args:
        records: checkpoint records, e.g. ``manager.list()`` or every record ``save`` returned.
        metrics: which metrics to draw (default: every metric the records have).
        kept: steps still on disk; the others are drawn hollow (retired by retention).
        best_step: the step to star (default: ``records.best_step`` when it is a list).
        best_metric: the metric that ranks checkpoints, whose line gets the star
            (default: ``records.metric`` when it is a list, else the first metric).

    Returns:
        A matplotlib ``Figure``.
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics or [])
    if not names:
        for r in records:
            names.extend(k for k in r.metrics if k not in names)
    if best_step is None:
        best_step = getattr(records, "best_step", None)
    best_metric = best_metric or getattr(records, "metric", None) or (names[0] if names else None)
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    for name in names:
        pts = [(r.step, float(r.metrics[name])) for r in records
               if isinstance(r.metrics.get(name), (int, float))]
        if not pts:
            continue
        xs, ys = zip(*sorted(pts), strict=True)
        line, = ax.plot(xs, ys, "-", lw=1.2, label=name)
        if kept is not None:
            gone = [(x, y) for x, y in zip(xs, ys, strict=True) if x not in kept]
            here = [(x, y) for x, y in zip(xs, ys, strict=True) if x in kept]
            for group, face in ((here, line.get_color()), (gone, "white")):
                if group:
                    gx, gy = zip(*group, strict=True)
                    ax.scatter(gx, gy, s=24, zorder=3, facecolors=face,
                               edgecolors=line.get_color())
        best = [(x, y) for x, y in zip(xs, ys, strict=True) if x == best_step]
        if best and name == best_metric:
            ax.scatter(*best[0], marker="*", s=220, color="#e8a317", edgecolors="k", zorder=4,
                       label=f"best by {name} (step {best_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("metric")
    title = "Metrics across checkpoints"
    if kept is not None:
        title += " (filled: kept on disk, hollow: retired)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_checkpoint_diff(diff: CheckpointDiff, max_tensors: int = 40) -> Figure:
    """Per-tensor relative change (log scale) and cosine distance between two checkpoints.

    Args:
        diff: a ``CheckpointDiff`` (``manager.diff(a, b)``).
        max_tensors: draw at most this many tensors, in the model's order.

    Returns:
        A matplotlib ``Figure`` with two panels sharing the tensor axis.
    """
    rows = [r for r in diff.tensors if r.status in ("changed", "same")][:max_tensors]
    height = 1.2 + 0.22 * max(len(rows), 1)
    fig = Figure(figsize=(8, height))
    ax_rel, ax_cos = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    ys = range(len(rows))
    rel = [r.rel_change for r in rows]
    dist = [1.0 - r.cosine for r in rows]
    positive = [v for v in rel if v > 0]
    floor = min(positive) / 10 if positive else 1e-12
    ax_rel.barh(ys, [v if v > 0 else floor for v in rel], color=[
        "#4c72b0" if v > 0 else "#bbbbbb" for v in rel])
    ax_rel.set_xscale("log")
    ax_rel.set_xlabel("relative change ‖b − a‖ / ‖a‖")
    ax_rel.set_yticks(list(ys), [r.name for r in rows], fontsize=7)
    ax_rel.invert_yaxis()  # the model's order, top to bottom
    ax_cos.barh(ys, [max(d, 0.0) for d in dist], color="#dd8452")
    ax_cos.set_xlabel("1 − cosine similarity")
    for ax in (ax_rel, ax_cos):
        ax.grid(axis="x", alpha=0.3)
    counts = {k: v for k, v in diff.counts().items() if v and k not in ("changed", "same")}
    extra = "; " + ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else ""
    fig.suptitle(f"{diff.a} → {diff.b}: per-tensor change{extra}", fontsize=10)
    fig.tight_layout()
    return fig
