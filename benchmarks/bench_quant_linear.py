"""Quantized linear forward: fp32 vs int8 vs q4_0 on a 4096x4096 layer, batch 1 and 32.

The "linear" section of ``bench_quant.py`` (also runnable alone:
``.venv/bin/python benchmarks/bench_quant_linear.py [--quick]``, prints without saving).

Every candidate computes ``x @ W.T + b`` for the same ``W``; times are per call, medians over
rounds in which all candidates run in turn (so load from other processes hits them alike).
The relative output error is against the float32 layer. Weight memory is what the layer
holds for its weights, and the resident-memory growth per layer measured by building four
of them (after ``malloc_trim``, Linux) checks it.

``int8-rowwise`` is our own kernel (C with AVX512-VNNI: row-by-row dots up to 4 rows, a tiled
int8 GEMM beyond, activations quantized per row); ``fbgemm-int8`` wraps torch's dynamic
quantized linear; ``q4_0-vnni`` is our own q4_0 x q8_0 kernel (llama.cpp's scheme) and ``int4pack``
torch's fused int4 kernel. Also measured in the same run: torch's ``_weight_int8pack_mm``
with float32 activations (the op behind our ``int8pack-bf16`` kernel, which feeds it
bfloat16), and our ``dequant`` kernel (dequantize into a reused buffer, then F.linear), the
path any scheme can take.

``section_busy``: the same layer at 1 and 2 threads while a bounded subprocess keeps a core
busy (a notebook server is rarely quiet). Per call means over back-to-back calls, so the
occasional stalled call counts; goal: 2 threads <= 1.2x the 1-thread time for our int8 and
q4_0 kernels.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import busy_neighbour, interleaved, table  # noqa: E402

import mlmf_lab as ml  # noqa: E402
from mlmf_lab.quant import QuantLinear  # noqa: E402

MiB = 2**20


def _rss() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed blocks back: RSS = live memory
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def rss_per_layer(build: Callable[[], object], count: int = 4) -> float:
    """Resident-memory growth (MiB) per object that ``build()`` returns, ``count`` kept alive."""
    build()  # warm-up: kernels' one-time probes and allocator pools
    before = _rss()
    kept = [build() for _ in range(count)]
    grown = _rss() - before
    del kept
    return grown / count / MiB


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def section_linear(quick: bool) -> str:
    n = 1024 if quick else 4096
    rounds = 3 if quick else 9
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(n, n)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, n, generator=g) / n**0.5)
        layer.bias.copy_(torch.randn(n, generator=g) * 0.1)
    w, b = layer.weight.detach(), layer.bias.detach()
    q8, q40 = ml.quant.quantize(w, "int8"), ml.quant.quantize(w, "q4_0")
    codes, scale = q8.data, q8.params["scale"]

    def quant_layer(qt: ml.quant.QTensor, kernel: str) -> QuantLinear:
        return QuantLinear(qt, b, kernel=kernel)

    layers = {
        "int8 · int8-rowwise (ours)": ("int8", quant_layer(q8, "int8-rowwise")),
        "int8 · fbgemm-int8 (ours)": ("int8", quant_layer(q8, "fbgemm-int8")),
        "int8 · int8pack-bf16 (ours)": ("int8", quant_layer(q8, "int8pack-bf16")),
        "int8 · dequant (ours)": ("int8", quant_layer(q8, "dequant")),
        "q4_0 · q4_0-vnni (ours)": ("q4_0", quant_layer(q40, "q4_0-vnni")),
        "q4_0 · int4pack (ours)": ("q4_0", quant_layer(q40, "int4pack")),
        "q4_0 · dequant (ours)": ("q4_0", quant_layer(q40, "dequant")),
    }
    memory = {"fp32 · F.linear": (w.numel() * 4, rss_per_layer(lambda: torch.randn(n, n)))}
    for name, (scheme, lay) in layers.items():
        qt = q8 if scheme == "int8" else q40
        kernel = lay.kernel
        memory[name] = (lay.weight_nbytes, rss_per_layer(
            lambda qt=qt, kernel=kernel: QuantLinear(ml.quant.QTensor(
                qt.scheme, qt.shape, qt.data.clone(), dict(qt.params), qt.options), b, kernel)))
    memory["int8 · torch._weight_int8pack_mm f32"] = (codes.numel() + 4 * n, float("nan"))

    rows = []
    threads = [torch.get_num_threads()] if quick else sorted({1, torch.get_num_threads()})
    for nthreads, batch in [(t, size) for t in threads for size in (1, 32)]:
        torch.set_num_threads(nthreads)
        x = torch.randn(batch, n, generator=g)
        fns: dict[str, Callable[[], torch.Tensor]] = {
            "fp32 · F.linear": lambda x=x: F.linear(x, w, b)}
        for name, (_, lay) in layers.items():
            fns[name] = lambda x=x, lay=lay: lay(x)
        if batch == 1 or quick:  # float32 activations take ~1.5 s per call at batch 32
            fns["int8 · torch._weight_int8pack_mm f32"] = (
                lambda x=x: torch._weight_int8pack_mm(x, codes, scale) + b)
        with torch.inference_mode():
            ref = fns["fp32 · F.linear"]()
            errors = {k: rel(fn(), ref) for k, fn in fns.items()}
            inner = 20 if batch == 1 else 4
            times = {k: statistics.median(v) for k, v in interleaved(fns, inner, rounds).items()}
        base = times["fp32 · F.linear"]
        for name, t in times.items():
            held, grown = memory[name]
            rows.append([nthreads, batch, name, f"{t * 1e3:.3f}", f"{base / t:.2f}x",
                         f"{errors[name]:.4f}", f"{held / MiB:.1f}",
                         "-" if grown != grown else f"{grown:.1f}", f"{w.numel() * 4 / held:.1f}x"])
    torch.set_num_threads(threads[-1])
    header = ["threads", "batch", "kernel", "ms / call", "speed vs fp32", "rel. output error",
              "weight MiB held", "RSS MiB / layer", "memory vs fp32"]
    goals = ("Goals: int8 >= 3x faster than fp32 at batch 1 and >= 2x at batch 32 with "
             "relative output error <= 0.025; q4_0 no slower than fp32 at batch 1 with >= 7x "
             "less weight memory.")
    note = ("With 2 threads, any other busy process on this 2-core machine stalls torch's "
            "thread team for whole scheduler slices (fp32, fbgemm, int4pack); our int8 and "
            "q4_0 kernels then leave the team for threads of their own (see the "
            "busy-neighbour table below).")
    return (f"Forward of a {n}x{n} linear (float32 in and out)\n\n{goals} {note}\n\n"
            + table(header, rows))


def per_call(fn: Callable[[], object], calls: int) -> list[float]:
    """Seconds of each of ``calls`` back-to-back calls."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def section_busy(quick: bool) -> str:
    n = 1024 if quick else 4096
    rounds = 3 if quick else 10
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, n, generator=g) / n**0.5
    b = torch.randn(n, generator=g) * 0.1
    layers = {"int8 · int8-rowwise (ours)": QuantLinear(ml.quant.quantize(w, "int8"), b),
              "q4_0 · q4_0-vnni (ours)": QuantLinear(ml.quant.quantize(w, "q4_0"), b)}
    before = torch.get_num_threads()
    rows = []
    loads = []
    try:
        with busy_neighbour(600), torch.inference_mode():
            for batch in (1, 32):
                x = torch.randn(batch, n, generator=g)
                fns = {"fp32 · F.linear": lambda x=x: F.linear(x, w, b)}
                fns.update({name: lambda x=x, lay=lay: lay(x) for name, lay in layers.items()})
                calls = 200 if batch == 1 else 20
                for name, fn in fns.items():
                    times: dict[int, list[float]] = {1: [], 2: []}
                    for _ in range(rounds):  # 1 and 2 threads in turns, a warm-up call each
                        for threads in (1, 2):
                            torch.set_num_threads(threads)
                            fn()
                            times[threads] += per_call(fn, calls)
                    one, two = statistics.mean(times[1]), statistics.mean(times[2])
                    goal = "" if name.startswith("fp32") else (
                        "yes" if two <= 1.2 * one else "no")
                    rows.append([batch, name, f"{one * 1e3:.3f}", f"{two * 1e3:.3f}",
                                 f"{max(times[2]) * 1e3:.2f}", f"{two / one:.2f}x", goal])
                loads.append(os.getloadavg()[0])
    finally:
        torch.set_num_threads(before)
    header = ["batch", "kernel", "1 thread: ms / call (mean)", "2 threads: ms / call (mean)",
              "2 threads: slowest call (ms)", "2 threads / 1 thread", "<= 1.2x"]
    how = (f"Forward of a {n}x{n} linear while another process spins on a core (a bounded "
           f"subprocess), {rounds} rounds of back-to-back calls at 1 and 2 threads in turns; "
           "means over every call, stalls included. Load average (1 min) during the run: "
           f"{min(loads):.2f} to {max(loads):.2f} (the neighbour counts for 1).")
    return f"{how}\n\n" + table(header, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    quick = parser.parse_args().quick
    print(section_linear(quick))
    print(section_busy(quick))
