"""Comparing two 1 GiB fp32 files: ml.compare (streamed) against loading both and diffing.

Each case runs in its own interpreter with the files in the page cache and reports wall
time and peak RSS above the interpreter's baseline (after imports). ml.compare reads one
tensor pair at a time into memory of its own (not through the memory map, whose touched
pages would stay resident), so its peak is a few tensors, whatever the file size.
Goal: peak RSS growth ≤ 0.3 GiB for two 1 GiB files.

    python benchmarks/bench_compare.py [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    current_rss_mib,
    peak_rss_mib,
    publish,
    reset_peak_rss,
    run_case,
    table,
)

CASES = {
    "ml.compare (weights: metrics, histograms, ΔW spectra)": "ml",
    "load_file both + per-tensor torch metrics (peer)": "naive",
}


def case(kind: str, a: str, b: str) -> None:
    """One measurement, in this (fresh) process; prints a JSON line."""
    import torch
    from safetensors.torch import load_file

    import mlmf_lab as ml

    torch.set_num_threads(1)
    base = current_rss_mib()
    reset_peak_rss()
    t0 = time.perf_counter()
    if kind == "ml":
        c = ml.compare(a, b)
        rel = c.weights.total.rel_change
    else:
        sa, sb = load_file(a), load_file(b)
        num = sum(float((sb[k].double() - sa[k].double()).square().sum()) for k in sa)
        rel = (num / sum(float(sa[k].double().square().sum()) for k in sa)) ** 0.5
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib() - base, "rel": rel}))


def main(quick: bool) -> None:
    import torch

    import mlmf_lab as ml

    n_tensors = 2 if quick else 16  # 64 MiB each
    with tempfile.TemporaryDirectory(dir=Path.home() if not quick else None) as tmp:
        a, b = Path(tmp) / "a.safetensors", Path(tmp) / "b.safetensors"
        g = torch.Generator().manual_seed(0)
        state = {f"model.layers.{i}.weight": torch.randn(4096, 4096, generator=g)
                 for i in range(n_tensors)}
        ml.save_state_dict(state, a)
        for t in state.values():  # b = a + small noise: every tensor changed
            t.add_(torch.randn(t.shape, generator=g), alpha=1e-3)
        ml.save_state_dict(state, b)
        del state
        file_mib = a.stat().st_size / 2**20
        for p in (a, b):  # warm the page cache
            p.read_bytes()
        results = {kind: run_case(__file__, "--case", kind, str(a), str(b))
                   for kind in CASES.values()}
    rows = [[label, f"{results[k]['seconds']:.1f} s", f"{results[k]['peak_rss_mib']:.0f} MiB",
             f"{results[k]['peak_rss_mib'] / (2 * file_mib):.2f}×",
             f"{results[k]['rel']:.6f}"] for label, k in CASES.items()]
    body = table(["case", "wall time", "peak RSS above baseline", "RSS / both files",
                  "‖ΔW‖/‖W‖"], rows)
    goal = (f"Goal: ml.compare's peak RSS growth ≤ 0.3 GiB for two {file_mib:.0f} MiB files "
            f"({results['ml']['peak_rss_mib'] / 1024:.2f} GiB).")
    how = (f"Two {file_mib:.0f} MiB fp32 safetensors files ({n_tensors} tensors of 4096×4096, "
           "b = a + 1e-3 noise) in the page cache; each case in a fresh interpreter; one "
           "torch thread.")
    publish("compare", "Comparing two weight files", how, body + "\n\n" + goal, quick)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        case(*sys.argv[2:5])
    else:
        main("--quick" in sys.argv)
