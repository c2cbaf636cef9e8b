"""``mlmf-lab inspect PATH [--json]``: format, metadata, tensor table and totals."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from ..formats import open_weights
from . import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show a weight file's format, metadata and tensors")
    p.add_argument("path", help="weight file, *.index.json, or a folder holding one")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_weights(args.path) as wf:
        if args.json:
            print_json(wf.as_dict())
            return 0
        table, metadata = wf.table(), wf.metadata
    print(f"{os.fspath(wf.path)}\nformat: {wf.format}")
    if metadata:
        print("metadata:")
        for k, v in metadata.items():
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            print(f"  {k}: {text[:100] + '…' if len(text) > 100 else text}")
    print(dataclasses.replace(table, title=""))
    return 0
