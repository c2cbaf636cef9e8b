"""GGUF's simple block types in torch: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Every function is pure and vectorized over blocks. ``blocks`` is a ``uint8`` tensor of
shape ``(n_blocks, type_size)`` (the bytes as stored in the file); the values side is
``(n_blocks, block_size)`` float32. Dequantizers write into ``out`` (so a caller can reuse a
buffer) and compute exactly what ``gguf.quants`` computes, in the same order, so the results
are bitwise equal; quantizers reproduce the reference's float32 steps, so the bytes are
identical to ``gguf.quants.quantize`` (which is bit-exact with llama.cpp's C reference).

Layouts (little-endian, per block of 32 weights unless noted):

- ``Q8_0``: ``d:f16, q[32]:int8``; ``w = d * q``.
- ``Q4_0``: ``d:f16, qs[16]``; weight ``j < 16`` is the low nibble of ``qs[j]``, weight
  ``j + 16`` the high nibble; ``w = d * (q - 8)``.
- ``Q4_1``: ``d:f16, m:f16, qs[16]``; ``w = d * q + m``.
- ``Q5_0``: ``d:f16, qh:u32, qs[16]``; bit ``j`` of ``qh`` is bit 4 of weight ``j``;
  ``w = d * (q - 16)``.
- ``Q5_1``: ``d:f16, m:f16, qh:u32, qs[16]``; ``w = d * q + m``.
"""

from __future__ import annotations

import functools

import torch

_SHIFT_BITS = torch.arange(8, dtype=torch.uint8)


# -- byte helpers -------------------------------------------------------------------------
def f16_at(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 field at byte ``start`` of every block, as float32 of shape (n_blocks, 1)."""
    return blocks[:, start : start + 2].view(torch.float16).float()


@functools.lru_cache(maxsize=32)
def _shifts(shifts: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(shifts, dtype=dtype).view(1, 1, -1, 1)


def split_fields(
    packed: torch.Tensor, group: int, shifts: tuple[int, ...], mask: int
) -> torch.Tensor:
    """Bit fields of packed bytes: (n, k) -> (n, k * len(shifts)) uint8.

    Per run of ``group`` bytes, the field at ``shift`` of every byte, for each shift in turn
    (the GGUF order: e.g. all low nibbles of 16 bytes, then all high nibbles). Works on
    8 bytes at a time (int64 lanes) when ``group`` allows it.
    """
    n, k = packed.shape
    if group % 8 == 0:
        lanes = packed.contiguous().view(n, k // group, 1, group).view(torch.int64)
        fields = torch.bitwise_right_shift(lanes, _shifts(shifts, torch.int64))
        return fields.bitwise_and_(mask * 0x0101010101010101).view(torch.uint8).view(n, -1)
    grouped = packed.reshape(n, k // group, 1, group)
    fields = torch.bitwise_right_shift(grouped, _shifts(shifts, torch.uint8))
    return fields.bitwise_and_(mask).view(n, -1)


def unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> codes (n, 2k): low nibbles first, then high nibbles (GGUF order)."""
    return split_fields(qs, qs.shape[1], (0, 4), 0x0F)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 8k) uint8 of 0/1, bit ``i`` of byte ``b`` at index ``8b + i``."""
    n, k = packed.shape
    bits = torch.bitwise_right_shift(packed.unsqueeze(-1), _SHIFT_BITS).bitwise_and_(1)
    return bits.view(n, 8 * k)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Inverse of ``unpack_nibbles``: codes (n, 2k) in 0..15 -> (n, k) bytes."""
    n, two_k = codes.shape
    halves = codes.view(n, 2, two_k // 2)
    return torch.bitwise_or(halves[:, 0] & 0x0F, torch.bitwise_left_shift(halves[:, 1], 4))


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Inverse of ``unpack_bits``: (n, 8k) of 0/1 -> (n, k) bytes (little bit order)."""
    n, m = bits.shape
    weighted = torch.bitwise_left_shift(bits.view(n, m // 8, 8), _SHIFT_BITS)
    return weighted.sum(dim=-1, dtype=torch.uint8)


def f16_bytes(x: torch.Tensor) -> torch.Tensor:
    """(n, 1) float32 -> (n, 2) bytes of the fp16 value (round to nearest even)."""
    return x.to(torch.float16).view(torch.uint8)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """``1/d`` with 0 where ``d == 0`` (the reference's ``np.where(d == 0, 0, 1 / d)``)."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """The value with the largest magnitude in each row (first one on ties), shape (n, 1)."""
    return torch.gather(x, 1, x.abs().argmax(dim=1, keepdim=True))


# -- plain float types (block size 1) -------------------------------------------------------
def dequantize_f32(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks.view(torch.float32))


def dequantize_f16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks.view(torch.float16))


def dequantize_bf16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks.view(torch.bfloat16))  # bf16 -> f32 is a 16-bit shift, exact


