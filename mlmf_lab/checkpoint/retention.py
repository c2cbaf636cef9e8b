"""Which checkpoints to keep: pure functions over (step, metric) pairs.

Two bugs in other trainers shaped these rules. transformers#27138: folders were
ordered as strings, so ``step-1000`` sorted before ``step-999`` and rotation
deleted the wrong ones; here steps are integers. transformers#37196: rotation
could delete the best checkpoint; here the best and the newest are always kept,
whatever ``keep_last`` and ``keep_best`` say.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..errors import ConfigError

MODES = ("min", "max")


def check_mode(mode: str) -> str:
    """``mode`` if it is "min" or "max", else a ConfigError listing both."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def metric_value(value: object) -> float | None:
    """A metric usable for ranking: a real, non-NaN number; anything else is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def rank_best(entries: Iterable[tuple[int, object]], mode: str) -> list[int]:
    """Steps with a usable metric, best first; ties go to the earlier step.

    Args:
        entries: (step, metric value or None) pairs.
        mode: "min" (lower is better, e.g. a loss) or "max" (e.g. accuracy).

    Returns:
        Steps ordered from best to worst; steps without a usable metric are left out.
    """
    sign = 1.0 if check_mode(mode) == "min" else -1.0
    scored = [(sign * v, step) for step, raw in entries if (v := metric_value(raw)) is not None]
    return [step for _, step in sorted(scored)]


def plan_retention(
    entries: Sequence[tuple[int, object]],
    keep_last: int | None,
    keep_best: int,
    mode: str,
    protect: Iterable[int] = (),
) -> set[int]:
    """The steps to keep; every other checkpoint may be deleted.

    Args:
        entries: (step, metric value or None) for every existing checkpoint.
        keep_last: how many of the highest steps to keep (None keeps all).
        keep_best: how many of the best by metric to keep.
        mode: "min" or "max".
        protect: steps kept regardless (the one just saved, even when a higher step exists).

    Returns:
        The set of steps to keep. It always holds the highest step and the best one.

    Raises:
        ConfigError: ``keep_last`` or ``keep_best`` below 1, or an unknown mode.

    Example:
        >>> sorted(plan_retention([(999, 0.5), (1000, 0.7), (1001, 0.9)], 1, 1, "min"))
        [999, 1001]
    """
    if keep_last is not None and keep_last < 1:
        raise ConfigError(f"keep_last must be at least 1 (the newest is always kept): {keep_last}")
    if keep_best < 1:
        raise ConfigError(f"keep_best must be at least 1 (the best is always kept): {keep_best}")
    steps = sorted({step for step, _ in entries})
    keep = set(steps if keep_last is None else steps[-keep_last:])
    keep.update(rank_best(entries, mode)[:keep_best])
    keep.update(s for s in protect if s in steps)
    return keep
