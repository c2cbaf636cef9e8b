"""Opening a GGUF file with a Llama-3-sized tokenizer: our header parser against GGUFReader.

The file holds what makes real GGUF headers big: ``tokenizer.ggml.tokens`` (128,256
strings), ``tokenizer.ggml.token_type`` (128,256 int32) and ``tokenizer.ggml.merges``
(280,147 strings), plus a few small tensors. Timed: ``ml.open_weights(path)`` (our parser, the
default; the arrays are checked and skipped, decoded on first use; goal <= 0.1 s), the first
access of ``wf.metadata["tokenizer.ggml.tokens"]`` after an open (timed alone), every array
decoded (``dict(wf.metadata)`` after an open, timed with it), ``ml.open_weights(path,
reader="gguf")`` (``gguf.GGUFReader`` turned into the same metadata) and a bare
``gguf.GGUFReader(path)``.

    python benchmarks/bench_gguf_open.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import gguf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, publish, table  # noqa: E402

import mlmf_lab as ml  # noqa: E402

N_TOKENS, N_MERGES = 128_256, 280_147  # Llama 3's vocabulary and merge list
GOAL_OPEN_S = 0.1


def tokenizer_metadata(n_tokens: int, n_merges: int) -> dict[str, object]:
    """Llama-3-shaped tokenizer metadata (synthetic strings of realistic length)."""
    tokens = [f"tok_{i}" for i in range(n_tokens)]
    merges = [f"Ġt{i % 997} ok{i}" for i in range(n_merges)]
    token_type = [3 if i >= n_tokens - 256 else 1 for i in range(n_tokens)]  # control at the end
    return {
        "general.architecture": "llama",
        "general.name": "llama3-shaped tokenizer",
        "llama.context_length": 8192,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": token_type,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 128000,
        "tokenizer.ggml.eos_token_id": 128001,
    }


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "token_embd.weight": torch.randn(64, 256, generator=g),
        "blk.0.attn_norm.weight": torch.ones(256),
        "blk.0.attn_q.weight": torch.randn(256, 256, generator=g),
        "output_norm.weight": torch.ones(256),
    }


def first_access(path: Path, key: str, repeat: int) -> float:
    """Median seconds of the first ``wf.metadata[key]`` after an open (the open not timed),
    over ``repeat`` fresh opens after one warm-up."""
    times = []
    for _ in range(repeat + 1):
        with ml.open_weights(path) as wf:
            t0 = time.perf_counter()
            wf.metadata[key]
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def decode_all(path: Path) -> dict[str, object]:
    with ml.open_weights(path) as wf:
        return dict(wf.metadata)


def main(quick: bool) -> None:
    n_tokens, n_merges = (N_TOKENS // 16, N_MERGES // 16) if quick else (N_TOKENS, N_MERGES)
    repeat = 1 if quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama3-tokenizer.gguf"
        meta = tokenizer_metadata(n_tokens, n_merges)
        ml.save_state_dict(tensors(), path, metadata=meta, quant="q8_0")
        size_mib = path.stat().st_size / 2**20
        with ml.open_weights(path) as ours, ml.open_weights(path, reader="gguf") as theirs:
            assert ours.metadata == theirs.metadata  # the same result, whichever reader
            assert len(ours.metadata["tokenizer.ggml.merges"]) == n_merges
        open_ours = "ml.open_weights(path) (our parser, default; arrays decoded on first use)"
        seconds = {
            open_ours: median_time(lambda: ml.open_weights(path).close(), repeat),
            'then wf.metadata["tokenizer.ggml.tokens"] (first access, timed alone)':
                first_access(path, "tokenizer.ggml.tokens", repeat),
            "ml.open_weights(path) + dict(wf.metadata) (every array decoded)":
                median_time(lambda: decode_all(path), repeat),
            'ml.open_weights(path, reader="gguf") (our check, then GGUFReader, converted)':
                median_time(lambda: ml.open_weights(path, reader="gguf").close(), min(repeat, 3)),
            "gguf.GGUFReader(path) (bare, fields not converted)":
                median_time(lambda: gguf.GGUFReader(path), min(repeat, 3)),
        }
    base = seconds[open_ours]
    goal = "yes" if base <= GOAL_OPEN_S else "**no**"
    rows = [[name, f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s", f"{s / base:.1f}×",
             goal if name == open_ours else ""] for name, s in seconds.items()]
    body = table(["case", "time (median)", "vs open (ours)", f"open ≤ {GOAL_OPEN_S:g} s"], rows)
    how = (
        f"One GGUF file ({size_mib:.1f} MiB, in the page cache) with {n_tokens:,} tokens, "
        f"{n_tokens:,} int32 token types, {n_merges:,} merges and 4 small tensors; each case "
        f"run {repeat} times (GGUFReader's {min(repeat, 3)}) after one warm-up in the same "
        "process, median wall time. Our parser checks every length at open and skips the "
        "three arrays; each is decoded when its key is first read."
    )
    publish("gguf_open", "Opening a GGUF file with a Llama-3-sized vocabulary", how, body, quick)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
