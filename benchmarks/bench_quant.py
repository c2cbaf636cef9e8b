"""Quantization throughput: mlmf_lab's block maths against ``gguf.quants`` (numpy).

Sections (each a function returning a markdown table; ``main`` runs those in ``SECTIONS``):

1. ``dequantize``: per GGUF type, dequantizing a 4096x4096 tensor into a fresh tensor (vs
   ``gguf.quants.dequantize``, goal >= 2x faster) and into a reused float32 buffer, the path
   a quantized linear takes (vs a plain copy of the same 64 MiB output, goal within 3x).
   Block types run the fused C kernels (``quant.native``); the torch block functions they
   replace (``MLMF_NATIVE=0``) are timed too, into the reused buffer.
2. ``quantize``: quantizing the same tensor (vs ``gguf.quants.quantize``, goal >= 2x), and
   the K-quants against our q8_0 (goal: q4_k and q6_k <= 3x its time).
3. ``linear``: forward of a 4096x4096 linear at batch 1 and 32, fp32 vs int8 vs q4_0
   (time, relative output error, weight memory), in ``bench_quant_linear.py``.
4. ``busy``: our int8 and q4_0 linears at 1 and 2 threads with a busy neighbour on a core
   (goal: 2 threads <= 1.2x one), also in ``bench_quant_linear.py``.

Run: ``.venv/bin/python benchmarks/bench_quant.py [--quick]``. Each comparison times ours
and the peer back to back, repeatedly, after a warm-up; the table gives the medians and the
median of the per-pair ratios, so load from other processes affects both sides alike.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quant_linear import section_busy, section_linear  # noqa: E402
from common import interleaved, median_time, publish, table  # noqa: E402

import mlmf_lab as ml  # noqa: E402
from mlmf_lab.quant import blocks_k_quant as bkq  # noqa: E402
from mlmf_lab.quant import ggml, native  # noqa: E402

DEQUANT_SCHEMES = ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
                   "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "int8", "int4"]
QUANT_SCHEMES = ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k",
                 "int8", "int4"]
NO_PEER = "no such type in gguf"  # int8 / int4: our schemes, not GGUF's
K_VS_Q8 = ["q8_0", "q4_k", "q6_k"]
# where the fp16 scale fields sit in the K blocks we cannot produce ourselves
SCALE_SLOTS = {"q2_k": (80, 82), "q3_k": (108,), "q5_k": (0, 2)}


def weights(quick: bool) -> torch.Tensor:
    shape = (512, 1024) if quick else (4096, 4096)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def blocks_for(x: torch.Tensor, scheme: str) -> ml.quant.QTensor:
    """Realistic blocks: quantized from ``x``, or random codes with small finite scales."""
    if scheme not in SCALE_SLOTS:
        return ml.quant.quantize(x, scheme)
    bt = ggml.block_type(scheme)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 256, (x.shape[0], bt.row_bytes(x.shape[1])), dtype=torch.uint8,
                         generator=g)
    blocks = data.view(-1, bt.type_size)
    scale = torch.tensor([0.01], dtype=torch.float16).view(torch.uint8)
    for at in SCALE_SLOTS[scheme]:
        blocks[:, at : at + 2] = scale
    return ml.quant.QTensor(scheme, tuple(x.shape), data)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def quiet(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return run


def paired(ours: Callable[[], object], peer: Callable[[], object],
           repeat: int) -> tuple[float, float, float]:
    """Medians of ours, of the peer, and of their per-pair ratio, timed back to back."""
    s = interleaved({"ours": ours, "peer": peer}, calls=1, rounds=repeat)
    return (statistics.median(s["ours"]), statistics.median(s["peer"]),
            statistics.median(a / b for a, b in zip(s["ours"], s["peer"], strict=True)))


def section_dequantize(quick: bool) -> str:
    x = weights(quick)
    repeat = 3 if quick else 15
    out = torch.empty(x.numel())
    src = torch.randn(x.numel())
    rows = []
    for scheme in DEQUANT_SCHEMES:
        qt = blocks_for(x, scheme)
        qtype = gguf.GGMLQuantizationType.__members__.get(scheme.upper())
        if qtype is None:
            fresh = median_time(lambda qt=qt: ml.quant.dequantize(qt), max(3, repeat // 3))
            ref_ms, speed_up = NO_PEER, "-"
        else:
            raw = qt.data.numpy()
            fresh, ref, r_fresh = paired(
                lambda qt=qt: ml.quant.dequantize(qt),
                quiet(lambda raw=raw, q=qtype: gguf.quants.dequantize(raw, q)),
                max(3, repeat // 3))
            ref_ms, speed_up = ms(ref), f"{1 / r_fresh:.2f}x"
        into, copy, r_into = paired(lambda qt=qt: ml.quant.dequantize(qt, out=out),
                                    lambda: out.copy_(src), repeat)
        torch_into = "-"
        if native.dequantizer(scheme) is not None or (
                scheme == "int4" and native.int4_dequantizer() is not None):
            with mock.patch.dict(os.environ, {"MLMF_NATIVE": "0"}):
                torch_into = ms(median_time(lambda qt=qt: ml.quant.dequantize(qt, out=out),
                                            repeat))
        rows.append([scheme, f"{qt.bits_per_weight:g}", ms(fresh), ref_ms, speed_up,
                     ms(into), ms(copy), f"{r_into:.2f}x", torch_into])
    header = ["scheme", "bits/w", "ours, fresh (ms)", "gguf.quants (ms)",
              "speed-up (goal >= 2x)", "ours, into out= (ms)", "plain copy (ms)",
              "vs copy (goal <= 3x)", "torch path, into out= (ms)"]
    return f"Dequantize a {x.shape[0]}x{x.shape[1]} tensor to float32\n\n" + table(header, rows)


def section_quantize(quick: bool) -> str:
    x = weights(quick)
    xn = x.numpy()
    repeat = 3 if quick else 5
    rows = []
    for scheme in QUANT_SCHEMES:
        qtype = gguf.GGMLQuantizationType.__members__.get(scheme.upper())
        try:
            has_peer = qtype is not None and gguf.quants.quantize(xn[:32], qtype) is not None
        except NotImplementedError:
            has_peer = False
        if has_peer:
            ours, ref, r = paired(lambda s=scheme: ml.quant.quantize(x, s),
                                  quiet(lambda q=qtype: gguf.quants.quantize(xn, q)), repeat)
            rows.append([scheme, ms(ours), ms(ref), f"{1 / r:.2f}x"])
        else:
            ours = median_time(lambda s=scheme: ml.quant.quantize(x, s), repeat)
            rows.append([scheme, ms(ours), NO_PEER if qtype is None else
                         "not implemented in gguf", "-"])
    header = ["scheme", "ours (ms)", "gguf.quants (ms)", "speed-up (goal >= 2x)"]
    # K-quants against our q8_0, the block type that costs least: side by side, in turns
    k_times = interleaved({s: lambda s=s: ml.quant.quantize(x, s) for s in K_VS_Q8},
                          calls=1, rounds=repeat + 2)
    med = {s: statistics.median(v) for s, v in k_times.items()}
    k_rows = [[s, ms(med[s]), f"{med[s] / med['q8_0']:.2f}x",
               "" if s == "q8_0" else ("yes" if med[s] <= 3 * med["q8_0"] else "no")]
              for s in K_VS_Q8]
    native_k = "C (native/kquant.c)" if native.quantizer(
        "q4_k", 144, ggml.block_type("q4_k").quantize_blocks, bkq.sub_block_rms) else "torch"
    return (f"Quantize a {x.shape[0]}x{x.shape[1]} float32 tensor\n\n" + table(header, rows)
            + f"\n\nK-quant quantization ({native_k}, the same bytes as the torch reference) "
            "against q8_0 on the same tensor, timed in turns (medians):\n\n"
            + table(["scheme", "ms", "time vs q8_0", "<= 3x"], k_rows))


SECTIONS: list[Callable[[bool], str]] = [section_dequantize, section_quantize, section_linear,
                                         section_busy]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    body = "\n\n".join(section(args.quick) for section in SECTIONS)
    how = (
        f"torch {torch.__version__} with {torch.get_num_threads()} threads vs gguf-py "
        f"{importlib.metadata.version('gguf')} (numpy {np.__version__}). Ours and the peer "
        "run back to back, repeatedly, after a warm-up; medians of times and of per-pair "
        "ratios. Dequantization of block types uses the fused C kernels "
        f"({'built' if native.library() is not None else 'NOT available: torch path'}). "
        f"Load average (1 min) at the start: {load_start:.2f}."
    )
    publish("quant", "Quantization: mlmf_lab vs gguf.quants (numpy)", how, body, args.quick)


if __name__ == "__main__":
    main()
