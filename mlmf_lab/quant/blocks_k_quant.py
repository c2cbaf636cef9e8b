"""K-quant quantization (Q4_K, Q6_K) in torch, after llama.cpp's published reference.

The algorithm is the one llama.cpp documents for its reference quantizers (no importance
matrix), written here from its description and vectorized over sub-blocks:

- **Q4_K** (4.5 bits/weight): a super-block of 256 weights is cut into 8 sub-blocks of 32.
  Each sub-block gets an asymmetric fit ``w ~ scale * q - min`` with ``q`` in 0..15, found by
  a search over 21 candidate inverse scales ``(15 + rmin + k * rdelta) / (max - min)``
  (``rmin = -1``, ``rdelta = 0.1``, ``k = 0..20``): for each candidate the codes are rounded,
  then the weighted least-squares scale and min are solved in closed form (weights
  ``sqrt(mean(x^2)) + |x|``), and the candidate with the smallest weighted squared error wins.
  The 8 scales and 8 mins are then quantized to 6 bits against the super-block's largest
  (``d = max_scale / 63`` and ``dmin = max_min / 63``, both fp16) and the codes are rounded
  again against the quantized scales.
- **Q6_K** (6.5625 bits/weight): 16 sub-blocks of 16 weights, symmetric ``w ~ scale * (q - 32)``
  with ``q`` in 0..63. Each sub-block tries inverse scales ``-(32 + 0.1 * k) / max`` for
  ``k = -9..9`` (``max`` = the signed value of largest magnitude) and keeps the one that
  maximizes ``(sum w x l)^2 / sum w l^2`` with weights ``x^2``; the 16 scales are quantized to
  int8 against the largest (``d = max_scale / -128``, fp16) and the codes re-rounded.

Not bit-exact with llama.cpp: the C code sums in sequential float32, torch reduces in a
different order, so a sum can differ in its last bit and, rarely, flip a tie between two
candidates or the rounding of one code. The format is the same (llama.cpp and ``gguf`` read
these blocks), and the error profile matches; tests check the round-trip error and the bits
per weight, and that the decoder reproduces ``gguf.quants.dequantize``.

These functions are the reference for our C quantizer (``native/kquant.c``, about 10x
faster), which gives the same bytes; where it is not built, they run.
"""

from __future__ import annotations

import torch

from .bits import pack_nibbles
from .blocks_k import pack_scale_min_k4

GROUP_MAX_EPS = 1e-15
_SHIFT_2BIT = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 4, 1)


