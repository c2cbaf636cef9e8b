"""The GGUF (ggml) block types as quantization schemes: a table, a driver, registration.

Each ``BlockType`` names its pure block functions (``blocks_legacy``, ``blocks_k``,
``blocks_k_quant``); ``quantize_tensor`` and ``dequantize_tensor`` cut a tensor into rows of
blocks and run them chunk by chunk on a few single-threaded workers (``chunks.run_chunks``;
a chunk is thousands of blocks, never one), so temporaries stay in cache and a reused
``out`` buffer is written once.

A GGUF ``QTensor`` keeps ``data`` as ``uint8`` of shape ``(*shape[:-1], row_bytes)``: the
bytes exactly as a GGUF file stores them, one row of blocks per row of the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..errors import MLMFError, UnsupportedError
from . import blocks_k as bk
from . import blocks_k_quant as bkq
from . import blocks_legacy as bl
from . import native
from .base import QTensor, Scheme, float_out, register_scheme
from .chunks import run_chunks

CHUNK_WEIGHTS = 1 << 18  # weights per chunk: a chunk's output and temporaries stay in L2


class BlockType(NamedTuple):
    """One ggml storage type.

    Attributes:
        name: ggml's name, e.g. ``"Q8_0"`` (the scheme name is its lower case).
        type_id: the number GGUF files store for it.
        block_size: weights per block.
        type_size: bytes per block.
        dequantize_blocks: ``(blocks (n, type_size) uint8, out (n, block_size) f32) -> None``.
        quantize_blocks: ``(x (n, block_size) f32, out (n, type_size) uint8) -> None``, or
            None when the type can be read but not written.
    """

    name: str
    type_id: int
    block_size: int
    type_size: int
    dequantize_blocks: Callable[[torch.Tensor, torch.Tensor], None]
    quantize_blocks: Callable[[torch.Tensor, torch.Tensor], None] | None

    @property
    def scheme(self) -> str:
        return self.name.lower()

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, row: int) -> int:
        return row // self.block_size * self.type_size


BLOCK_TYPES: dict[str, BlockType] = {
    t.name: t
    for t in [
        BlockType("F32", 0, 1, 4, bl.dequantize_f32, bl.quantize_f32),
        BlockType("F16", 1, 1, 2, bl.dequantize_f16, bl.quantize_f16),
        BlockType("BF16", 30, 1, 2, bl.dequantize_bf16, bl.quantize_bf16),
        BlockType("Q8_0", 8, 32, 34, bl.dequantize_q8_0, bl.quantize_q8_0),
        BlockType("Q4_0", 2, 32, 18, bl.dequantize_q4_0, bl.quantize_q4_0),
        BlockType("Q4_1", 3, 32, 20, bl.dequantize_q4_1, bl.quantize_q4_1),
        BlockType("Q5_0", 6, 32, 22, bl.dequantize_q5_0, bl.quantize_q5_0),
        BlockType("Q5_1", 7, 32, 24, bl.dequantize_q5_1, bl.quantize_q5_1),
        BlockType("Q2_K", 10, 256, 84, bk.dequantize_q2_k, None),
        BlockType("Q3_K", 11, 256, 110, bk.dequantize_q3_k, None),
        BlockType("Q4_K", 12, 256, 144, bk.dequantize_q4_k, bkq.quantize_q4_k),
        BlockType("Q5_K", 13, 256, 176, bk.dequantize_q5_k, None),
        BlockType("Q6_K", 14, 256, 210, bk.dequantize_q6_k, bkq.quantize_q6_k),
    ]
}
BY_ID: dict[int, BlockType] = {t.type_id: t for t in BLOCK_TYPES.values()}


def block_type(name: str) -> BlockType:
    """The block type ``name`` (``"q8_0"`` or ``"Q8_0"``), or an error listing the known ones."""
    key = str(name).upper()
    if key not in BLOCK_TYPES:
        raise UnsupportedError(
            f"unknown GGUF block type {name!r}; supported: "
            f"{', '.join(t.scheme for t in BLOCK_TYPES.values())}"
        )
    return BLOCK_TYPES[key]


def quantizable() -> list[str]:
    """Scheme names this lab can write (the others can only be read)."""
    return [t.scheme for t in BLOCK_TYPES.values() if t.quantize_blocks is not None]


def _chunk_blocks(bt: BlockType) -> int:
    return max(1, CHUNK_WEIGHTS // bt.block_size)


# the C quantizers (same bytes as the torch functions) and what each takes besides the rows
NATIVE_QUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "Q4_K": bkq.sub_block_rms, "Q6_K": None}


def _native_quantizer(bt: BlockType) -> native.Quantizer | None:
    if bt.name not in NATIVE_QUANTIZERS or bt.quantize_blocks is None:
        return None
    return native.quantizer(bt.scheme, bt.type_size, bt.quantize_blocks,
                            NATIVE_QUANTIZERS[bt.name])


def quantize_tensor(tensor: torch.Tensor, name: str) -> QTensor:
    """Quantize a float tensor into GGUF blocks along its last dimension.

    Args:
        tensor: any floating-point tensor with at least one dimension whose last dimension
            is a multiple of the type's block size (32, or 256 for K-quants).
        name: a block type, e.g. ``"q8_0"``.

    Returns:
        A ``QTensor`` whose ``data`` holds the GGUF bytes, shape ``(*shape[:-1], row_bytes)``.

    Raises:
        UnsupportedError: unknown type, or one that can be read but not written.
        MLMFError: a 0-d tensor, a non-float tensor, or a row not divisible into blocks.
    """
    bt = block_type(name)
    if bt.quantize_blocks is None:
        raise UnsupportedError(
            f"{bt.scheme} can be read but not written; quantizable: {', '.join(quantizable())}"
        )
    shape = tuple(tensor.shape)
    if not shape:
        raise MLMFError(f"{bt.scheme} needs a tensor with at least one dimension, found a scalar")
    if not tensor.is_floating_point():
        raise MLMFError(f"{bt.scheme} quantizes floating-point tensors, found {tensor.dtype}")
    if shape[-1] % bt.block_size:
        raise MLMFError(
            f"{bt.scheme} needs rows that are a multiple of {bt.block_size} weights; "
            f"the last dimension of shape {list(shape)} is {shape[-1]}"
        )
    x = tensor.detach().to("cpu", torch.float32).contiguous().view(-1, bt.block_size)
    out = torch.empty(x.shape[0], bt.type_size, dtype=torch.uint8)
    fn = bt.quantize_blocks
    fast = _native_quantizer(bt)

    def run(start: int, stop: int) -> None:
        if fast is None or not fast(x[start:stop], out[start:stop]):
            fn(x[start:stop], out[start:stop])

    run_chunks(run, x.shape[0], _chunk_blocks(bt))
    data = out.view(*shape[:-1], bt.row_bytes(shape[-1]))
    return QTensor(bt.scheme, shape, data)


def dequantize_tensor(qt: QTensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 values of a GGUF ``QTensor``, written into ``out`` when given.

    Args:
        qt: a ``QTensor`` with a GGUF scheme.
        out: a contiguous float32 tensor with ``qt.numel`` elements (any shape), reused.

    Returns:
        ``out`` (or a new tensor) viewed as ``qt.shape``.

    Raises:
        MLMFError: bytes that do not match the shape, or an unusable ``out``.
    """
    bt = block_type(qt.scheme)
    numel = math.prod(qt.shape)
    if qt.shape and qt.shape[-1] % bt.block_size:
        raise MLMFError(
            f"{bt.scheme}: last dimension {qt.shape[-1]} is not a multiple of {bt.block_size}"
        )
    expected = numel // bt.block_size * bt.type_size
    data = qt.data
    if data.dtype != torch.uint8 or data.numel() != expected:
        raise MLMFError(
            f"{bt.scheme} tensor of shape {list(qt.shape)} needs {expected} uint8 bytes, "
            f"found {data.numel()} of {data.dtype}"
        )
    out = float_out(qt.shape, out)
    blocks = data.reshape(-1, bt.type_size)
    values = out.view(-1, bt.block_size)
    fn = native.dequantizer(bt.scheme) or bt.dequantize_blocks

    def run(start: int, stop: int) -> None:
        fn(blocks[start:stop], values[start:stop])

    run_chunks(run, blocks.shape[0], _chunk_blocks(bt))
    return out.view(qt.shape)


def _register(bt: BlockType) -> None:
    quantize = None
    if bt.quantize_blocks is not None:
        def quantize(tensor: torch.Tensor, _name: str = bt.name) -> QTensor:
            return quantize_tensor(tensor, _name)

    register_scheme(Scheme(
        bt.scheme, quantize, dequantize_tensor,
        f"GGUF {bt.name}: {bt.block_size} weights in {bt.type_size} bytes "
        f"({bt.bits_per_weight:g} bits/weight)",
    ))


for _bt in BLOCK_TYPES.values():
    _register(_bt)
