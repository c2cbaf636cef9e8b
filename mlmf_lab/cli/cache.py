"""``mlmf-lab cache ls|prune``: the disk cache of derived artifacts (dequantized, converted...)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..cache.disk import DiskCache, DiskEntry, default_root
from ..units import human_bytes


def register(sub: Any) -> None:
    p = sub.add_parser("cache", help="list or prune the disk cache of derived artifacts")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (("ls", "list cached artifacts, most recently used first"),
                       ("prune", "remove artifacts by age and total size")):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("--root", default=None,
                       help=f"cache folder (default: $MLMF_LAB_CACHE or {default_root()})")
        v.add_argument("--json", action="store_true", help="print machine-readable JSON")
        if verb == "prune":
            v.add_argument("--max-bytes", default=None,
                           help="keep at most this much, least recently used go first (10GB, 2GiB)")
            v.add_argument("--older-than", default=None,
                           help="remove artifacts unused for longer than this (7d, 12h, 30m, 45s)")
            v.add_argument("--dry-run", action="store_true",
                           help="show what would go, delete nothing")
    p.set_defaults(func=run)


def _row(e: DiskEntry) -> dict[str, Any]:
    return {"key": e.key, "path": str(e.path), "size": e.size, "files": dict(e.files),
            "created": e.created, "last_used": e.last_used, "meta": dict(e.meta)}


def _print_table(entries: list[DiskEntry]) -> None:
    rows = [(e.key, human_bytes(e.size), str(len(e.files)), str(e.meta.get("operation", "")),
             time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))) for e in entries]
    header = ("key", "size", "files", "operation", "last used")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def run(args: argparse.Namespace) -> int:
    cache = DiskCache(args.root)
    if args.verb == "ls":
        entries = cache.ls()
        if args.json:
            print(json.dumps({"root": str(cache.root), "total_bytes": cache.total_bytes(),
                              "entries": [_row(e) for e in entries]}, indent=2, default=str))
            return 0
        _print_table(entries)
        print(f"{len(entries)} entries, {human_bytes(cache.total_bytes())} on disk in {cache.root}")
        return 0
    report = cache.prune(args.max_bytes, args.older_than, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"removed": [_row(e) for e in report.removed],
                          "freed_bytes": report.freed_bytes,
                          "remaining_bytes": report.remaining_bytes,
                          "dry_run": args.dry_run}, indent=2, default=str))
        return 0
    _print_table(list(report.removed))
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report.removed)} entries, freeing {human_bytes(report.freed_bytes)}; "
          f"{human_bytes(report.remaining_bytes)} remain")
    return 0
