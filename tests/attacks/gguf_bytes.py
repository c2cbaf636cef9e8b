"""GGUF files built by hand for the tests: bytes (not our writer), and raw K-quant blocks.

Helpers, not tests: ``s``/``kv``/``info``/``gguf_bytes`` assemble a file piece by piece, so
a test can break exactly one rule of the format; ``split_gguf``/``join_gguf`` take a valid
file apart and put it back (the fuzzer changes one part); ``mixed_state`` is the tensors
the GGUF tests write; ``k_blocks`` makes K-quant blocks with
random codes and finite scales (gguf-py has no quantizer for the K types).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

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


def info(name: str | bytes, dims: tuple[int, ...], type_id: int = 0, offset: int = 0,
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


# -- a GGUF file as its parts, for the mutator: change one field, join, and the rest holds --
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Field(NamedTuple):
    """One key/value pair: the key's bytes, the value type, and the value's raw bytes."""

    key: bytes
    vtype: int
    value: bytes


class Info(NamedTuple):
    """One tensor info: dims innermost first, as stored."""

    name: bytes
    dims: tuple[int, ...]
    type_id: int
    offset: int


class Parts(NamedTuple):
    version: int
    fields: list[Field]
    infos: list[Info]
    data: bytes
    align: int


def _value_end(raw: bytes, at: int, vtype: int) -> int:
    if vtype in SCALAR_SIZES:
        return at + SCALAR_SIZES[vtype]
    if vtype == STRING:
        (n,) = struct.unpack_from("<Q", raw, at)
        return at + 8 + n
    item, count = struct.unpack_from("<IQ", raw, at)
    at += 12
    if item in SCALAR_SIZES:
        return at + count * SCALAR_SIZES[item]
    for _ in range(count):
        at = _value_end(raw, at, item)
    return at


def split_gguf(raw: bytes) -> Parts:
    """A valid GGUF file (little-endian, v2/v3) as its parts; ``join_gguf`` is the inverse."""
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", raw, 4)
    at = 24
    fields = []
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", raw, at)
        key = raw[at + 8 : at + 8 + n]
        (vtype,) = struct.unpack_from("<I", raw, at + 8 + n)
        start = at + 12 + n
        at = _value_end(raw, start, vtype)
        fields.append(Field(key, vtype, raw[start:at]))
    infos = []
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", raw, at)
        name = raw[at + 8 : at + 8 + n]
        (n_dims,) = struct.unpack_from("<I", raw, at + 8 + n)
        at += 12 + n
        dims = struct.unpack_from(f"<{n_dims}Q", raw, at)
        at += 8 * n_dims
        type_id, offset = struct.unpack_from("<IQ", raw, at)
        at += 12
        infos.append(Info(name, tuple(dims), type_id, offset))
    align = next((struct.unpack("<I", f.value)[0] for f in fields
                  if f.key == b"general.alignment" and f.vtype == UINT32), 32) or 32
    return Parts(version, fields, infos, raw[-(-at // align) * align :], align)


def join_gguf(p: Parts, counts: tuple[int, int] | None = None) -> bytes:
    """The bytes of ``p`` (``counts`` overrides the tensor and key/value counts)."""
    kvs = [kv(f.key, f.vtype, f.value) for f in p.fields]
    infos = [info(i.name, i.dims, i.type_id, i.offset) for i in p.infos]
    # padded to its alignment, up to 4 KiB: a stated 2**31 would make a 2 GiB case
    align = p.align if 0 < p.align <= 4096 and p.align & (p.align - 1) == 0 else 32
    return gguf_bytes(kvs, infos, p.data, struct.pack("<I", p.version & 0xFFFFFFFF), counts,
                      align)