def quantize_f32(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.uint8)


def quantize_f16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).view(torch.uint8)


def quantize_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest even on the bit pattern; NaNs become quiet, keeping sign and payload."""
    n = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    is_nan = (n & 0x7FFFFFFF) > 0x7F800000
    n = torch.where(is_nan, (n & 0xFFFF0000) | (64 << 16), n)
    n = (n + (0x7FFF + ((n >> 16) & 1))) >> 16
    return n.to(torch.int32).to(torch.int16).view(torch.uint8).view(x.shape[0], -1)


# -- Q8_0 -------------------------------------------------------------------------------------
def dequantize_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks[:, 2:].view(torch.int8))
    out.mul_(f16_at(blocks, 0))


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    d = x.abs().amax(dim=1, keepdim=True) / 127
    v = x * _inverse(d)
    # round half away from zero exactly as the reference does it (no x + 0.5 rounding error)
    a = v.abs()
    floored = a.floor()
    q = (floored + (2 * (a - floored)).floor()) * v.sign()
    return torch.cat([f16_bytes(d), q.to(torch.int8).view(torch.uint8)], dim=1)


# -- Q4_0 / Q4_1 ----------------------------------------------------------------------------
def dequantize_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    codes = unpack_nibbles(blocks[:, 2:])
    out.copy_(codes.view(torch.int8).sub_(8))
    out.mul_(f16_at(blocks, 0))


def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    d = _signed_absmax(x) / -8
    q = torch.trunc(x * _inverse(d) + 8.5).clamp_(0, 15).to(torch.uint8)
    return torch.cat([f16_bytes(d), pack_nibbles(q)], dim=1)


def dequantize_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(unpack_nibbles(blocks[:, 4:]))
    out.mul_(f16_at(blocks, 0)).add_(f16_at(blocks, 2))


def quantize_q4_1(x: torch.Tensor) -> torch.Tensor:
    hi = x.amax(dim=1, keepdim=True)
    lo = x.amin(dim=1, keepdim=True)
    d = (hi - lo) / 15
    q = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp_(0, 15).to(torch.uint8)
    return torch.cat([f16_bytes(d), f16_bytes(lo), pack_nibbles(q)], dim=1)


# -- Q5_0 / Q5_1 ----------------------------------------------------------------------------
def _codes5(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    return unpack_nibbles(qs).bitwise_or_(unpack_bits(qh).bitwise_left_shift_(4))


def dequantize_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    codes = _codes5(blocks[:, 2:6], blocks[:, 6:])
    out.copy_(codes.view(torch.int8).sub_(16))
    out.mul_(f16_at(blocks, 0))


def quantize_q5_0(x: torch.Tensor) -> torch.Tensor:
    d = _signed_absmax(x) / -16
    q = torch.trunc(x * _inverse(d) + 16.5).clamp_(0, 31).to(torch.uint8)
    return torch.cat([f16_bytes(d), pack_bits(q >> 4), pack_nibbles(q)], dim=1)


def dequantize_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    codes = _codes5(blocks[:, 4:8], blocks[:, 8:])
    out.copy_(codes)
    out.mul_(f16_at(blocks, 0)).add_(f16_at(blocks, 2))


def quantize_q5_1(x: torch.Tensor) -> torch.Tensor:
    hi = x.amax(dim=1, keepdim=True)
    lo = x.amin(dim=1, keepdim=True)
    d = (hi - lo) / 31
    q = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp_(0, 31).to(torch.uint8)
    return torch.cat([f16_bytes(d), f16_bytes(lo), pack_bits(q >> 4), pack_nibbles(q)], dim=1)
