"""Checkpoint management: atomic folders, exact resume, retention that never loses the best.

>>> ckpts = ml.CheckpointManager("runs/a", keep_last=3, keep_best=1, metric="val_loss")
>>> ckpts.save(model, step, optimizer=opt, metrics={"val_loss": v})  # doctest: +SKIP
>>> ckpts.load(model, "best", optimizer=opt, scheduler=sched)  # doctest: +SKIP

One folder per checkpoint, ``step-000120/``::

    model.safetensors            weights (numbered shards + index above max_shard_size)
    optimizer.json/.safetensors  optimizer state: structure as JSON, tensors as safetensors
    scheduler.json               LR scheduler state (+ .safetensors if it holds tensors)
    rng.json, rng.safetensors    Python, numpy and torch generator states
    meta.json                    step, time, metrics, extra, library versions, git commit
    manifest.json                size and sha256 of every file above (of each 64 MiB
                                 chunk for a bigger one), written last

Nothing is pickled. The folder is written under a hidden temporary name,
every file and the folder are fsynced, then it is renamed into place, so a
crash (even SIGKILL) at any moment leaves the earlier checkpoints intact and
``list()`` never shows a half-written one. Retired checkpoints are renamed to a
hidden name before they are deleted, for the same reason. One manager (one
process) writes to a root at a time.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import time
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .. import atomic, events
from ..compare import CheckpointDiff, diff_state_dicts
from ..errors import ConfigError, MLMFError
from ..files import read_json
from ..formats import load_state_dict
from ..runinfo import git_commit, versions
from ..units import parse_size
from .chunks import write_json_file, write_tensors, write_weights
from .files import (
    member,
    pid_alive,
    remove_dir,
    restore_part,
    verify_manifest,
    weights_file,
    write_manifest,
    write_part,
)
from .fill import fill_weights, weight_file_names
from .record import (
    CheckpointList,
    CheckpointRecord,
    parse_step_dir,
    read_record,
    step_dir_name,
)
from .retention import check_mode, plan_retention, rank_best
from .state import capture_rng, split_state
from .state import restore_rng as _restore_rng

__all__ = ["CheckpointDiff", "CheckpointList", "CheckpointManager", "CheckpointRecord",
           "diff_state_dicts", "plan_retention"]

Which = int | Literal["latest", "best"] | CheckpointRecord
# Hidden leftovers of interrupted writes or deletions: ".step-000120.tmp-<pid>-<hex>".
_LEFTOVER = re.compile(r"^\.step-\d+\.(?:tmp|old|del)-(\d+)-[0-9a-f]+$")


class CheckpointManager:
    """Save, list, verify, load, diff and retire checkpoints under one root folder.

    Args:
        root: the folder holding ``step-*`` checkpoint folders (created if needed).
        keep_last: keep this many of the highest steps (None: keep every checkpoint).
        keep_best: keep this many of the best by ``metric``.
        metric: the metric (a key of ``save(metrics=...)``) that ranks checkpoints.
        mode: "min" when lower is better (a loss), "max" when higher is (an accuracy).
        max_shard_size: weights above this size are split into shards (HF layout).

    Raises:
        ConfigError: ``keep_last``/``keep_best`` below 1 or an unknown ``mode``.
    """

    def __init__(
        self, root: str | os.PathLike[str], keep_last: int | None = 3, keep_best: int = 1,
        metric: str = "val_loss", mode: str = "min", max_shard_size: int | str = "5GB",
    ) -> None:
        plan_retention([], keep_last, keep_best, check_mode(mode))  # validates the numbers
        parse_size(max_shard_size, "max_shard_size")
        self.root = Path(root)
        self.keep_last, self.keep_best = keep_last, keep_best
        self.metric, self.mode, self.max_shard_size = metric, mode, max_shard_size
        self.root.mkdir(parents=True, exist_ok=True)
        self._git: str | None | Literal[False] = False  # False: not looked up yet
        self._remove_leftovers()

    # -- writing ------------------------------------------------------------------------
    def save(
        self, model: nn.Module | Mapping[str, torch.Tensor], step: int, *,
        optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
        metrics: Mapping[str, Any] | None = None, extra: Any = None,
    ) -> CheckpointRecord:
        """Write checkpoint ``step`` atomically, then apply the retention policy.

        Args:
            model: an ``nn.Module`` or a bare state dict (name -> tensor).
            step: the training step (a non-negative int); saving an existing step replaces it.
            optimizer: its ``state_dict()`` is stored (tensors in safetensors, the rest JSON).
            scheduler: an LR scheduler (anything with ``state_dict()``), stored the same way.
            metrics: numbers such as ``{"val_loss": 0.31}``; ``metric`` ranks checkpoints.
            extra: any JSON-able value (epoch, data position, config), returned by ``load``.

        Returns:
            The record of the new checkpoint.

        Raises:
            ConfigError: a bad step. MLMFError: state that cannot be stored without pickle.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"step must be a non-negative int; got {step!r}", self.root)
        state = _state_of(model, self.root)
        meta = {
            "step": step, "time": time.time(),
            "metrics": _json_part(_plain_metrics(metrics), "metrics"),
            "extra": _json_part(extra, "extra"), "versions": versions(), "git": self._git_commit(),
        }
        final = self.root / step_dir_name(step)
        with events.activity("checkpoint", used=[model],
                             params={"step": step, "root": os.fspath(self.root)}) as act:
            # a hidden folder beside ``final``, fsynced and swapped in whole on success
            with atomic.replacing_dir(final) as tmp:
                sums = write_weights(state, tmp, {"step": step}, self.max_shard_size)
                if optimizer is not None:
                    write_part(tmp, "optimizer", optimizer.state_dict(), sums)
                if scheduler is not None:
                    write_part(tmp, "scheduler", scheduler.state_dict(), sums)
                rng_doc, rng_tensors = capture_rng()
                sums["rng.json"] = write_json_file(rng_doc, tmp / "rng.json")
                sums["rng.safetensors"] = write_tensors(rng_tensors, tmp / "rng.safetensors")
                sums["meta.json"] = write_json_file(meta, tmp / "meta.json")
                write_manifest(tmp, sums)
            act.generated.append(final)
        self._retire(protect=step)
        return read_record(final)

    def _retire(self, protect: int) -> None:
        records = self.list()
        keep = plan_retention([(r.step, r.metrics.get(self.metric)) for r in records],
                              self.keep_last, self.keep_best, self.mode, protect=[protect])
        for r in records:
            if r.step not in keep:
                remove_dir(r.path)

    def delete(self, which: Which) -> None:
        """Delete one checkpoint (renamed away first, so it vanishes from ``list()`` at once)."""
        remove_dir(self.get(which).path)

    # -- reading ------------------------------------------------------------------------
    def list(self) -> CheckpointList:
        """Every finished checkpoint in numeric step order (a table in a notebook).

        Raises:
            FormatError: a checkpoint folder whose manifest or ``meta.json`` is malformed.
        """
        with os.scandir(self.root) as entries:
            finished = [Path(e.path) for e in entries if parse_step_dir(e.name) is not None
                        and e.is_dir() and os.path.isfile(os.path.join(e.path, "manifest.json"))]
        records = [read_record(folder) for folder in finished]
        best = rank_best([(r.step, r.metrics.get(self.metric)) for r in records], self.mode)
        return CheckpointList(records, best[0] if best else None, self.metric)

    def latest(self) -> CheckpointRecord | None:
        """The checkpoint with the highest step, or None when there is none."""
        records = self.list()
        return records[-1] if records else None

    def best(self) -> CheckpointRecord | None:
        """The best checkpoint by ``metric`` (ties: the earlier step), or None."""
        records = self.list()
        return next((r for r in records if r.step == records.best_step), None)

    def get(self, which: Which = "latest") -> CheckpointRecord:
        """The record for "latest", "best", a step number, or a record.

        Raises:
            MLMFError: no such checkpoint (the message lists the steps there are).
        """
        if isinstance(which, CheckpointRecord):
            return which
        records = self.list()
        found: CheckpointRecord | None = None
        if which == "latest":
            found = records[-1] if records else None
        elif which == "best":
            found = next((r for r in records if r.step == records.best_step), None)
        elif isinstance(which, int) and not isinstance(which, bool):
            found = next((r for r in records if r.step == which), None)
        else:
            raise ConfigError(f"which must be 'latest', 'best', a step or a record; got {which!r}")
        if found is None:
            steps = ", ".join(map(str, records.steps[-10:])) or "none"
            why = f" with a {self.metric!r} metric" if which == "best" and records else ""
            raise MLMFError(f"no checkpoint {which!r}{why}; steps here: {steps}", self.root)
        return found

    def verify(self, which: Which = "latest") -> CheckpointRecord:
        """Check every file of a checkpoint against its manifest's sha256.

        Raises:
            ChecksumError: naming the first file that is missing, truncated or changed.
        """
        record = self.get(which)
        verify_manifest(record.path)
        return record

    def state_dict(self, which: Which = "latest", verify: bool = True) -> dict[str, torch.Tensor]:
        """The saved weights (memory-mapped) of a checkpoint."""
        record = self.verify(which) if verify else self.get(which)
        return load_state_dict(weights_file(record.path))

    def load(
        self, model: nn.Module | MutableMapping[str, torch.Tensor] | None,
        which: Which = "latest", *, optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None, restore_rng: bool = True, strict: bool = True,
        verify: bool = True,
    ) -> CheckpointRecord:
        """Restore weights, optimizer, scheduler and random generators from a checkpoint.

        Args:
            model: an ``nn.Module`` (weights copied into its parameters, so an optimizer
                built on them stays valid), a state dict (tensors copied in place; new
                keys added when not strict), or None for no weights.
            which: "latest", "best", a step number or a record.
            optimizer: restored with ``load_state_dict``; the checkpoint must hold one.
            scheduler: restored likewise.
            restore_rng: put back the Python, numpy and torch generator states.
            strict: the model's keys and shapes must match the checkpoint's exactly.
            verify: check every file's sha256 (on by default): the weight files as they are
                read into ``model``, by one thread per CPU (a damaged one is found after some
                of its tensors were copied in; the error says so), the others before
                anything is restored.

        Returns:
            The checkpoint's record (``metrics``, ``extra``, ``step`` ...).

        Raises:
            ChecksumError: a file differs from the manifest (the message names it).
            StateDictError: keys or shapes disagree (strict). MLMFError: a part is missing.
        """
        record = self.get(which)
        with events.activity("checkpoint-load", used=[record.path],
                             params={"step": record.step}) as act:
            weights = weight_file_names(record.path) if verify else []
            if verify:  # the weight files are checked as they are read (fill.fill_weights)
                verify_manifest(record.path, names=[n for n in record.files if n not in weights])
            if model is not None:
                fill_weights(model, record.path, strict, verify)
                act.generated.append(model)
            elif verify:
                verify_manifest(record.path, names=weights)
            for part, target in (("optimizer", optimizer), ("scheduler", scheduler)):
                if target is not None:
                    restore_part(record.path, record.files, part, target)
            if restore_rng:
                doc = read_json(member(record.path, "rng.json"), "the RNG state")
                _restore_rng(doc, load_state_dict(member(record.path, "rng.safetensors")),
                             record.path / "rng.json")
        return record

    def diff(self, a: Which | Mapping[str, torch.Tensor] | nn.Module,
             b: Which | Mapping[str, torch.Tensor] | nn.Module = "latest") -> CheckpointDiff:
        """Per-tensor differences from ``a`` to ``b``.

        Args:
            a: the reference: "latest", "best", a step, a record, a state dict or a model.
            b: the other side, same choices (default: the latest checkpoint).

        Returns:
            A ``CheckpointDiff``: relative change, cosine similarity and max abs difference per
            tensor, and the tensors added, removed or reshaped; a table in a notebook, drawn
            by ``ml.plots.plot_checkpoint_diff``.

        Raises:
            MLMFError: no such checkpoint.
        """
        sides = [self._weights_for_diff(x) for x in (a, b)]
        return diff_state_dicts(sides[0][1], sides[1][1], (sides[0][0], sides[1][0]))

    def _weights_for_diff(self, x: Any) -> tuple[str, Mapping[str, torch.Tensor]]:
        if isinstance(x, nn.Module):
            return type(x).__name__, x.state_dict()
        if isinstance(x, Mapping):
            return "state dict", x
        record = self.get(x)
        return f"step {record.step}", self.state_dict(record, verify=False)

    # -- housekeeping -------------------------------------------------------------------
    def _remove_leftovers(self) -> None:
        """Delete hidden folders that interrupted saves or deletions of dead processes left."""
        with os.scandir(self.root) as entries:
            stale = [e.path for e in entries if (m := _LEFTOVER.match(e.name)) and e.is_dir()
                     and not pid_alive(int(m.group(1)))]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)

    def _git_commit(self) -> str | None:
        if self._git is False:
            self._git = git_commit()
        return self._git

    def __repr__(self) -> str:
        return (f"<CheckpointManager {os.fspath(self.root)!r}: keep_last={self.keep_last}, "
                f"keep_best={self.keep_best} by {self.metric} ({self.mode})>")

    def as_dict(self) -> dict[str, Any]:
        """The retention settings and the checkpoints kept (``CheckpointList.as_dict``)."""
        return {"root": os.fspath(self.root), "keep_last": self.keep_last,
                "keep_best": self.keep_best, "mode": self.mode, **self.list().as_dict()}

    def rows(self) -> builtins.list[dict[str, Any]]:  # the method list shadows the type
        return self.list().rows()

    def _repr_html_(self) -> str:
        return self.list()._repr_html_()


def _state_of(model: Any, root: Path) -> dict[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return model.state_dict()
    if isinstance(model, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        return dict(model)
    raise MLMFError(f"expected an nn.Module or a dict of name -> tensor; got "
                    f"{type(model).__name__}", root)


def _plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics with one-element tensors and numpy scalars turned into Python numbers."""
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        elif isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v
    return out


def _json_part(value: Any, what: str) -> Any:
    skeleton, tensors = split_state(value)
    if tensors:
        raise MLMFError(f"{what} holds tensors ({', '.join(list(tensors)[:3])}); it is stored as "
                        "JSON: pass numbers, or keep tensors in the model's state dict")
    return skeleton