def fit_asymmetric(
    x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float = -1.0, rdelta: float = 0.1,
    nstep: int = 20,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted search for ``x ~ scale * L - min``, one fit per row of ``x`` (m, n).

    Each candidate's weighted error comes from its sums in closed form
    (``s^2 Swll + 2 s m Swl + m^2 Sw - 2 s Swxl - 2 m Swx + Swxx``, in float64), and only the
    winning inverse scale is kept, so a candidate costs a handful of passes over ``x``.

    Returns:
        (scale (m,), min (m,) >= 0, L (m, n) uint8 in 0..nmax).
    """
    lo = x.amin(dim=1, keepdim=True).clamp(max=0)
    hi = x.amax(dim=1, keepdim=True)
    flat = hi == lo
    span = torch.where(flat, torch.ones_like(hi), hi - lo)
    shifted = x - lo
    wx = w * x
    sum_w = w.sum(dim=1, keepdim=True).double()
    sum_x = wx.sum(dim=1, keepdim=True).double()
    sum_xx = (wx * x).sum(dim=1, keepdim=True).double()

    def sums(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = torch.round(iscale * shifted).clamp_(0, nmax)
        wl = w * codes
        return (wl.sum(dim=1, keepdim=True).double(),
                (wl * codes).sum(dim=1, keepdim=True).double(),
                (wl * x).sum(dim=1, keepdim=True).double())

    def error(s: torch.Tensor, m: torch.Tensor, sl: torch.Tensor, sl2: torch.Tensor,
              sxl: torch.Tensor) -> torch.Tensor:
        return s * s * sl2 + 2 * s * m * sl + m * m * sum_w - 2 * s * sxl - 2 * m * sum_x + sum_xx

    best_iscale = nmax / span
    scale = (1 / best_iscale).double()
    best_min = lo.double()
    best_err = error(scale, best_min, *sums(best_iscale))
    for k in range(nstep + 1):
        iscale = (rmin + rdelta * k + nmax) / span
        sum_l, sum_l2, sum_xl = sums(iscale)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clipped = this_min > 0
        this_scale = torch.where(clipped, sum_xl / sum_l2, this_scale)
        this_min = torch.where(clipped, torch.zeros_like(this_min), this_min)
        err = error(this_scale, this_min, sum_l, sum_l2, sum_xl)
        better = (det > 0) & (err < best_err)
        best_iscale = torch.where(better, iscale, best_iscale)
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, this_scale, scale)
        best_min = torch.where(better, this_min, best_min)
    codes = torch.round(best_iscale * shifted).clamp_(0, nmax)
    scale = torch.where(flat, torch.zeros_like(scale), scale).float()
    codes = torch.where(flat, torch.zeros_like(codes), codes)
    return scale.squeeze(1), -best_min.float().squeeze(1), codes.to(torch.uint8)


def fit_symmetric(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Search for ``x ~ scale * (L - nmax)`` with weights ``x^2``, one fit per row of ``x``.

    Returns:
        (scale (m,), L (m, n) uint8 in 0..2*nmax-1).
    """
    amax_idx = x.abs().argmax(dim=1, keepdim=True)
    peak = torch.gather(x, 1, amax_idx)
    tiny = peak.abs() < GROUP_MAX_EPS
    peak = torch.where(tiny, torch.ones_like(peak), peak)
    w = x * x
    wx = w * x

    def sums(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = torch.round(iscale * x).clamp_(-nmax, nmax - 1)
        wl = w * codes
        return (wx * codes).sum(dim=1, keepdim=True), (wl * codes).sum(dim=1, keepdim=True)

    best_iscale = -nmax / peak
    sumlx, suml2 = sums(best_iscale)
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        iscale = -(nmax + 0.1 * k) / peak
        sumlx, suml2 = sums(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_iscale = torch.where(better, iscale, best_iscale)
        scale = torch.where(better, sumlx / suml2, scale)
        best = torch.where(better, scale * sumlx, best)
    best_l = torch.round(best_iscale * x).clamp_(-nmax, nmax - 1)
    scale = torch.where(tiny, torch.zeros_like(scale), scale)
    best_l = torch.where(tiny, torch.zeros_like(best_l), best_l)
    return scale.squeeze(1), (best_l + nmax).to(torch.uint8)


def sub_block_rms(x: torch.Tensor) -> torch.Tensor:
    """(n, 256) float32 -> (n, 8, 1): the root mean square of each Q4_K sub-block of 32.

    The C quantizer takes these from here: torch's vectorized sqrt is not always correctly
    rounded, and the bytes must be the ones this module makes."""
    return (x.view(x.shape[0], 8, 32).square().sum(dim=-1, keepdim=True) / 32).sqrt()


def quantize_q4_k(x: torch.Tensor, out: torch.Tensor) -> None:
    """(n, 256) float32 -> out (n, 144) Q4_K blocks."""
    n = x.shape[0]
    xs = x.view(n, 8, 32)
    weights = sub_block_rms(x) + xs.abs()
    scales, mins, codes = fit_asymmetric(xs.reshape(-1, 32), weights.reshape(-1, 32), 15)
    scales, mins, codes = scales.view(n, 8), mins.view(n, 8), codes.view(n, 8, 32)

    max_scale = scales.amax(dim=1, keepdim=True).clamp(min=0)
    max_min = mins.amax(dim=1, keepdim=True).clamp(min=0)
    inv_scale = torch.where(max_scale > 0, 63 / max_scale, torch.zeros_like(max_scale))
    inv_min = torch.where(max_min > 0, 63 / max_min, torch.zeros_like(max_min))
    ls = torch.round(inv_scale * scales).clamp_(0, 63).to(torch.uint8)
    lm = torch.round(inv_min * mins).clamp_(0, 63).to(torch.uint8)
    d16 = (max_scale / 63).to(torch.float16)
    dmin16 = (max_min / 63).to(torch.float16)

    # re-round every code against the scales as they will be decoded
    d = (d16.float() * ls.float()).unsqueeze(-1)
    dm = (dmin16.float() * lm.float()).unsqueeze(-1)
    safe_d = torch.where(d == 0, torch.ones_like(d), d)
    requant = torch.round((xs + dm) / safe_d).clamp_(0, 15).to(torch.uint8)
    codes = torch.where(d == 0, codes, requant)

    qs = pack_nibbles(codes.reshape(n * 4, 64)).view(n, 128)
    out.copy_(torch.cat(
        [d16.view(torch.uint8), dmin16.view(torch.uint8), pack_scale_min_k4(ls, lm), qs], dim=1
    ))


def quantize_q6_k(x: torch.Tensor, out: torch.Tensor) -> None:
    """(n, 256) float32 -> out (n, 210) Q6_K blocks."""
    n = x.shape[0]
    xs = x.view(n, 16, 16)
    scales, codes = fit_symmetric(xs.reshape(-1, 16), 32)
    scales, codes = scales.view(n, 16), codes.view(n, 16, 16)

    idx = scales.abs().argmax(dim=1, keepdim=True)
    max_scale = torch.gather(scales, 1, idx)
    empty = max_scale.abs() < GROUP_MAX_EPS
    safe_max = torch.where(empty, torch.ones_like(max_scale), max_scale)
    iscale = -128 / safe_max
    d16 = (1 / iscale).to(torch.float16)
    sc = torch.round(iscale * scales).clamp_(-128, 127).to(torch.int8)

    d = (d16.float() * sc.float()).unsqueeze(-1)
    safe_d = torch.where(d == 0, torch.ones_like(d), d)
    requant = (torch.round(xs / safe_d).clamp_(-32, 31) + 32).to(torch.uint8)
    codes = torch.where(d == 0, codes, requant).view(n, 2, 128)

    ql = pack_nibbles(codes.reshape(n * 2, 128)).view(n, 128)
    high = (codes >> 4).view(n * 2, 4, 32)  # 2-bit fields, 4 per byte
    qh = torch.bitwise_left_shift(high, _SHIFT_2BIT).sum(dim=1, dtype=torch.uint8).view(n, 64)
    blocks = torch.cat([ql, qh, sc.view(torch.uint8), d16.view(torch.uint8)], dim=1)
    out.copy_(torch.where(empty, torch.zeros_like(blocks), blocks))

