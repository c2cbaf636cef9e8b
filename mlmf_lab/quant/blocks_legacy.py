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

from .bits import f16_at, f16_bytes, fields, high_bits16


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """``1/d`` with 0 where ``d == 0`` (the reference's ``np.where(d == 0, 0, 1 / d)``)."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _signed_absmax(x: torch.Tensor) -> torch.Tensor:
    """The value with the largest magnitude in each row (first one on ties), shape (n, 1)."""
    lo, hi = _min_max(x)
    peak = torch.where(-lo > hi, lo, hi)
    tie = ((-lo == hi) & (hi != 0)).squeeze(1)
    if bool(tie.any()):  # +a and -a both present: the reference takes the first one
        rows = x[tie]
        peak[tie] = torch.gather(rows, 1, rows.abs().argmax(dim=1, keepdim=True))
    return peak


def _min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row minimum and maximum, (n, 1) each (two reductions: faster than ``aminmax`` here)."""
    return x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """In place: round half away from zero, exactly (``trunc(v) + trunc(2 * frac(v))``)."""
    whole = torch.trunc(v)
    return v.sub_(whole).mul_(2).trunc_().add_(whole)


def _pack_nibbles_into(out: torch.Tensor, q: torch.Tensor) -> None:
    """Codes (n, 32) in 0..15 as float -> out (n, 16) bytes: ``q[j] | q[j + 16] << 4``."""
    out.copy_(torch.add(q[:, :16], q[:, 16:], alpha=16))


_POW2 = 2.0 ** torch.arange(8)


def _split_high_bit(qh_out: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """5-bit codes (n, 32) as float: bit 4 packed into qh_out (n, 4) bytes (bit ``i`` of byte
    ``b`` is code ``8b + i``); returns the low 4 bits, as float."""
    high = (q * 0.0625).trunc_()  # 0 or 1, exact
    qh_out.copy_(torch.mv(high.view(-1, 8), _POW2).view(-1, 4))
    return torch.add(q, high, alpha=-16)


# -- plain float types (block size 1) -------------------------------------------------------
def dequantize_f32(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks.view(torch.float32))


def dequantize_f16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks.view(torch.float16))


def dequantize_bf16(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks.view(torch.bfloat16))  # bf16 -> f32 is a 16-bit shift, exact


def quantize_f32(x: torch.Tensor, out: torch.Tensor) -> None:
    out.view(torch.float32).copy_(x)


def quantize_f16(x: torch.Tensor, out: torch.Tensor) -> None:
    out.view(torch.float16).copy_(x)


def quantize_bf16(x: torch.Tensor, out: torch.Tensor) -> None:
    """Round to nearest even (torch's cast); NaNs become quiet keeping sign and payload, as ggml."""
    bf = out.view(torch.bfloat16)
    bf.copy_(x)
    nan = x.isnan()
    if bool(nan.any()):  # torch writes one canonical NaN; ggml keeps the top bits, sets bit 6
        top = (x.contiguous().view(torch.int32) >> 16).to(torch.int16) | 0x40
        bits = bf.view(torch.int16)
        bits.copy_(torch.where(nan, top, bits))


# -- Q8_0 -------------------------------------------------------------------------------------
def dequantize_q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks[:, 2:].view(torch.int8))
    out.mul_(f16_at(blocks, 0))


def quantize_q8_0(x: torch.Tensor, out: torch.Tensor) -> None:
    lo, hi = _min_max(x)
    d = torch.maximum(-lo, hi) / 127  # the largest magnitude, / 127
    q = _round_half_away(x * _inverse(d))
    out[:, :2].copy_(f16_bytes(d))
    out[:, 2:].view(torch.int8).copy_(q)


# -- Q4_0 / Q4_1 ----------------------------------------------------------------------------
def nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, 16) bytes -> (n, 32) codes: low nibbles (weights 0-15), then high (16-31)."""
    return fields(qs, 16, (0, 4), 0x0F)


def split_q4_0(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q4_0 rows ``(r, nb * 18)`` -> their code bytes ``(r, nb * 16)`` and float16 scales
    ``(r, nb)``, each contiguous (the layout quantized linears keep)."""
    blocks = rows.reshape(rows.shape[0], -1, 18)
    d = blocks[..., :2].contiguous().view(torch.float16).view(rows.shape[0], -1)
    return blocks[..., 2:].reshape(rows.shape[0], -1).contiguous(), d


def join_q4_0(qs: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Inverse of ``split_q4_0``: the q4_0 rows as stored in the file."""
    r, nb = d.shape
    blocks = torch.cat([d.contiguous().view(torch.uint8).view(r, nb, 2), qs.view(r, nb, 16)], -1)
    return blocks.reshape(r, nb * 18)


def dequantize_q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(nibbles(blocks[:, 2:]).view(torch.int8).sub_(8))
    out.mul_(f16_at(blocks, 0))


def quantize_q4_0(x: torch.Tensor, out: torch.Tensor) -> None:
    d = _signed_absmax(x) / -8
    q = (x * _inverse(d)).add_(8.5).trunc_().clamp_(0, 15)
    out[:, :2].copy_(f16_bytes(d))
    _pack_nibbles_into(out[:, 2:], q)


def dequantize_q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(nibbles(blocks[:, 4:]))
    out.mul_(f16_at(blocks, 0)).add_(f16_at(blocks, 2))  # contiguous (n, 1) factors


def quantize_q4_1(x: torch.Tensor, out: torch.Tensor) -> None:
    lo, hi = _min_max(x)
    d = (hi - lo) / 15
    q = (x - lo).mul_(_inverse(d)).add_(0.5).trunc_().clamp_(0, 15)
    out[:, :2].copy_(f16_bytes(d))
    out[:, 2:4].copy_(f16_bytes(lo))
    _pack_nibbles_into(out[:, 4:], q)


# -- Q5_0 / Q5_1 ----------------------------------------------------------------------------
def _codes5(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    """(n, 32) 5-bit codes: nibbles plus bit 4 from ``qh``."""
    return nibbles(qs).bitwise_or_(high_bits16(qh))


def dequantize_q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_codes5(blocks[:, 2:6], blocks[:, 6:]).view(torch.int8).sub_(16))
    out.mul_(f16_at(blocks, 0))


def quantize_q5_0(x: torch.Tensor, out: torch.Tensor) -> None:
    d = _signed_absmax(x) / -16
    q = (x * _inverse(d)).add_(16.5).trunc_().clamp_(0, 31)
    out[:, :2].copy_(f16_bytes(d))
    _pack_nibbles_into(out[:, 6:], _split_high_bit(out[:, 2:6], q))


def dequantize_q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_codes5(blocks[:, 4:8], blocks[:, 8:]))
    out.mul_(f16_at(blocks, 0)).add_(f16_at(blocks, 2))  # contiguous (n, 1) factors


def quantize_q5_1(x: torch.Tensor, out: torch.Tensor) -> None:
    lo, hi = _min_max(x)
    d = (hi - lo) / 31
    q = (x - lo).mul_(_inverse(d)).add_(0.5).trunc_().clamp_(0, 31)
    out[:, :2].copy_(f16_bytes(d))
    out[:, 2:4].copy_(f16_bytes(lo))
    _pack_nibbles_into(out[:, 8:], _split_high_bit(out[:, 4:8], q))
