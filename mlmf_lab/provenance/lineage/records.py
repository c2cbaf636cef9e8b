"""Records the lineage store returns: entities, activities, histories and their differences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...tables import Column, Table, fields_dict, fields_row


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

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


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

    def as_dict(self) -> dict[str, Any]:
        """JSON data, the entities on either side in full."""
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        """Its row in a history: name, parameters set, entities used and generated."""
        return [{"activity": self.name,
                 "params": {k: v for k, v in self.params.items() if v is not None},
                 "used": [e.short() for e in self.used],
                 "generated": [e.short() for e in self.generated]}]


def stored_entity(id: str, kind: str, label: str, path: str | None, sha256: str | None,
                  hash_kind: str | None, created: float, attrs: dict[str, Any]) -> Entity:
    """``Entity(...)`` of values the store has checked, set straight into the record: a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, twice the
    time (a long ``Lineage.history`` builds hundreds). There is no ``__post_init__`` to skip;
    a test keeps both ways equal."""
    record = _new(Entity)
    record.__dict__.update(id=id, kind=kind, label=label, path=path, sha256=sha256,
                           hash_kind=hash_kind, created=created, attrs=attrs)
    return record


def stored_activity(id: str, name: str, started: float, ended: float, params: dict[str, Any],
                    agent: dict[str, Any], used: tuple[Entity, ...],
                    generated: tuple[Entity, ...], pid: int) -> Activity:
    """``Activity(...)`` of values the store has checked (as ``stored_entity``)."""
    record = _new(Activity)
    record.__dict__.update(id=id, name=name, started=started, ended=ended, params=params,
                           agent=agent, used=used, generated=generated, pid=pid)
    return record


_new = object.__new__

ACTIVITY_COLUMNS = (Column("activity"), Column("params", "parameters", lambda params: ", ".join(
    f"{k}={v}" for k, v in params.items())), Column("used"), Column("generated"))


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

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target.as_dict(), "steps": [a.as_dict() for a in self.steps],
                "origins": [e.as_dict() for e in self.origins]}

    def rows(self) -> list[dict[str, Any]]:
        """One row per activity, numbered from the oldest (``Activity.rows``)."""
        return [{"step": i, **row} for i, a in enumerate(self.steps, 1) for row in a.rows()]

    def table(self) -> Table:
        origins = ", ".join(e.short() for e in self.origins) or "none recorded"
        return Table([Column("step", "#"), *ACTIVITY_COLUMNS], self.rows(),
                     title=f"How {self.target.short()} was made", notes=[f"origins: {origins}"])

    def _repr_html_(self) -> str:
        return self.table().html()


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

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        """One row per activity: whose history holds it ("both" for the shared ones)."""
        sides = [("both", self.common), (self.a.short(), self.only_a),
                 (self.b.short(), self.only_b)]
        return [{"history_of": side, "activity": x.describe()} for side, acts in sides
                for x in acts]

    def table(self) -> Table:
        return Table([Column("history_of", "history of"), Column("activity")], self.rows())

    def _repr_html_(self) -> str:
        return self.table().html()
