"""Checkpoint management: atomic folders, exact resume, retention that never loses the best.

>>> ckpts = ml.CheckpointManager("runs/a", keep_last=3, keep_best=1, metric="val_loss")
>>> ckpts.save(model, step, optimizer=opt, metrics={"val_loss": v})  # doctest: +SKIP

Modules: ``manager`` (CheckpointManager), ``files`` (weights, parts, manifests), ``chunks``
(the sha256 of each 64 MiB of a file, written with it), ``verify`` (files checked by one
thread per CPU, copied where they belong on the way), ``fill`` (a model filled from the
weights), ``record`` (what a checkpoint folder holds), ``retention`` (the pure keep/retire
planner), ``state`` (optimizer/scheduler/RNG state without pickle), ``compare_side`` (a
step as a side of ``ml.compare``, registered on import).
"""

from __future__ import annotations

from . import compare_side  # noqa: F401  (registers a checkpoint step with ml.compare)
from .manager import (
    CheckpointDiff,
    CheckpointList,
    CheckpointManager,
    CheckpointRecord,
    diff_state_dicts,
    plan_retention,
)

__all__ = [
    "CheckpointDiff",
    "CheckpointList",
    "CheckpointManager",
    "CheckpointRecord",
    "diff_state_dicts",
    "plan_retention",
]
