"""A content-addressed disk cache for derived artifacts (dequantized, converted, merged models).

The layout follows the Hugging Face hub cache::

    root/blobs/<sha256>                 file contents, named by their hash, read-only
    root/snapshots/<key>/<rev>/<name>   the artifact's files (hard links to the blobs);
                                        <rev> hashes the file list, as a commit would
    root/refs/<key>.json                what <key> holds: rev, files -> sha256, size, meta

Identical files across artifacts are stored once. Snapshots hold hard links rather than
symlinks so that a sharded checkpoint's folder stays self-contained (``ml.load_state_dict``
refuses links that leave the folder). Writes are atomic and in this order: blobs, then a
new snapshot folder (renamed into place whole, never touching the previous revision), then
the ref; an entry changes when its ref does, so a crash leaves the old entry or the new
one. A ref's mtime records its last use; ``prune`` removes by age and by total size (least
recently used first), then deletes blobs no ref holds. Changes are serialised across
processes with an ``flock`` on ``root/.lock``. ``get`` never serves a file whose bytes no
longer match their hash (``blobs``: checked by stamp, or by content on every get).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import ChecksumError, ConfigError, MLMFError
from ..files import sha256_file
from ..tables import Table
from ..units import human_bytes, parse_size
from .blobs import CHECKS, check_files, link, stamps, store_blob
from .collect import collect
from .disk_records import COLUMNS, DiskEntry, PruneReport, read_ref
from .keys import derive_key, parse_age

KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def default_root() -> Path:
    """``$MLMF_LAB_CACHE``, else ``$XDG_CACHE_HOME/mlmf_lab``, else ``~/.cache/mlmf_lab``."""
    if env := os.environ.get("MLMF_LAB_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlmf_lab"


class DiskCache:
    """A content-addressed folder of derived artifacts; see the module docstring.

    Args:
        root: the cache folder (created if missing); default ``default_root()``.
        check: how ``get`` makes sure a file still holds the bytes it was stored with:
            ``"stamp"`` re-hashes a file when its stamp moved since its bytes were last
            confirmed; ``"content"`` re-hashes every file on every get (also sees bytes
            changed under the file system; costs a full read). See ``cache.blobs``.

    Raises:
        ConfigError: an unknown ``check``.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *,
                 check: str = "stamp") -> None:
        if check not in CHECKS:
            raise ConfigError(f"unknown check {check!r}; supported: {', '.join(CHECKS)}", root)
        self.check = check
        self.root = Path(root) if root is not None else default_root()
        for sub in ("blobs", "snapshots", "refs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- paths and locking ----------------------------------------------------------------
    def _check_key(self, key: str) -> str:
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise ConfigError(f"a disk-cache key must match {KEY_PATTERN.pattern} "
                              f"(letters, digits, '.', '_', '-'), found {key!r}", self.root)
        return key

    def _ref(self, key: str) -> Path:
        return self.root / "refs" / f"{self._check_key(key)}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- writing --------------------------------------------------------------------------
    def put(self, key: str, source: str | os.PathLike[str], meta: Mapping[str, Any] | None = None,
            *, move: bool = False) -> DiskEntry:
        """Store a file or a folder of files under ``key`` (replacing what was there).

        Args:
            key: letters, digits, ``.``, ``_``, ``-`` (see ``derive_key``).
            source: the artifact: one file, or a folder (e.g. a sharded checkpoint).
            meta: JSON-able facts to keep with it (operation, parameters, sources).
            move: move the files in instead of copying them (for temporary outputs).

        Returns:
            The stored entry.

        Raises:
            ConfigError: a bad key. MLMFError: a source that is missing or empty.
        """
        self._check_key(key)
        src = Path(source)
        kind = "folder" if src.is_dir() else "file"
        if src.is_dir():
            members = sorted(p for p in src.rglob("*") if p.is_file())
            names = [p.relative_to(src).as_posix() for p in members]
        elif src.is_file():
            members, names = [src], [src.name]
        else:
            raise MLMFError("nothing to cache: expected a file or a folder", src)
        if not members:
            raise MLMFError("nothing to cache: the folder holds no files", src)
        with self._locked():
            files = {n: store_blob(self.root, p, move)
                     for n, p in zip(names, members, strict=True)}
            rev = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
            snap = self.root / "snapshots" / key / rev
            if not snap.is_dir():
                tmp = self.root / "tmp" / f"snap-{uuid.uuid4().hex}"
                for name, digest in files.items():
                    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                    link(self.root / "blobs" / digest, tmp / name)
                atomic.fsync_path(tmp)
                snap.parent.mkdir(exist_ok=True)
                os.rename(tmp, snap)
            size = sum((self.root / "blobs" / d).stat().st_size for d in files.values())
            record = {"key": key, "rev": rev, "files": files, "size": size,
                      "created": time.time(), "kind": kind, "meta": dict(meta or {}),
                      "stamps": stamps(snap, files)}
            self._write_ref(key, record)
            older = [old for old in snap.parent.iterdir() if old.name != rev]
            for old in older:  # earlier revisions of this key
                shutil.rmtree(old, ignore_errors=True)
            if older:  # unlinking moved the ctime of the blobs they shared: record it
                self._write_ref(key, {**record, "stamps": stamps(snap, files)})
        entry = self._entry(key)
        assert entry is not None
        return entry

    def _write_ref(self, key: str, record: Mapping[str, Any]) -> None:
        with atomic.replacing(self._ref(key)) as tmp_ref:
            tmp_ref.write_text(json.dumps(record, indent=1, default=repr), encoding="utf-8")

    def put_tensors(self, key: str, tensors: dict[str, Any], metadata: Mapping[str, Any] | None
                    = None, *, filename: str = "model.safetensors",
                    meta: Mapping[str, Any] | None = None) -> DiskEntry:
        """Save a state dict with ``ml.save_state_dict`` and store it under ``key``."""
        return self.get_or_create(
            key, lambda p: _save(tensors, p, metadata), filename=filename, meta=meta, force=True)

    def get_or_create(self, key: str, build: Callable[[Path], None], *,
                      filename: str = "model.safetensors", meta: Mapping[str, Any] | None = None,
                      force: bool = False) -> DiskEntry:
        """The entry for ``key``; on a miss ``build(path)`` writes it and it is stored.

        Args:
            build: writes the artifact at the path it gets (a file, or a folder there).
            filename: the name the artifact gets inside the snapshot.
            force: build and store even when the key is present.
        """
        if not force and (entry := self.get(key)) is not None:
            return entry
        work = self.root / "tmp" / f"build-{uuid.uuid4().hex}"
        work.mkdir()
        try:
            out = work / filename
            build(out)
            if not out.exists():
                raise MLMFError(f"the build function wrote nothing at {filename!r}", work)
            return self.put(key, out, meta, move=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- reading --------------------------------------------------------------------------
    def _entry(self, key: str) -> DiskEntry | None:
        record = read_ref(self._ref(key))
        if record is None:
            return None
        try:
            last_used = self._ref(key).stat().st_mtime
        except FileNotFoundError:
            return None
        snap = self.root / "snapshots" / key / record["rev"]
        files: dict[str, str] = record["files"]
        path = snap / next(iter(files)) if record.get("kind") == "file" else snap
        return DiskEntry(key, path, files, int(record["size"]), float(record["created"]),
                         last_used, record.get("meta", {}), record["rev"])

    def get(self, key: str) -> DiskEntry | None:
        """The entry for ``key`` (marking it used), or None when absent or incomplete."""
        entry = self._entry(key)
        if entry is None or not all((self.root / "blobs" / d).is_file()
                                    for d in entry.files.values()):
            return None
        snap = self.root / "snapshots" / key / entry.rev
        if not all((snap / n).is_file() for n in entry.files):
            return None
        bad, rehashed = check_files(snap, entry.files, self._confirmed(key), self.check)
        if bad:
            self._discard(entry, bad)
            return None
        if rehashed:
            self._reconfirm(entry)
        now = time.time()
        try:
            os.utime(self._ref(key), (now, now))
        except OSError:  # a read-only (shared) cache: usable, just not marked as used
            return entry
        return entry._replace(last_used=now)

    def _confirmed(self, key: str) -> dict[str, Any]:
        """name -> [sha256, *stamp] the ref recorded (empty if unreadable: re-hash all)."""
        try:
            found = (read_ref(self._ref(key)) or {}).get("stamps")
        except MLMFError:
            return {}
        return found if isinstance(found, dict) else {}

    def _reconfirm(self, entry: DiskEntry) -> None:
        """Record the stamps of files whose bytes were just re-hashed and found intact."""
        snap = self.root / "snapshots" / entry.key / entry.rev
        try:
            with self._locked():
                record = read_ref(self._ref(entry.key))
                if record is None or record["rev"] != entry.rev:
                    return  # replaced meanwhile: its own stamps stand
                self._write_ref(entry.key, {**record, "stamps": stamps(snap, entry.files)})
        except (OSError, MLMFError):  # read-only: re-hashed again next time
            return

    def _discard(self, entry: DiskEntry, bad: Mapping[str, str]) -> None:
        """Remove an entry whose files lost their bytes, and every blob that did."""
        with self._locked():
            self._unlink_entry(entry.key)
            for name in bad:
                blob = self.root / "blobs" / entry.files[name]
                if blob.is_file() and sha256_file(blob) != entry.files[name]:
                    blob.unlink()  # a later put stores good bytes instead of linking these
            self._collect()
        problems = "; ".join(f"{n}: expected sha256 {entry.files[n]}, found {found}"
                             for n, found in bad.items())
        warnings.warn(f"{self.root / 'snapshots' / entry.key}: disk cache entry {entry.key!r} "
                      f"lost its bytes and was removed, so it is rebuilt like a miss "
                      f"({problems})", RuntimeWarning, stacklevel=3)

    def __contains__(self, key: str) -> bool:
        return self._entry(key) is not None

    def ls(self) -> list[DiskEntry]:
        """Every entry, most recently used first.

        Raises:
            MLMFError: a ref that cannot be read (``prune`` removes such refs).
        """
        entries, unreadable = self._scan()
        if unreadable:
            raise next(iter(unreadable.values()))
        return entries

    def _scan(self) -> tuple[list[DiskEntry], dict[str, MLMFError]]:
        """Every readable entry (most recently used first), and key -> error of the others."""
        entries: list[DiskEntry] = []
        unreadable: dict[str, MLMFError] = {}
        for p in sorted((self.root / "refs").glob("*.json")):
            if KEY_PATTERN.fullmatch(p.stem):
                try:
                    entry = self._entry(p.stem)
                except MLMFError as e:
                    unreadable[p.stem] = e
                    continue
                if entry is not None:
                    entries.append(entry)
        return sorted(entries, key=lambda e: -e.last_used), unreadable

    def total_bytes(self) -> int:
        """Bytes on disk: every blob once (snapshots are hard links to them)."""
        return sum(p.stat().st_size for p in (self.root / "blobs").iterdir() if p.is_file())

    def verify(self, key: str) -> DiskEntry:
        """Re-hash an entry's blobs.

        Raises:
            MLMFError: the key is absent. ChecksumError: a blob's bytes no longer match its name.
        """
        entry = self._entry(key)
        if entry is None:
            raise MLMFError(f"{key!r} is not in the disk cache", self.root)
        for name, digest in entry.files.items():
            blob = self.root / "blobs" / digest
            found = sha256_file(blob) if blob.is_file() else "missing"
            if found != digest:
                raise ChecksumError(f"{name}: expected sha256 {digest}, found {found}", blob)
        return entry

    # -- removing -------------------------------------------------------------------------
    def remove(self, key: str) -> bool:
        """Delete one entry (its blobs go when no other entry holds them); False if absent."""
        with self._locked():
            if not self._ref(key).exists():
                return False
            self._unlink_entry(key)
            self._collect()
        return True

    def _unlink_entry(self, key: str) -> None:
        self._ref(key).unlink(missing_ok=True)  # first: the entry is gone from here on
        shutil.rmtree(self.root / "snapshots" / key, ignore_errors=True)

    def _collect(self) -> int:
        """Delete what no ref holds (``collect.collect``); returns bytes freed."""
        entries, unreadable = self._scan()
        return collect(self.root, entries, unreadable)

    def prune(self, max_bytes: int | str | None = None, older_than: float | str | None = None,
              *, dry_run: bool = False) -> PruneReport:
        """Remove entries unused for longer than ``older_than``, then least recently used
        ones until the blobs total at most ``max_bytes``.

        Args:
            max_bytes: e.g. ``"10GB"``; None = no size limit.
            older_than: e.g. ``"7d"`` or seconds since last use; None = no age limit.
            dry_run: report what would go, delete nothing.

        Refs that cannot be read are removed too (not with ``dry_run``), whatever the limits.

        Returns:
            A ``PruneReport``: removed entries, bytes freed, bytes remaining.
        """
        limit = None if max_bytes is None else parse_size(max_bytes, "max_bytes")
        age = None if older_than is None else parse_age(older_than)
        with self._locked():
            entries, unreadable = self._scan()
            entries.sort(key=lambda e: e.last_used)  # least recently used first
            sizes = {d: (self.root / "blobs" / d).stat().st_size
                     for e in entries for d in e.files.values()
                     if (self.root / "blobs" / d).is_file()}
            now = time.time()
            removed = [e for e in entries if age is not None and now - e.last_used > age]
            kept = [e for e in entries if e not in removed]

            def held(es: list[DiskEntry]) -> int:
                return sum(sizes.get(d, 0) for d in {d for e in es for d in e.files.values()})

            while limit is not None and kept and held(kept) > limit:
                removed.append(kept.pop(0))
            before, after = held(entries), held(kept)
            if not dry_run:
                for key in [*(e.key for e in removed), *unreadable]:
                    self._unlink_entry(key)
                collect(self.root, kept, ())  # under the lock: no ref to read again
        return PruneReport(tuple(removed), before - after, after, dry_run)

    # -- views ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"DiskCache({self.root}, {len(self.ls())} entries)"

    def as_dict(self) -> dict[str, Any]:
        """The root, the bytes on disk and every entry (most recently used first)."""
        return {"root": os.fspath(self.root), "total_bytes": self.total_bytes(),
                "entries": [e.as_dict() for e in self.ls()]}

    def rows(self) -> list[dict[str, Any]]:
        return [row for e in self.ls() for row in e.rows()]

    def table(self) -> Table:
        rows = self.rows()
        return Table(COLUMNS, rows, title=f"DiskCache {os.fspath(self.root)}: {len(rows)} "
                     f"entries, {human_bytes(self.total_bytes())} on disk")

    def _repr_html_(self) -> str:
        return self.table().html()


def _save(tensors: dict[str, Any], path: Path, metadata: Mapping[str, Any] | None) -> None:
    from ..formats import save_state_dict

    save_state_dict(tensors, path, metadata=dict(metadata) if metadata else None)


__all__ = ["DiskCache", "default_root", "derive_key", "parse_age"]
