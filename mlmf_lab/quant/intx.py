"""Integer schemes for linear weights: ``int8`` (per output channel) and ``int4`` (per group).

Pure functions over 2-D weights ``(out_features, in_features)`` (any N-D tensor is read as
``(shape[0], rest)`` for ``int8``, and grouped along its last dimension for ``int4``).

- ``int8``: symmetric, one float32 scale per output channel (row):
  ``scale = max|w_row| / 127``, ``q = round(w / scale)`` in ``[-127, 127]``, ``w ≈ scale * q``.
  An all-zero row gets scale 0 and codes 0.
- ``int4``: asymmetric, one (scale, zero) pair per ``group_size`` consecutive weights of a
  row, stored as bfloat16: ``scale = (max - min) / 15``, ``zero = min + 8 * scale`` (the
  value of code 8), ``q = round((w - zero) / scale) + 8`` in ``[0, 15]``, ``w ≈ (q - 8) *
  scale + zero``. Codes are computed from the *stored* (rounded) scale and zero, and the
  scale is rounded up so the group's range stays covered. Two codes per byte: weight
  ``2j`` in the low nibble of byte ``j``, weight ``2j + 1`` in the high nibble. bfloat16
  parameters are what torch's int4 CPU kernel consumes, so the fast linear path computes
  with exactly these values.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import MLMFError
from . import native
from .base import QTensor, Scheme, float_out, register_scheme
from .chunks import run_chunks
from .ggml import CHUNK_WEIGHTS

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's fused int4 kernel accepts
DEFAULT_GROUP_SIZE = 128


def _check_float(w: torch.Tensor, scheme: str) -> None:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        found = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
        raise MLMFError(f"{scheme}: expected a floating-point tensor, found {found}")
    if w.dim() == 0 or w.numel() == 0:
        raise MLMFError(f"{scheme}: expected a non-empty tensor with at least 1 dimension, "
                        f"found shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise MLMFError(f"{scheme}: the tensor holds inf or nan values; cannot quantize them")


# -- int8: per-output-channel symmetric -------------------------------------------------------
def int8_params(w2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``(rows, cols)`` int8 and scales ``(rows,)`` float32 of a 2-D float tensor."""
    w = w2d.float()
    scale = w.abs().amax(dim=1) / 127
    inv = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
    codes = torch.round(w * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def quantize_int8(w: torch.Tensor) -> QTensor:
    """Per-output-channel symmetric int8 (see the module docstring).

    Args:
        w: float tensor; rows are ``shape[0]``, everything else is one channel.

    Returns:
        ``QTensor("int8")`` with ``data`` int8 ``(rows, cols)`` and ``params["scale"]``.

    Raises:
        MLMFError: not floating point, empty, or holding inf/nan.
    """
    _check_float(w, "int8")
    codes, scale = int8_params(w.detach().reshape(w.shape[0], -1))
    return QTensor("int8", tuple(w.shape), codes, {"scale": scale})


def dequantize_int8(qt: QTensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``scale[:, None] * codes`` in float32, written into ``out`` when given."""
    result = float_out(qt.shape, out)
    flat = result.view(qt.data.shape)
    flat.copy_(qt.data)
    flat.mul_(qt.params["scale"][:, None])
    return result


# -- int4: group-wise asymmetric, two codes per byte --------------------------------------------
def pack_pairs(codes: torch.Tensor) -> torch.Tensor:
    """Codes ``(rows, 2k)`` in 0..15 -> ``(rows, k)`` bytes: even index low nibble, odd high."""
    c = codes.to(torch.uint8)
    return torch.bitwise_or(c[:, 0::2], torch.bitwise_left_shift(c[:, 1::2], 4))


def unpack_pairs(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_pairs``: ``(rows, k)`` bytes -> ``(rows, 2k)`` uint8 codes."""
    rows, k = packed.shape
    out = torch.empty(rows, k, 2, dtype=torch.uint8)
    torch.bitwise_and(packed, 0x0F, out=out[:, :, 0])
    torch.bitwise_right_shift(packed, 4, out=out[:, :, 1])
    return out.view(rows, 2 * k)


def _bf16_at_least(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to bfloat16, upwards where round-to-nearest went below ``x``."""
    r = x.to(torch.bfloat16)
    low = r.float() < x
    if bool(low.any()):
        r = torch.where(low, torch.nextafter(r, torch.full_like(r, float("inf"))), r)
    return r


def int4_params(
    w2d: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``(rows, cols)`` uint8 in 0..15, scale and zero ``(rows, cols // g)`` bfloat16."""
    rows, cols = w2d.shape
    g = w2d.float().reshape(rows, cols // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = _bf16_at_least((hi - lo) / 15)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    s, z = scale.float()[..., None], zero.float()[..., None]
    inv = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
    codes = torch.round((g - z) * inv).add_(8).clamp_(0, 15).to(torch.uint8)
    return codes.view(rows, cols), scale, zero


def quantize_int4(w: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE) -> QTensor:
    """Group-wise asymmetric int4, two codes per byte (see the module docstring).

    Args:
        w: float tensor; groups run along the last dimension.
        group_size: weights per (scale, zero) pair; even and dividing ``shape[-1]``
            (32, 64, 128 or 256 let quantized linears use torch's fused int4 kernel).

    Returns:
        ``QTensor("int4")``: ``data`` uint8 ``(rows, cols // 2)``, ``params["scale"]`` and
        ``params["zero"]`` bfloat16 ``(rows, cols // group_size)``, ``options["group_size"]``.

    Raises:
        MLMFError: bad group size or shape, non-float input, inf/nan.
    """
    _check_float(w, "int4")
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise MLMFError(f"int4: group_size must be a positive even integer (e.g. "
                        f"{', '.join(map(str, INT4_GROUP_SIZES))}), found {group_size!r}")
    cols = w.shape[-1]
    if cols % group_size:
        raise MLMFError(f"int4: the last dimension ({cols}) must be a multiple of group_size "
                        f"{group_size}; pick a group size that divides it")
    codes, scale, zero = int4_params(w.detach().reshape(-1, cols), group_size)
    return QTensor("int4", tuple(w.shape), pack_pairs(codes), {"scale": scale, "zero": zero},
                   {"group_size": group_size})


def dequantize_int4(qt: QTensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(q - 8) * scale + zero`` per group in float32, written into ``out`` when given.

    A fused C kernel (``native.int4_dequantizer``) runs chunks of groups in parallel where
    it is built; the torch ops below are the reference, with the same rounding.
    """
    group_size = int(qt.options["group_size"])
    scale, zero = qt.params["scale"], qt.params["zero"]
    groups = qt.numel // group_size if group_size > 0 else 0
    if (group_size <= 0 or group_size % 2 or qt.numel % group_size
            or qt.data.numel() * 2 != qt.numel
            or scale.numel() != groups or zero.numel() != groups):
        raise MLMFError(
            f"int4 tensor of shape {list(qt.shape)} with group_size {group_size} needs "
            f"{qt.numel // 2} code bytes and {groups} scales and zeros; found "
            f"{qt.data.numel()} bytes, {scale.numel()} scales, {zero.numel()} zeros")
    result = float_out(qt.shape, out)
    packed = qt.data.reshape(-1, group_size // 2).contiguous()
    scale, zero = scale.reshape(-1).contiguous(), zero.reshape(-1).contiguous()
    values = result.view(-1, group_size)
    bf16 = scale.dtype == zero.dtype == torch.bfloat16 and packed.dtype == torch.uint8
    fn = (native.int4_dequantizer() if bf16 else None) or _dequantize_int4_groups

    def run(start: int, stop: int) -> None:
        fn(packed[start:stop], scale[start:stop], zero[start:stop], values[start:stop])

    run_chunks(run, packed.shape[0], max(1, CHUNK_WEIGHTS // group_size))
    return result


def _dequantize_int4_groups(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                            out: torch.Tensor) -> None:
    out.copy_(unpack_pairs(packed))
    out.sub_(8).mul_(scale.float()[:, None]).add_(zero.float()[:, None])


def _quantize_int4_scheme(w: torch.Tensor, **options: Any) -> QTensor:
    unknown = set(options) - {"group_size"}
    if unknown:
        raise MLMFError(f"int4: unknown options {sorted(unknown)}; supported: group_size")
    return quantize_int4(w, **options)


def _quantize_int8_scheme(w: torch.Tensor, **options: Any) -> QTensor:
    if options:
        raise MLMFError(f"int8: takes no options, found {sorted(options)}")
    return quantize_int8(w)


register_scheme(Scheme("int8", _quantize_int8_scheme, dequantize_int8,
                       "symmetric int8, one float32 scale per output channel"))
register_scheme(Scheme("int4", _quantize_int4_scheme, dequantize_int4,
                       "asymmetric int4 per group (bf16 scale and zero), 2 codes per byte"))
