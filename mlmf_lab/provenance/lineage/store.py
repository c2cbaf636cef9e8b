"""``ml.Lineage``: the provenance store that library operations record into.

>>> with ml.Lineage("lineage.db") as lin:          # doctest: +SKIP
...     sd = ml.load_state_dict("base.safetensors")
...     ml.save_state_dict(sd, "copy.safetensors")
>>> print(lin.history("copy.safetensors"))          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ... import events
from ...errors import ConfigError, MLMFError
from ...files import file_stamp
from ...runinfo import run_info
from ..hashing import ContentHash, content_hash
from . import export, query
from .agent import agent_id
from .db import Database
from .records import Activity, Entity, History, HistoryDiff
from .tracker import Item, Tracker, describe_item, is_path

if TYPE_CHECKING:
    import networkx as nx
    from prov.model import ProvDocument

_ACTIVE: list[Lineage] = []


def active_lineages() -> list[Lineage]:
    """The stores currently recording (each one records every operation)."""
    return list(_ACTIVE)


CHECKS = ("stamp", "content")


def _signature(p: Path) -> str:
    """What changes whenever the content may change through the file system (``file_stamp``:
    size, mtime, ctime and inode of every file)."""
    return hashlib.sha256(repr(file_stamp(p)).encode()).hexdigest()


def _jsonable(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _dedupe(items: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for x in items:
        key = ("path", str(Path(x).resolve())) if is_path(x) else ("obj", id(x))
        if key not in seen:
            seen.add(key)
            out.append(x)
    return out


class Lineage:
    """A lineage store in one SQLite file: entities, activities, agents and their relations.

    Args:
        path: the SQLite file (created if missing; its folder must exist). An existing file
            is checked read-only first (``lineage.schema``): another program's SQLite file,
            a changed schema or a corrupted file is refused and left as it was.
        check: how ``file_hash`` knows a file is unchanged: ``"stamp"`` trusts the hash
            cached for an unchanged ``file_stamp`` (one ``stat``; ``files.file_stamp`` says
            what it cannot see); ``"content"`` hashes the file again every time.

    Raises:
        MLMFError: the file is not a lineage store or cannot be opened.
        ConfigError: an unknown ``check``.

    Example:
        >>> lin = ml.Lineage.activate("lineage.db")   # doctest: +SKIP
        >>> ...                                      # every load/save/convert/... is recorded
        >>> lin.deactivate()                         # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str], *, check: str = "stamp") -> None:
        try:
            self.path = Path(path).resolve()
        except (OSError, RuntimeError) as e:  # a loop of links
            raise MLMFError(f"cannot open the lineage store ({e})", path) from None
        if check not in CHECKS:
            raise ConfigError(f"unknown check {check!r}; supported: {', '.join(CHECKS)}",
                              self.path)
        self.check = check
        if self.path.is_dir():
            raise MLMFError("expected a lineage store file, found a folder", self.path)
        if not self.path.parent.is_dir():
            raise MLMFError("the folder for the lineage store does not exist", self.path)
        self._db = Database(self.path)
        self._tracker = Tracker()

    # -- activation ------------------------------------------------------------------------
    @classmethod
    def activate(cls, path: str | os.PathLike[str]) -> Lineage:
        """Open the store at ``path`` and record every library operation into it."""
        return cls(path)._start()

    def _start(self) -> Lineage:
        if self not in _ACTIVE:
            _ACTIVE.append(self)
            events.LISTENERS.append(self._listen)
        return self

    def deactivate(self) -> None:
        """Stop recording (the store stays open for queries)."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
            events.LISTENERS.remove(self._listen)

    @property
    def active(self) -> bool:
        return self in _ACTIVE

    def __enter__(self) -> Lineage:
        return self._start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()

    def close(self) -> None:
        self.deactivate()
        self._db.close()

    def _listen(self, event: events.Event) -> None:
        # The user's operation succeeded; a failing store must not turn it into an error.
        try:
            self._write(event)  # nobody reads the record back: ``record`` does
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"lineage store {self.path}: could not record "
                          f"{event.activity!r}: {e}", RuntimeWarning, stacklevel=4)

    # -- recording -------------------------------------------------------------------------
    def file_hash(self, path: str | os.PathLike[str],
                  written: ContentHash | None = None) -> ContentHash:
        """Content hash of a file or folder, cached in the store by its ``file_stamp``
        (with ``check="content"``, hashed again every time). ``written``: the hash its writer
        computed from the bytes it just wrote (``events.report_hash``), stored as the hash
        of the file as it is now instead of reading the file back."""
        p = Path(path).resolve()
        sig = _signature(p)
        if written is None and self.check == "stamp":
            rows = self._db.query("SELECT signature, sha256, kind FROM file_hashes "
                                  "WHERE path = ?", (str(p),))
            if rows and rows[0]["signature"] == sig and _is_hash(rows[0]["sha256"]) \
                    and rows[0]["kind"] in ("tensors", "bytes"):
                return ContentHash(rows[0]["sha256"], rows[0]["kind"])
        h = written or content_hash(p)
        with self._db.write() as c:
            c.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)",
                      (str(p), sig, h.sha256, h.kind))
        return h

    def record(self, event: events.Event) -> Activity:
        """Write one finished operation (what the active store does for every event).

        Returns:
            The recorded ``Activity`` with its used and generated entities.
        """
        return self._db.activities("WHERE a.id = ?", (self._write(event),))[0]

    def _write(self, event: events.Event) -> str:
        """Write one finished operation; returns the id of its activity."""
        if event.activity not in events.ACTIVITIES:
            raise MLMFError(f"unknown activity {event.activity!r}; "
                            f"known: {', '.join(events.ACTIVITIES)}", self.path)
        used = [describe_item(x, event.activity, False, self._tracker)
                for x in _dedupe(event.used)]
        made = [describe_item(x, event.activity, True, self._tracker)
                for x in _dedupe(event.generated)]
        hashes = {id(it): self.file_hash(it.path, _written(event, it.path))
                  for it in used + made if it.path is not None and it.exists}
        agent = run_info()
        act_id = uuid.uuid4().hex
        with self._db.write() as c:
            c.execute("INSERT OR IGNORE INTO agents VALUES (?, ?, ?, ?, ?)",
                      (agent_id(agent), agent["user"], agent["host"],
                       json.dumps(agent["versions"], sort_keys=True), agent["git_commit"]))
            used_ids = [self._used_entity(c, it, hashes.get(id(it))) for it in used]
            made_ids = [self._new_entity(c, it, hashes.get(id(it))) for it in made]
            c.execute("INSERT INTO activities VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (act_id, event.activity, event.started, event.ended or time.time(),
                       _jsonable(event.params), agent_id(agent), os.getpid()))
            c.executemany("INSERT OR IGNORE INTO usages VALUES (?, ?, ?)",
                          [(act_id, e, "used") for e in used_ids]
                          + [(act_id, e, "generated") for e in made_ids])
            rows = [(g, u, act_id, "derived") for g in made_ids for u in used_ids if g != u]
            # An object changed in place by an activity that did not list it as used.
            rows += [(g, it.known, act_id, "revision") for g, it in zip(made_ids, made,
                     strict=True) if it.known and it.known not in used_ids]
            c.executemany("INSERT INTO derivations VALUES (?, ?, ?, ?)", rows)
        for it, e in [*zip(used, used_ids, strict=True), *zip(made, made_ids, strict=True)]:
            if it.live and it.known != e:
                self._tracker.remember(it.obj, e)
        return act_id

    def _insert(self, c: Any, it: Item, h: ContentHash | None, kind: str) -> str:
        eid = uuid.uuid4().hex
        c.execute("INSERT INTO entities VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (eid, kind, it.label, it.path, h.sha256 if h else None,
                   h.kind if h else None, time.time(), json.dumps(it.attrs, default=str)))
        return eid

    def _used_entity(self, c: Any, it: Item, h: ContentHash | None) -> str:
        if it.live:
            return it.known or self._insert(c, it, None, it.kind)
        if h is None:  # a path that no longer exists: the latest record of it
            row = c.execute("SELECT id FROM entities WHERE path = ? ORDER BY created DESC "
                            "LIMIT 1", (it.path,)).fetchone()
            return row[0] if row else self._insert(c, it, None, it.kind or "file")
        row = c.execute("SELECT id FROM entities WHERE path = ? AND sha256 = ? "
                        "ORDER BY created DESC LIMIT 1", (it.path, h.sha256)).fetchone()
        if row:
            return str(row[0])
        eid = self._insert(c, it, h, it.kind or _kind_of(it, h))
        same = c.execute("SELECT id FROM entities WHERE sha256 = ? AND id != ? "
                         "ORDER BY created DESC LIMIT 1", (h.sha256, eid)).fetchone()
        if same:  # a copy made outside the lab: same content, recorded elsewhere
            c.execute("INSERT INTO derivations VALUES (?, ?, NULL, 'alternate')", (eid, same[0]))
        return eid

    def _new_entity(self, c: Any, it: Item, h: ContentHash | None) -> str:
        kind = it.kind if it.live else (it.kind or _kind_of(it, h))
        return self._insert(c, it, h, kind)

    # -- lookups ---------------------------------------------------------------------------
    def entity(self, x: Any) -> Entity:
        """The entity for a path (by content, then by path), an entity id, or a live object.

        Raises:
            MLMFError: nothing in the store matches.
        """
        if isinstance(x, Entity):
            return x
        if isinstance(x, str) and len(x) == 32 and not Path(x).exists():
            rows = self._db.query("SELECT * FROM entities WHERE id = ?", (x,))
            if rows:
                return self._db.to_entity(rows[0])
        if is_path(x):
            return self._entity_for_path(Path(x).resolve())
        known = self._tracker.lookup(x)
        if known is None:
            raise MLMFError(f"this {type(x).__name__} was never used or generated by a "
                            "recorded operation in this process", self.path)
        return self._db.entity(known)

    def _entity_for_path(self, p: Path) -> Entity:
        if p.exists():
            h = self.file_hash(p)
            for sql, args in (("path = ? AND sha256 = ?", (str(p), h.sha256)),
                              ("sha256 = ?", (h.sha256,))):
                rows = self._db.query(f"SELECT * FROM entities WHERE {sql} "
                                      "ORDER BY created DESC LIMIT 1", args)
                if rows:
                    return self._db.to_entity(rows[0])
            raise MLMFError(f"not recorded in the lineage store {self.path}: no entity has "
                            f"this path or content hash {h.short()}", p)
        rows = self._db.query("SELECT * FROM entities WHERE path = ? ORDER BY created DESC "
                              "LIMIT 1", (str(p),))
        if not rows:
            raise MLMFError(f"no such file, and no record of it in {self.path}", p)
        return self._db.to_entity(rows[0])

    def entities(self, kind: str | None = None) -> list[Entity]:
        """Every entity (of one ``kind``), oldest first."""
        return query.entities(self._db, kind)

    def activities(self, name: str | None = None) -> list[Activity]:
        """Every recorded activity (named ``name``), oldest first."""
        return query.activities(self._db, name)

    # -- questions -------------------------------------------------------------------------
    def ancestors(self, x: Any) -> list[Entity]:
        """Everything ``x`` was derived from, nearest first."""
        return query.related(self._db, self.entity(x).id, up=True)

    def descendants(self, x: Any) -> list[Entity]:
        """Everything derived from ``x``, nearest first."""
        return query.related(self._db, self.entity(x).id, up=False)

    def history(self, x: Any) -> History:
        """How ``x`` was made: the chain of activities, oldest first (``print`` it)."""
        return query.history(self._db, self.entity(x))

    def origins(self, x: Any) -> list[Entity]:
        """Where ``x`` comes from: its ancestors that no recorded activity generated."""
        return list(self.history(x).origins)

    def diff(self, a: Any, b: Any) -> HistoryDiff:
        """The shared part of two histories and what only one of them has."""
        return query.diff(self._db, self.entity(a), self.entity(b))

    def _focus(self, focus: Any) -> Entity | None:
        return None if focus is None else self.entity(focus)

    def graph(self, focus: Any = None) -> nx.DiGraph:
        """A networkx graph (data-flow direction), the whole store or around ``focus``."""
        return export.to_networkx(self._db, self._focus(focus))

    def to_prov(self, focus: Any = None) -> ProvDocument:
        """A W3C PROV document (``prov.model.ProvDocument``) of the store or around ``focus``."""
        return export.to_prov(self._db, self._focus(focus))

    def export_prov(self, path: str | os.PathLike[str], focus: Any = None,
                    fmt: str = "json") -> Path:
        """Write PROV-JSON (or ``fmt="provn"``) to ``path``; read it back with ``read_prov``."""
        return export.write_prov(self.to_prov(focus), path, fmt)

    def __repr__(self) -> str:
        n_e, n_a = query.counts(self._db)
        state = "active" if self.active else "inactive"
        return f"<Lineage {os.fspath(self.path)!r} ({state}): {n_e} entities, {n_a} activities>"


def _written(event: events.Event, path: str) -> ContentHash | None:
    reported = event.hashes.get(path)
    return None if reported is None else ContentHash(*reported)


def _is_hash(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _kind_of(it: Item, h: ContentHash | None) -> str:
    if h is not None and h.kind == "tensors":
        return "weights"
    return "folder" if it.path and Path(it.path).is_dir() else "file"
