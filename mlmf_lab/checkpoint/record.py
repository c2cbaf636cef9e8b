"""What a checkpoint folder says about itself: ``CheckpointRecord`` and the list of them."""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ChecksumError, FormatError, MLMFError
from ..files import read_json, sha256_file
from ..tables import Column, Table, cell, fields_dict
from .files import MANIFEST, member, read_manifest
from .state import join_state

META = "meta.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    """``120`` -> ``"step-000120"`` (zero-padded for humans; order is always numeric)."""
    return f"step-{step:06d}"


def parse_step_dir(name: str) -> int | None:
    """The step of a finished checkpoint folder name, or None for anything else."""
    m = STEP_DIR.match(name)
    if not m:
        return None
    step = int(m.group(1))
    return step if name == step_dir_name(step) else None


@dataclass(frozen=True)
class CheckpointRecord:
    """One finished checkpoint, as its ``meta.json`` and manifest describe it.

    Attributes:
        step: the training step it was saved at.
        time: when it was saved (Unix seconds).
        metrics: the metrics passed to ``save``.
        size: bytes of all its files.
        path: its folder.
        extra: the ``extra`` passed to ``save`` (JSON values).
        files: the files its manifest lists.
        versions: library versions at save time; ``git``: the commit of the working directory.
    """

    step: int
    time: float
    metrics: dict[str, Any] = field(hash=False)
    size: int
    path: Path
    extra: Any = field(default=None, hash=False, repr=False)
    files: tuple[str, ...] = field(default=(), repr=False)
    versions: dict[str, str] = field(default_factory=dict, hash=False, repr=False)
    git: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def datetime(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.time, tz=_dt.UTC)

    def has(self, part: str) -> bool:
        """Whether the checkpoint holds ``part`` ("optimizer", "scheduler" or "rng")."""
        return f"{part}.json" in self.files

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON data, with its folder's ``name``."""
        return {**fields_dict(self), "name": self.name}

    def rows(self) -> list[dict[str, Any]]:
        """Its row in a checkpoint table (``CheckpointList.rows``)."""
        return CheckpointList([self]).rows()

    def _repr_html_(self) -> str:
        return CheckpointList([self])._repr_html_()


def read_record(folder: Path) -> CheckpointRecord:
    """The record of a finished checkpoint folder (no checksums are verified here).

    Raises:
        FormatError: the manifest or ``meta.json`` is missing or malformed, naming it.
    """
    files = read_manifest(folder)
    path = member(folder, META)
    if META not in files:
        raise FormatError(f"the manifest does not list {META}", folder)
    try:
        meta = read_json(path, "the checkpoint's metadata")
    except MLMFError as e:
        # A damaged file is a checksum failure (naming the file), not a puzzling parse error.
        if path.is_file() and sha256_file(path) != files[META]["sha256"]:
            raise ChecksumError("sha256 does not match the manifest; the file was changed or "
                                "corrupted", path) from None
        raise FormatError(e.message, path) from None
    if not isinstance(meta, dict) or type(meta.get("step")) is not int:
        raise FormatError("expected a JSON object with an integer 'step'", path)
    saved = meta.get("time", 0.0)
    if type(saved) not in (int, float) or not 0 <= saved < 2**40:  # 2**40 s: year 36812
        raise FormatError(f"'time' must be Unix seconds, found {str(saved)[:40]}", path)
    metrics = join_state(meta.get("metrics") or {}, {}, path)
    extra = join_state(meta.get("extra"), {}, path)
    if not isinstance(metrics, dict):
        raise FormatError(f"'metrics' must be an object, found {type(metrics).__name__}", path)
    versions = meta.get("versions") or {}
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise FormatError("'versions' must map library names to version strings", path)
    git = meta.get("git")
    if git is not None and not isinstance(git, str):
        raise FormatError(f"'git' must be a commit id or null, found {str(git)[:40]}", path)
    size = sum(e["size"] for e in files.values()) + (folder / MANIFEST).stat().st_size
    return CheckpointRecord(
        step=meta["step"], time=float(saved), metrics=metrics, size=size, path=folder,
        extra=extra, files=tuple(files), versions=versions, git=git,
    )


class CheckpointList(tuple[CheckpointRecord, ...]):
    """Checkpoints in step order; a table in a notebook, the best one marked with ★."""

    best_step: int | None
    metric: str | None

    def __new__(
        cls, records: Iterable[CheckpointRecord], best_step: int | None = None,
        metric: str | None = None,
    ) -> CheckpointList:
        self = super().__new__(cls, sorted(records, key=lambda r: r.step))
        self.best_step = best_step
        self.metric = metric
        return self

    @property
    def steps(self) -> list[int]:
        return [r.step for r in self]

    def rows(self) -> list[dict[str, Any]]:
        """Plain rows (step, time, size, folder, each metric) for printing or a DataFrame."""
        return [
            {"step": r.step, "time": r.datetime.isoformat(timespec="seconds"),
             "size": r.size, "folder": r.name, **r.metrics, "best": r.step == self.best_step}
            for r in self
        ]

    def as_dict(self) -> dict[str, Any]:
        """The checkpoints as JSON data, and which one is best by which metric."""
        return {"best_step": self.best_step, "metric": self.metric,
                "checkpoints": [r.as_dict() for r in self]}

    def table(self) -> Table:
        """One row per checkpoint, a column per metric, the best one starred."""
        keys: list[str] = []
        for r in self:
            keys.extend(k for k in r.metrics if k not in keys)
        title = f"{len(self)} checkpoint{'s' if len(self) != 1 else ''}"
        if self:
            title += f" in {os.fspath(self[0].path.parent)}"
        if self.metric and self.best_step is not None:
            title += f" (★ best by {self.metric})"
        return Table(
            [Column("step"), Column("best", "", lambda best: "★" if best else ""),
             Column("time", "saved (UTC)", lambda iso: iso[:19].replace("T", " ")),
             *[Column(k, f"{k} ★" if k == self.metric else k, _metric) for k in keys],
             Column("size", fmt="bytes"), Column("folder", code=True)],
            self.rows(), title=title)

    def _repr_html_(self) -> str:
        return self.table().html()


def _metric(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else cell(v)
