"""Opening a GGUF file with a Llama-3-sized tokenizer: our header parser against GGUFReader.

The file holds what makes real GGUF headers big: ``tokenizer.ggml.tokens`` (128,256
strings), ``tokenizer.ggml.token_type`` (128,256 int32) and ``tokenizer.ggml.merges``
(280,147 strings), plus a few small tensors. Three ways to open it are timed:
``ml.open_weights(path)`` (our parser, the default), ``ml.open_weights(path, reader="gguf")``
(``gguf.GGUFReader`` turned into the same metadata) and a bare ``gguf.GGUFReader(path)``.

    python benchmarks/bench_gguf_open.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import gguf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, publish, table  # noqa: E402

import mlmf_lab as ml  # noqa: E402

N_TOKENS, N_MERGES = 128_256, 280_147  # Llama 3's vocabulary and merge list


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


def main(quick: bool) -> None:
    n_tokens, n_merges = (N_TOKENS // 16, N_MERGES // 16) if quick else (N_TOKENS, N_MERGES)
    repeat = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama3-tokenizer.gguf"
        meta = tokenizer_metadata(n_tokens, n_merges)
        ml.save_state_dict(tensors(), path, metadata=meta, quant="q8_0")
        size_mib = path.stat().st_size / 2**20
        cases = {
            "ml.open_weights(path) (our parser, default)": lambda: ml.open_weights(path).close(),
            'ml.open_weights(path, reader="gguf") (our check, then GGUFReader, converted)':
                lambda: ml.open_weights(path, reader="gguf").close(),
            "gguf.GGUFReader(path) (bare, fields not converted)": lambda: gguf.GGUFReader(path),
        }
        with ml.open_weights(path) as ours, ml.open_weights(path, reader="gguf") as theirs:
            assert ours.metadata == theirs.metadata  # the same result, whichever reader
            assert len(ours.metadata["tokenizer.ggml.merges"]) == n_merges
        seconds = {name: median_time(fn, repeat) for name, fn in cases.items()}
    base = next(iter(seconds.values()))
    rows = [[name, f"{s:.2f} s", f"{s / base:.1f}×"] for name, s in seconds.items()]
    body = table(["case", "time to open (median)", "vs ours"], rows)
    how = (
        f"One GGUF file ({size_mib:.1f} MiB, in the page cache) with {n_tokens:,} tokens, "
        f"{n_tokens:,} int32 token types, {n_merges:,} merges and 4 small tensors; each case "
        f"opened {repeat} times after one warm-up in the same process, median wall time."
    )
    publish("gguf_open", "Opening a GGUF file with a Llama-3-sized vocabulary", how, body, quick)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
