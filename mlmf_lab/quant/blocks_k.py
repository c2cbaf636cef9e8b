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

from .blocks_legacy import f16_at, split_fields, unpack_nibbles

QK_K = 256
K_SCALE_SIZE = 12



def crumbs(packed: torch.Tensor, group: int) -> torch.Tensor:
    """(n, k) bytes -> (n, 4k) 2-bit fields: per ``group`` bytes, shift 0, 2, 4, 6 in turn."""
    return split_fields(packed, group, (0, 2, 4, 6), 0x03)


def bit_planes(packed: torch.Tensor, planes: int) -> torch.Tensor:
    """(n, 32) bytes -> (n, 32 * planes) bits: plane ``i`` is bit ``i`` of every byte."""
    return split_fields(packed, 32, tuple(range(planes)), 0x01)


def scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack Q4_K/Q5_K's 12 scale bytes into 8 six-bit scales and 8 six-bit mins.

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top bits of scales 4-7; bytes 4-7 the
    same for mins; bytes 8-11 the low 4 bits of scale (low nibble) and min (high nibble) 4-7.
    """
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def pack_scale_min_k4(sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """Inverse of ``scale_min_k4``: (n, 8) scales and mins in 0..63 -> (n, 12) bytes."""
    lo_d = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    lo_m = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    md = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return torch.cat([lo_d, lo_m, md], dim=1)


def _scaled(out: torch.Tensor, codes: torch.Tensor, dl: torch.Tensor, sub: int) -> torch.Tensor:
    """out = dl * codes per sub-block of ``sub`` weights; returns out viewed (n, 256/sub, sub)."""
    n = out.shape[0]
    grouped = out.view(n, QK_K // sub, sub)
    grouped.copy_(codes.view(n, QK_K // sub, sub))
    return grouped.mul_(dl.unsqueeze(-1))


def dequantize_q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    scales, qs = blocks[:, :16], blocks[:, 16:80]
    d, dmin = f16_at(blocks, 80), f16_at(blocks, 82)
    dl = d * (scales & 0x0F).float()
    ml = dmin * (scales >> 4).float()
    _scaled(out, crumbs(qs, 32), dl, 16).sub_(ml.unsqueeze(-1))


def dequantize_q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    hmask, qs, raw = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
    d = f16_at(blocks, 108)
    low = unpack_nibbles(raw[:, :8])
    high = crumbs(raw[:, 8:], 4)
    scales = (low | (high << 4)).view(torch.int8) - 32
    # code = 2 low bits - 4 when the hmask bit is 0
    codes = crumbs(qs, 32).view(torch.int8)
    codes.sub_(bit_planes(hmask, 8).bitwise_xor_(1).view(torch.int8).mul_(4))
    _scaled(out, codes, d * scales.float(), 16)


def dequantize_q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    d, dmin = f16_at(blocks, 0), f16_at(blocks, 2)
    sc, mn = scale_min_k4(blocks[:, 4:16])
    codes = unpack_nibbles(blocks[:, 16:].reshape(n * 4, 32))
    _scaled(out, codes, d * sc.float(), 32).sub_((dmin * mn.float()).unsqueeze(-1))


def dequantize_q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    d, dmin = f16_at(blocks, 0), f16_at(blocks, 2)
    sc, mn = scale_min_k4(blocks[:, 4:16])
    qh, qs = blocks[:, 16:48], blocks[:, 48:]
    codes = unpack_nibbles(qs.reshape(n * 4, 32))
    codes = codes.view(n, QK_K).bitwise_or_(bit_planes(qh, 8).bitwise_left_shift_(4))
    _scaled(out, codes, d * sc.float(), 32).sub_((dmin * mn.float()).unsqueeze(-1))


def dequantize_q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    n = blocks.shape[0]
    ql, qh, scales = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208]
    d = f16_at(blocks, 208)
    # per half of 128 weights: ql[0:64] low nibbles, then ql[0:64] high nibbles
    codes = unpack_nibbles(ql.reshape(n * 2, 64))
    codes = codes.view(n, QK_K).bitwise_or_(crumbs(qh, 32).bitwise_left_shift_(4))
    _scaled(out, codes.view(torch.int8).sub_(32), d * scales.view(torch.int8).float(), 16)
