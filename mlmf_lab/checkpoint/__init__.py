"""Checkpoint management: atomic folders, exact resume, retention that never loses the best.

>>> ckpts = ml.CheckpointManager("runs/a", keep_last=3, keep_best=1, metric="val_loss")
>>> ckpts.save(model, step, optimizer=opt, metrics={"val_loss": v})  # doctest: +SKIP

Modules: ``manager`` (CheckpointManager), ``files`` (weights, parts, manifests), ``record``
(what a checkpoint folder holds), ``retention`` (the pure keep/retire planner), ``state``
(optimizer/scheduler/RNG state without pickle).
"""

from __future__ import annotations

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
