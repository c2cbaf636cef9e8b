"""Loading a 1 GiB fp32 state dict: ml.open_weights / ml.load_state_dict against peers.

Each case runs in its own interpreter, with the file already in the page cache, and
reports wall time and peak RSS above the interpreter's baseline (after imports).

    python benchmarks/bench_loading.py [--quick]
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
    "ml.open_weights (open only)": "open",
    "ml.load_state_dict + touch": "ml",
    "safetensors.torch.load_file + touch": "safetensors",
    "torch.load(mmap, weights_only) + touch": "torch",
    "plain read into memory + touch (reference)": "copy",
}


def case(kind: str, st_path: str, pt_path: str) -> None:
    """One measurement, in this (fresh) process; prints a JSON line."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    import mlmf_lab as ml

    torch.set_num_threads(1)
    base = current_rss_mib()
    reset_peak_rss()

    def touch(tensors: dict) -> float:
        return float(sum(float(t.sum()) for t in tensors.values()))

    t0 = time.perf_counter()
    if kind == "open":
        wf = ml.open_weights(st_path)
        assert len(wf) > 0
    elif kind == "ml":
        touch(ml.load_state_dict(st_path))
    elif kind == "safetensors":
        touch(load_file(st_path))
    elif kind == "torch":
        touch(torch.load(pt_path, mmap=True, weights_only=True))
    else:
        size = Path(st_path).stat().st_size
        buf = np.empty(size // 4 + 1, dtype=np.float32)  # pages fault in as read fills them
        with open(st_path, "rb") as f:
            f.readinto(memoryview(buf).cast("B")[:size])
        float(torch.from_numpy(buf).sum())
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib() - base}))


def main(quick: bool) -> None:
    import torch

    import mlmf_lab as ml

    n_tensors = 2 if quick else 16  # 64 MiB each
    with tempfile.TemporaryDirectory(dir=Path.home() if not quick else None) as tmp:
        st, pt = Path(tmp) / "m.safetensors", Path(tmp) / "m.pt"
        state = {f"layer{i}.weight": torch.full((4096, 4096), float(i)) for i in range(n_tensors)}
        ml.save_state_dict(state, st)
        torch.save(state, pt)
        del state
        file_mib = st.stat().st_size / 2**20
        for p in (st, pt):  # warm the page cache
            p.read_bytes()
        rows, results = [], {}
        for kind in CASES.values():
            runs = [run_case(__file__, "--case", kind, str(st), str(pt)) for _ in range(3)]
            best = min(runs, key=lambda r: r["seconds"])
            results[kind] = best
        ref = results["safetensors"]["seconds"]
        for label, kind in CASES.items():
            r = results[kind]
            ratio = "" if kind == "open" else f"{r['seconds'] / ref:.2f}×"
            rows.append(
                [
                    label,
                    f"{r['seconds'] * 1e3:.1f} ms",
                    ratio,
                    f"{r['peak_rss_mib']:.0f} MiB",
                    f"{r['peak_rss_mib'] / file_mib:.2f}×",
                ]
            )
    body = table(
        ["case", "wall time", "time vs safetensors", "peak RSS above baseline", "RSS / file size"],
        rows,
    )
    goals = (
        f"Goals: open ≤ 5 ms ({results['open']['seconds'] * 1e3:.2f} ms); load+touch ≤ 1.1× "
        f"safetensors ({results['ml']['seconds'] / ref:.2f}×); peak RSS ≤ 1.1× file size "
        f"({results['ml']['peak_rss_mib'] / file_mib:.2f}×)."
    )
    how = (
        f"A {file_mib:.0f} MiB fp32 state dict ({n_tensors} tensors of 4096×4096) in the page "
        "cache; each case in a fresh interpreter (best of 3); 'touch' sums every tensor; "
        "one torch thread."
    )
    publish("loading", "Loading weight files", how, body + "\n\n" + goals, quick)


if __name__ == "__main__":
    if "--case" in sys.argv:
        i = sys.argv.index("--case")
        case(*sys.argv[i + 1 : i + 4])
    else:
        main(quick="--quick" in sys.argv)
