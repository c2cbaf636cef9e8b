"""``mlmf-lab diff A B [--json] [--all]``: how two weight files differ, tensor by tensor."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..compare import diff_state_dicts
from ..formats import load_state_dict
from . import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("diff", help="compare two weight files tensor by tensor")
    p.add_argument("a", help="reference weight file or folder (any format open_weights reads)")
    p.add_argument("b", help="the other weight file or folder")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--all", action="store_true", help="also list tensors that are identical")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    d = diff_state_dicts(load_state_dict(args.a), load_state_dict(args.b), (args.a, args.b))
    doc, table = d.as_dict(), d.table()
    if not args.all:  # identical tensors are counted (and summarised), not listed
        doc["tensors"] = [t for t in doc["tensors"] if t["status"] != "same"]
        table = dataclasses.replace(table, rows=[r for r in table.rows if r["status"] != "same"])
    if args.json:
        print_json(doc)
    else:
        print(table)
    return 0
