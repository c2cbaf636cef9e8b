"""``mlmf-lab convert IN OUT [--quant SCHEME]``."""

from __future__ import annotations

import argparse
from typing import Any

from ..convert import conversion
from ..formats.gguf_hf import describe_model


def register(sub: Any) -> None:
    p = sub.add_parser("convert", help="convert between safetensors, HF sharded, GGUF, ...")
    p.add_argument("src", help="input weight file or folder (also a PyTorch DCP folder)")
    p.add_argument("dst", help="output: x.safetensors, x.gguf, x.dcp (PyTorch DCP folder), "
                   "or a folder (HF sharded). A transformers model folder into x.gguf gives "
                   "a file llama.cpp runs; such a GGUF file into a folder gives a "
                   "transformers model folder (config.json, tokenizer)")
    p.add_argument("--quant", default=None,
                   help="quantize the output: a GGUF block type (q8_0, q6_k, q4_k, q4_0, ...) "
                   "for .gguf, int8 or int4 for .safetensors or a folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    done = conversion(args.src, args.dst, quant=args.quant)
    # a model for llama.cpp or transformers: what it holds (a model-level conversion read it
    # back already; a tensor-by-tensor one may still have written such a model)
    model = done.model if done.model is not None else describe_model(done.path)
    print("\n".join(model.lines()) if model is not None else f"wrote {done.path}")
    return 0
