"""``mlmf-lab inspect PATH [--json]``: format, metadata, tensor table and totals."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..formats import open_weights
from ..units import human_bytes


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show a weight file's format, metadata and tensors")
    p.add_argument("path", help="weight file, *.index.json, or a folder holding one")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_weights(args.path) as wf:
        info = wf.summary()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['path']}\nformat: {info['format']}")
    if info["metadata"]:
        print("metadata:")
        for k, v in info["metadata"].items():
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            print(f"  {k}: {text[:100] + '…' if len(text) > 100 else text}")
    rows = [
        (
            t["name"],
            "×".join(map(str, t["shape"])) or "scalar",
            t["quant"] or t["dtype"],
            f"{t['bits_per_weight']:g}",
            human_bytes(t["nbytes"]),
        )
        for t in info["tensors"]
    ]
    header = ("name", "shape", "type", "bits/w", "bytes")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    by_type = ", ".join(f"{k} {human_bytes(v)}" for k, v in info["bytes_by_type"].items())
    print(
        f"total: {info['num_tensors']} tensors, {info['num_parameters']:,} parameters, "
        f"{human_bytes(info['nbytes'])} ({by_type})"
    )
    return 0
