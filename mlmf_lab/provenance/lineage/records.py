"""Records the lineage store returns: entities, activities, histories and their differences."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Entity:
    """One thing that activities use or generate: a file, a folder, or a live object's state.

    Attributes:
        id: store-wide unique id.
        kind: ``"weights"``, ``"adapter"``, ``"checkpoint"``, ``"folder"``, ``"file"``,
            ``"model"``, ``"state_dict"``, ``"tensor"`` or ``"object"``.
        label: short human name (file name, or class name and version for live objects).
        path: absolute path for files and folders, else None.
        sha256: content hash (see ``lineage.hashing``), None for live objects.
        hash_kind: ``"tensors"`` or ``"bytes"`` (what ``sha256`` covers), or None.
        created: when the store first saw it (seconds since the epoch).
        attrs: extra facts (tensor count, class name, ...).
    """

    id: str
    kind: str
    label: str
    path: str | None = None
    sha256: str | None = None
    hash_kind: str | None = None
    created: float = 0.0
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_file(self) -> bool:
        return self.path is not None

    def short(self, hashes: bool = True) -> str:
        """``label`` plus the first hex digits of the hash, e.g. ``base.safetensors@1a2b3c4d``."""
        return f"{self.label}@{self.sha256[:8]}" if self.sha256 and hashes else self.label


@dataclass(frozen=True)
class Activity:
    """One recorded operation with what it used and generated.

    Attributes:
        id: store-wide unique id.
        name: ``"load"``, ``"save"``, ``"convert"``, ``"quantize"``, ``"lora-inject"``, ...
        started, ended: seconds since the epoch.
        params: the operation's parameters as recorded (JSON values).
        agent: user, host, versions and git commit of the process that ran it.
        used, generated: the entities on either side.
        pid: the process id that recorded it.
    """

    id: str
    name: str
    started: float
    ended: float
    params: dict[str, Any] = field(compare=False, hash=False)
    agent: dict[str, Any] = field(compare=False, hash=False)
    used: tuple[Entity, ...] = ()
    generated: tuple[Entity, ...] = ()
    pid: int = 0

    def describe(self, hashes: bool = True) -> str:
        """``quantize(scheme=int8): TinyNet -> TinyNet v2`` (files with ``@hash`` unless off)."""
        shown = {k: v for k, v in self.params.items() if v is not None}
        args = ", ".join(f"{k}={v}" for k, v in shown.items())
        ins = ", ".join(e.short(hashes) for e in self.used) or "nothing"
        outs = ", ".join(e.short(hashes) for e in self.generated) or "nothing"
        return f"{self.name}({args}): {ins} -> {outs}"


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{esc(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass(frozen=True)
class History:
    """How an entity was made: the activities that led to it, oldest first.

    Attributes:
        target: the entity asked about.
        steps: every activity that generated the target or one of its ancestors.
        origins: ancestors that no recorded activity generated (where it all comes from).
    """

    target: Entity
    steps: tuple[Activity, ...]
    origins: tuple[Entity, ...]

    def text(self, hashes: bool = True) -> str:
        """The chain as numbered lines; ``hashes=False`` leaves out the content hashes."""
        lines = [f"How {self.target.short(hashes)} was made:"]
        if not self.steps:
            lines.append("  no recorded activity generated it (an original input)")
        lines += [f"  {i}. {a.describe(hashes)}" for i, a in enumerate(self.steps, 1)]
        if self.origins:
            lines.append("Origins: " + ", ".join(e.short(hashes) for e in self.origins))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def __len__(self) -> int:
        return len(self.steps)

    def _repr_html_(self) -> str:
        rows = [
            (str(i), a.name, ", ".join(f"{k}={v}" for k, v in a.params.items() if v is not None),
             ", ".join(e.short() for e in a.used), ", ".join(e.short() for e in a.generated))
            for i, a in enumerate(self.steps, 1)
        ]
        origins = ", ".join(e.short() for e in self.origins) or "none recorded"
        return (f"<div><b>How {html.escape(self.target.short())} was made</b>"
                + _table(rows, ("#", "activity", "parameters", "used", "generated"))
                + f"origins: {html.escape(origins)}</div>")


@dataclass(frozen=True)
class HistoryDiff:
    """Where two entities' histories part: shared steps, then each one's own."""

    a: Entity
    b: Entity
    common: tuple[Activity, ...]
    only_a: tuple[Activity, ...]
    only_b: tuple[Activity, ...]

    def text(self, hashes: bool = True) -> str:
        """Shared steps, then each side's own; ``hashes=False`` leaves out content hashes."""
        def block(title: str, acts: tuple[Activity, ...]) -> list[str]:
            return [title] + [f"  - {x.describe(hashes)}" for x in acts] + (
                [] if acts else ["  (none)"])

        return "\n".join(
            block("Shared history:", self.common)
            + block(f"Only {self.a.short(hashes)}:", self.only_a)
            + block(f"Only {self.b.short(hashes)}:", self.only_b)
        )

    def __str__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        rows = ([("both", x.describe()) for x in self.common]
                + [(self.a.short(), x.describe()) for x in self.only_a]
                + [(self.b.short(), x.describe()) for x in self.only_b])
        return _table(rows, ("history of", "activity"))
