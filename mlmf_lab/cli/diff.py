"""``mlmf-lab diff A B [--json] [--all]``: how two weight files differ, tensor by tensor."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..compare import diff_state_dicts
from ..formats import load_state_dict


def register(sub: Any) -> None:
    p = sub.add_parser("diff", help="compare two weight files tensor by tensor")
    p.add_argument("a", help="reference weight file or folder (any format open_weights reads)")
    p.add_argument("b", help="the other weight file or folder")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--all", action="store_true", help="also list tensors that are identical")
    p.set_defaults(func=run)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


def run(args: argparse.Namespace) -> int:
    d = diff_state_dicts(load_state_dict(args.a), load_state_dict(args.b), (args.a, args.b))
    rows = [r for r in d.rows if args.all or r.status != "same"]
    if args.json:
        doc = {
            "counts": d.counts(),
            "tensors": [
                {
                    "name": r.name,
                    "status": r.status,
                    "shape_a": r.shape_a,
                    "shape_b": r.shape_b,
                    "rel_change": _num(r.rel_change),
                    "cosine": _num(r.cosine),
                    "max_abs": _num(r.max_abs),
                }
                for r in rows
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(d.summary())
    for r in rows:
        if r.status in ("changed", "same"):
            detail = f"rel {r.rel_change:.3g}  cos {r.cosine:.6f}  max|Δ| {r.max_abs:.3g}"
        else:
            detail = f"{list(r.shape_a or [])} -> {list(r.shape_b or [])}"
        print(f"  {r.status:8s} {r.name}  {detail}")
    return 0
