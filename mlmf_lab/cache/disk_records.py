"""Records of the disk cache: its refs as stored, its entries, and what a prune removed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import FormatError, MLMFError
from ..files import read_json
from ..tables import Column, Table, fields_dict
from ..units import human_bytes

REV_PATTERN = re.compile(r"[0-9a-f]{16}")  # what ``DiskCache.put`` names a snapshot revision


def read_ref(ref: Path) -> dict[str, Any] | None:
    """The record in the ref file ``ref`` (rev, files, size, created, ...), None if absent.

    Raises:
        MLMFError: a ref that cannot be read or is not a record the cache wrote; the message
            says that ``mlmf-lab cache prune`` removes it.
    """
    hint = "`mlmf-lab cache prune` removes it"
    try:
        record = read_json(ref, "the cache ref", expect=dict)
    except MLMFError as e:
        if not ref.exists():  # absent, or removed meanwhile by another process
            return None
        raise type(e)(f"{e.message}; {hint}", ref) from None
    files = record.get("files")
    if not (isinstance(record.get("rev"), str) and REV_PATTERN.fullmatch(record["rev"])
            and isinstance(files, dict) and files
            and all(isinstance(v, str) for v in files.values())
            and isinstance(record.get("size"), int)
            and isinstance(record.get("created"), (int, float))):
        raise FormatError("expected a ref as the cache writes it (rev: 16 hex digits, files: "
                          "name -> sha256, size, created), found other values; " + hint, ref)
    return record


class DiskEntry(NamedTuple):
    """One cached artifact.

    Attributes:
        key: its name in the cache.
        path: the file to load (single-file artifacts) or the snapshot folder.
        files: relative file name -> sha256 of its blob.
        size: bytes of its files (shared blobs counted in each entry).
        created: Unix time it was stored.
        last_used: Unix time it was last stored or fetched.
        meta: what the caller attached (operation, parameters, sources).
        rev: the snapshot revision (a hash of ``files``).
    """

    key: str
    path: Path
    files: Mapping[str, str]
    size: int
    created: float
    last_used: float
    meta: Mapping[str, Any]
    rev: str

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        """Its row in the cache's table: key, size, file count, operation, last use."""
        return [{"key": self.key, "size": self.size, "files": len(self.files),
                 "operation": self.meta.get("operation"), "last_used": self.last_used}]


COLUMNS = (Column("key", code=True), Column("size", fmt="bytes"), Column("files"),
           Column("operation"), Column("last_used", "last used", "time"))


class PruneReport(NamedTuple):
    """What ``prune`` removed (or would remove, with ``dry_run``)."""

    removed: tuple[DiskEntry, ...]
    freed_bytes: int
    remaining_bytes: int
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [row for e in self.removed for row in e.rows()]

    def table(self) -> Table:
        verb = "would remove" if self.dry_run else "removed"
        return Table(COLUMNS, self.rows(), notes=[
            f"{verb} {len(self.removed)} entries, freeing {human_bytes(self.freed_bytes)}; "
            f"{human_bytes(self.remaining_bytes)} remain"])


__all__ = ["COLUMNS", "DiskEntry", "PruneReport", "read_ref"]
