"""``mlmf-lab compare A B [--json] [--all] [--inputs FILE]`` (alias ``diff``): two models
side by side: weights tensor by tensor, and with ``--inputs`` activations and outputs."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..compare import compare
from ..errors import MLMFError
from . import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("compare", aliases=["diff"],
                       help="compare two models: weights, and activations/outputs with --inputs")
    p.add_argument("a", help="reference weight file or model folder (any format open_weights "
                             "reads, or a checkpoint step folder, verified against its "
                             "manifest; a Hugging Face model and its GGUF match by name)")
    p.add_argument("b", help="the other weight file or folder")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--all", action="store_true", help="also list tensors that are identical")
    p.add_argument("--inputs", type=Path, metavar="FILE",
                   help="token ids to run both models on: a safetensors file with input_ids "
                        "(and attention_mask), (batch, tokens); A and B must be model folders "
                        "or llama.cpp GGUF files")
    p.set_defaults(func=run)


def read_inputs(path: Path) -> dict[str, Any]:
    """``input_ids`` (and ``attention_mask``) from a safetensors file."""
    from ..formats import load_state_dict

    state = load_state_dict(path)
    if "input_ids" not in state:
        raise MLMFError(f"expected a tensor named input_ids; the file has "
                        f"{', '.join(state) or 'none'}", path)
    return {k: v for k, v in state.items() if k in ("input_ids", "attention_mask")}


def run(args: argparse.Namespace) -> int:
    inputs = read_inputs(args.inputs) if args.inputs is not None else None
    c = compare(args.a, args.b, inputs)
    doc = c.as_dict()
    table = c.weights.table()
    if not args.all:  # identical tensors are counted (and summarised), not listed
        doc["weights"]["tensors"] = [t for t in doc["weights"]["tensors"]
                                     if t["status"] != "same"]
        table = dataclasses.replace(table, rows=[r for r in table.rows if r["status"] != "same"])
    if args.json:
        print_json(doc)
        return 0
    print(table)
    print()
    print(c.table())
    if c.outputs is not None:
        print()
        print(c.outputs.table())
    return 0
