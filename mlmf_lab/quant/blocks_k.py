"""GGUF's K-quant super-blocks (256 weights) in torch: dequantization of Q2_K ... Q6_K.

Pure, vectorized functions in the same shape convention as ``blocks_legacy``: ``blocks`` is
``(n_blocks, type_size)`` uint8, ``out`` is ``(n_blocks, 256)`` float32 and is filled in
place. The arithmetic follows the reference order (``(d * scale) * q - (dmin * min)``), so
the results match ``gguf.quants.dequantize`` to the bit in practice; the contract is
"within float32 rounding".

Layouts of one super-block (little-endian):

- ``Q2_K`` (84 B): ``scales[16]`` (low nibble scale, high nibble min, per 16 weights),
  ``qs[64]`` (2-bit codes), ``d:f16``, ``dmin:f16``.
- ``Q3_K`` (110 B): ``hmask[32]`` (bit 2 of each code, inverted), ``qs[64]`` (bits 0-1),
  ``scales[12]`` (16 six-bit signed scales, offset 32), ``d:f16``.
- ``Q4_K`` (144 B): ``d:f16``, ``dmin:f16``, ``scales[12]`` (8 six-bit scales and 8
  six-bit mins, one pair per 32 weights), ``qs[128]`` (4-bit codes).
- ``Q5_K`` (176 B): as ``Q4_K`` plus ``qh[32]`` (bit 4 of each code) before ``qs``.
- ``Q6_K`` (210 B): ``ql[128]`` (bits 0-3), ``qh[64]`` (bits 4-5), ``scales[16]:int8``
  (per 16 weights), ``d:f16``; codes are offset by 32.
"""

from __future__ import annotations

import torch

from .bits import f16_at, fields

QK_K = 256
K_SCALE_SIZE = 12
_LOW6, _HIGH2, _LOW4 = 0x3F3F3F3F, 0x30303030, 0x0F0F0F0F  # byte masks in int32 lanes
_NIBBLE_SHIFTS = torch.tensor([0, 4], dtype=torch.int32)


def scale_min_k4(scales: torch.Tensor) -> torch.Tensor:
    """Unpack Q4_K/Q5_K's 12 scale bytes: (n, 12) -> (n, 2, 8) uint8 six-bit scales and mins.

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top bits of scales 4-7; bytes 4-7 the
    same for mins; bytes 8-11 the low 4 bits of scale (low nibble) and min (high nibble) 4-7.
    Computed on the three 4-byte words at once: ``[:, 0]`` are the scales, ``[:, 1]`` the mins.
    """
    n = scales.shape[0]
    words = scales.contiguous().view(torch.int32)  # (n, 3): scale word, min word, low-nibble word
    sm, md = words[:, :2], words[:, 2:]
    out = torch.empty(n, 2, 2, dtype=torch.int32)  # (n, scale|min, entries 0-3|4-7)
    torch.bitwise_and(sm, _LOW6, out=out[:, :, 0])
    high = torch.bitwise_right_shift(md, _NIBBLE_SHIFTS).bitwise_and_(_LOW4)
    torch.bitwise_or(high, (sm >> 2) & _HIGH2, out=out[:, :, 1])
    return out.view(torch.uint8).view(n, 2, 8)


def pack_scale_min_k4(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """Inverse of ``scale_min_k4``: (n, 8) scales and mins in 0..63 -> (n, 12) bytes."""
    lo_d = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    lo_m = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    md = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return torch.cat([lo_d, lo_m, md], dim=1)


def _scale(out: torch.Tensor, dl: torch.Tensor, ml: torch.Tensor | None = None) -> None:
    """out (n, 256) = out * dl - ml per sub-block; dl and ml are (n, sub-blocks)."""
    n, subs = dl.shape
    grouped = out.view(n * subs, QK_K // subs)
    grouped.mul_(dl.reshape(-1, 1))  # contiguous factors: a strided broadcast is slower
    if ml is not None:
        grouped.sub_(ml.reshape(-1, 1))


def _crumbs(packed: torch.Tensor) -> torch.Tensor:
    """(n, 64) bytes -> (n, 256) 2-bit codes: per 32 bytes, shifts 0, 2, 4, 6 in turn."""
    return fields(packed, 32, (0, 2, 4, 6), 0x03)


def dequantize_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(_crumbs(blocks[:, 16:80]))
    scale_min = fields(blocks[:, :16], 16, (0, 4), 0x0F).view(-1, 2, 16)  # scales, then mins
    factors = f16_at(blocks, 80, 2).unsqueeze(-1) * scale_min.float()
    _scale(out, factors[:, 0], factors[:, 1])


def dequantize_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    codes = _crumbs(blocks[:, 32:96])  # bits 0-1
    hmask = fields(blocks[:, :32], 32, tuple(range(8)), 0x01)  # bit 2, same weight order
    codes.bitwise_or_(hmask.bitwise_left_shift_(2))
    out.copy_(codes.view(torch.int8).sub_(4))  # code - 4 where the hmask bit is 0
    raw = blocks[:, 96:108]
    low = fields(raw[:, :8], 8, (0, 4), 0x0F)  # scale j: low 4 bits
    high = fields(raw[:, 8:], 4, (0, 2, 4, 6), 0x03)  # scale j: bits 4-5
    scales = (low | (high << 4)).view(torch.int8) - 32
    _scale(out, f16_at(blocks, 108) * scales.float())


def _q45_k(blocks: torch.Tensor, out: torch.Tensor, codes: torch.Tensor) -> None:
    """Shared tail of Q4_K/Q5_K: (n, 256) codes -> d * scale * code - dmin * min."""
    out.copy_(codes)
    # (d, dmin) times (scales, mins) in one op: (n, 2, 1) * (n, 2, 8)
    factors = f16_at(blocks, 0, 2).unsqueeze(-1) * scale_min_k4(blocks[:, 4:16]).float()
    _scale(out, factors[:, 0], factors[:, 1])


def dequantize_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    _q45_k(blocks, out, fields(blocks[:, 16:], 32, (0, 4), 0x0F))


def dequantize_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    codes = fields(blocks[:, 48:], 32, (0, 4), 0x0F)
    high = fields(blocks[:, 16:48], 32, tuple(range(8)), 0x01)  # bit 4, same weight order
    _q45_k(blocks, out, codes.bitwise_or_(high.bitwise_left_shift_(4)))


def dequantize_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    codes = fields(blocks[:, :128], 64, (0, 4), 0x0F)  # bits 0-3, per half of 128 weights
    high = _crumbs(blocks[:, 128:192])  # bits 4-5, same weight order
    out.copy_(codes.bitwise_or_(high.bitwise_left_shift_(4)).view(torch.int8).sub_(32))
    _scale(out, f16_at(blocks, 208) * blocks[:, 192:208].view(torch.int8).float())
