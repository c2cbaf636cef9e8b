"""``mlmf-lab cache ls|prune``: the disk cache of derived artifacts (dequantized, converted...)."""

from __future__ import annotations

import argparse
from typing import Any

from ..cache.disk import DiskCache, default_root
from ..cache.disk_records import PruneReport
from . import print_json


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
                           help="keep at most this many bytes, least recently used go first "
                                "(1000000, 10GB, 2GiB)")
            v.add_argument("--older-than", default=None,
                           help="remove artifacts unused for longer than this (7d, 12h, 30m, 45s)")
            v.add_argument("--dry-run", action="store_true",
                           help="show what would go, delete nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cache = DiskCache(args.root)
    record: DiskCache | PruneReport = (cache if args.verb == "ls" else
                   cache.prune(args.max_bytes, args.older_than, dry_run=args.dry_run))
    if args.json:
        print_json(record.as_dict())
    else:
        print(record.table())
    return 0
