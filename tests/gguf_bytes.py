"""GGUF files built by hand for the tests: bytes (not our writer), and raw K-quant blocks.

Helpers, not tests: ``s``/``kv``/``info``/``gguf_bytes`` assemble a file piece by piece, so
a test can break exactly one rule of the format; ``mixed_state`` is the tensors the GGUF
tests write; ``k_blocks`` makes K-quant blocks with
random codes and finite scales (gguf-py has no quantizer for the K types).
"""

from __future__ import annotations

import struct

import gguf
import numpy as np
import torch

STRING, ARRAY, UINT32, UINT8 = 8, 9, 4, 0
# byte offsets of the fp16 scale fields (d, dmin) in each K-quant block
SCALE_SLOTS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, vtype: int, value: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + value


def info(name: str, dims: tuple[int, ...], type_id: int = 0, offset: int = 0,
         n_dims: int | None = None) -> bytes:
    head = s(name) + struct.pack("<I", len(dims) if n_dims is None else n_dims)
    return head + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", type_id, offset)


def gguf_bytes(kvs: list[bytes] = (), infos: list[bytes] = (), data: bytes = b"",  # type: ignore[assignment]
               version: bytes = struct.pack("<I", 3), counts: tuple[int, int] | None = None,
               align: int = 32) -> bytes:
    n_tensors, n_kv = counts if counts is not None else (len(infos), len(kvs))
    raw = b"GGUF" + version + struct.pack("<QQ", n_tensors, n_kv) + b"".join(kvs) + b"".join(infos)
    return raw + b"\0" * (-len(raw) % align) + data


def k_blocks(qtype: gguf.GGMLQuantizationType, rows: int, g: torch.Generator) -> np.ndarray:
    """``rows`` rows of one K-quant block each: random codes, fp16 1.0 for d and dmin."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    data = torch.randint(0, 256, (rows, size), dtype=torch.uint8, generator=g).numpy()
    for at in SCALE_SLOTS[qtype.name]:
        data[:, at : at + 2] = [0x00, 0x3C]
    return data


def mixed_state() -> dict[str, torch.Tensor]:
    """A small llama-like state: float dtypes, a norm, rows K types fit and rows they do not."""
    g = torch.Generator().manual_seed(0)
    return {
        "tok_embd.weight": torch.randn(16, 256, generator=g),
        "blk.0.attn_norm.weight": torch.randn(256, generator=g),
        "blk.0.ffn_up.weight": torch.randn(8, 256, generator=g).half(),
        "blk.0.ffn_down.weight": torch.randn(4, 512, generator=g).bfloat16(),
        "blk.0.attn_q.weight": torch.randn(4, 96, generator=g),  # K types fall back
        "odd.weight": torch.randn(3, 33, generator=g),  # no blocks fit: F32
        "positions": torch.arange(10, dtype=torch.int32),
        "cube": torch.randn(2, 3, 64, generator=g),
    }
