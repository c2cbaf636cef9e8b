"""The quantized-tensor record and the registry of quantization schemes.

A scheme is registered once (``register_scheme``) with its two pure functions;
``quantize``/``dequantize`` dispatch by name, and an unknown name gets an error
listing the supported ones.
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..errors import MLMFError, UnsupportedError

HUGE_PAGE_MIN_BYTES = 4 << 20
MADV_HUGEPAGE = 14  # Linux


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn  # type: ignore[no-any-return]


def float_out(shape: tuple[int, ...], out: torch.Tensor | None) -> torch.Tensor:
    """Where a dequantization of ``shape`` writes: ``out`` viewed as ``shape`` (any contiguous
    float32 tensor of that many elements), or a new tensor (``empty_float32``)."""
    if out is None:
        return empty_float32(shape)
    numel = math.prod(shape)
    if out.dtype != torch.float32 or out.numel() != numel or not out.is_contiguous():
        raise MLMFError(
            f"out must be a contiguous float32 tensor of {numel} elements (shape "
            f"{list(shape)}), found {out.dtype} {list(out.shape)}"
            f"{'' if out.is_contiguous() else ' (not contiguous)'}")
    return out.view(shape)


def empty_float32(shape: tuple[int, ...]) -> torch.Tensor:
    """A new float32 tensor whose memory, when large, is advised to use huge pages.

    Writing a fresh 64 MiB tensor the first time costs 4-5x a copy into warm memory (one
    page fault per 4 KiB page); ``MADV_HUGEPAGE`` on the untouched allocation (what numpy does
    for its large arrays) cuts that to one fault per 2 MiB where the kernel allows it.
    """
    out = torch.empty(shape, dtype=torch.float32)
    nbytes = out.numel() * 4
    madvise = _madvise() if nbytes >= HUGE_PAGE_MIN_BYTES else None
    if madvise is not None:
        page = mmap.PAGESIZE
        start = -(-out.data_ptr() // page) * page
        stop = (out.data_ptr() + nbytes) // page * page
        madvise(start, stop - start, MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return out


@dataclass(frozen=True)
class QTensor:
    """A tensor kept in a quantized layout.

    Attributes:
        scheme: registry name, e.g. ``"q8_0"``, ``"q4_k"``, ``"int8"``, ``"int4"``.
        shape: the logical (dequantized) shape, PyTorch order.
        data: the stored bytes/codes (``uint8`` blocks for GGUF types, codes for int8/int4).
        params: extra tensors a scheme keeps beside ``data`` (scales, zero points); empty for
            GGUF block types, whose scales live inside the blocks.
        options: scheme options that dequantization needs (e.g. ``{"group_size": 128}``).
    """

    scheme: str
    shape: tuple[int, ...]
    data: torch.Tensor
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(d < 0 for d in self.shape):
            raise MLMFError(f"QTensor shape {self.shape} has a negative size")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held: data plus every parameter tensor."""
        return self.data.nbytes + sum(
            p.nbytes for p in self.params.values()
        )

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.numel if self.numel else 0.0

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype=dtype)

    def __repr__(self) -> str:
        return (f"QTensor({self.scheme}, shape={list(self.shape)}, "
                f"{self.bits_per_weight:.2f} bits/weight, {self.nbytes} bytes)")


class Scheme(NamedTuple):
    """One quantization scheme: pure functions tensor -> QTensor -> tensor."""

    name: str
    quantize: Callable[..., QTensor] | None  # (tensor, **options) -> QTensor; None = read-only
    dequantize: Callable[..., torch.Tensor]  # (qt: QTensor, out: Tensor | None) -> float32 Tensor
    description: str = ""


SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> None:
    SCHEMES[scheme.name] = scheme


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name`` (case-insensitive), or an error listing them all."""
    key = str(name).lower()
    if key not in SCHEMES:
        raise UnsupportedError(
            f"unknown quantization scheme {name!r}; supported: {', '.join(sorted(SCHEMES))}"
        )
    return SCHEMES[key]


def quantize(tensor: torch.Tensor, scheme: str, **options: Any) -> QTensor:
    """Quantize ``tensor`` with a registered scheme.

    Args:
        tensor: a floating-point tensor (any shape the scheme accepts).
        scheme: e.g. ``"q8_0"``, ``"q4_0"``, ``"int8"``, ``"int4"``.
        **options: scheme options (``group_size=`` for ``int4``).

    Returns:
        A ``QTensor``.

    Raises:
        UnsupportedError: the scheme is unknown (the message lists the supported ones).

    Example:
        >>> qt = ml.quant.quantize(torch.randn(64, 64), "q8_0")  # doctest: +SKIP
    """
    found = get_scheme(scheme)
    if found.quantize is None:
        writable = sorted(k for k, s in SCHEMES.items() if s.quantize is not None)
        raise UnsupportedError(
            f"scheme {found.name!r} can be read (dequantized) but not produced; "
            f"quantizable: {', '.join(writable)}"
        )
    return found.quantize(tensor, **options)


def dequantize(
    qt: QTensor, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Back to a float tensor of ``qt.shape``; ``out`` (float32) is filled in place if given."""
    result = get_scheme(qt.scheme).dequantize(qt, out=out)
    return result if result.dtype == dtype else result.to(dtype)
