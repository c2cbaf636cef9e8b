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

import torch

from .bits import f16_at, f16_bytes, fields, high_bits16, pack_bits, pack_nibbles


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
    """Round to nearest even (torch's cast); NaNs become quiet keeping sign and payload, as ggml."""
    out = x.to(torch.bfloat16).view(torch.int16)
    nan = x.isnan()
    if bool(nan.any()):  # torch writes one canonical NaN; ggml keeps the top bits, sets bit 6
        top = (x.contiguous().view(torch.int32) >> 16).to(torch.int16) | 0x40
        out = torch.where(nan, top, out)
    return out.view(torch.uint8).view(x.shape[0], -1)


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
def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, 16) bytes -> (n, 32) codes: low nibbles (weights 0-15), then high (16-31)."""
    return fields(qs, 16, (0, 4), 0x0F)


def dequantize_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_nibbles(blocks[:, 2:]).view(torch.int8).sub_(8))
    out.mul_(f16_at(blocks, 0))


def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    d = _signed_absmax(x) / -8
    q = torch.trunc(x * _inverse(d) + 8.5).clamp_(0, 15).to(torch.uint8)
    return torch.cat([f16_bytes(d), pack_nibbles(q)], dim=1)


def dequantize_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_nibbles(blocks[:, 4:]))
    dm = f16_at(blocks, 0, 2)
    out.mul_(dm[:, :1]).add_(dm[:, 1:])


def quantize_q4_1(x: torch.Tensor) -> torch.Tensor:
    hi = x.amax(dim=1, keepdim=True)
    lo = x.amin(dim=1, keepdim=True)
    d = (hi - lo) / 15
    q = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp_(0, 15).to(torch.uint8)
    return torch.cat([f16_bytes(d), f16_bytes(lo), pack_nibbles(q)], dim=1)


# -- Q5_0 / Q5_1 ----------------------------------------------------------------------------
def _codes5(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """(n, 32) 5-bit codes: nibbles plus bit 4 from ``qh``."""
    return _nibbles(qs).bitwise_or_(high_bits16(qh))


def dequantize_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_codes5(blocks[:, 2:6], blocks[:, 6:]).view(torch.int8).sub_(16))
    out.mul_(f16_at(blocks, 0))


def quantize_q5_0(x: torch.Tensor) -> torch.Tensor:
    d = _signed_absmax(x) / -16
    q = torch.trunc(x * _inverse(d) + 16.5).clamp_(0, 31).to(torch.uint8)
    return torch.cat([f16_bytes(d), pack_bits(q >> 4), pack_nibbles(q)], dim=1)


def dequantize_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_codes5(blocks[:, 4:8], blocks[:, 8:]))
    dm = f16_at(blocks, 0, 2)
    out.mul_(dm[:, :1]).add_(dm[:, 1:])


def quantize_q5_1(x: torch.Tensor) -> torch.Tensor:
    hi = x.amax(dim=1, keepdim=True)
    lo = x.amin(dim=1, keepdim=True)
    d = (hi - lo) / 31
    q = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp_(0, 31).to(torch.uint8)
    return torch.cat([f16_bytes(d), f16_bytes(lo), pack_bits(q >> 4), pack_nibbles(q)], dim=1)
