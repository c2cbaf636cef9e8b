"""CPU kernels behind quantized linears: one small class per backend, first match wins.

Each kernel computes ``x @ W.T`` for a 2-D float input from weights it keeps quantized,
and can give its weights back as a ``QTensor``. Measured on a 2-core x86 machine
(``benchmarks/bench_quant.py``), the fastest accurate paths are:

- ``int8-rowwise`` (``kernels_int8.py``, where the CPU has AVX512-VNNI): our own int8
  kernel, activations quantized per input row; the fastest at batch 1 and as accurate as
  weight-only int8 on inputs with outliers.
- ``fbgemm-int8``: torch's x86/fbgemm dynamic quantized linear (activations quantized per
  call to uint8, weights prepacked int8 per channel); several times faster than float32 at
  batch 1 and 32. ``int8pack-bf16`` (``torch._weight_int8pack_mm`` on bfloat16
  activations) is slower but weight-only, hence more accurate on inputs with outliers; with
  float32 activations that op is 5-100x slower than float32 itself.
- ``q4_0-vnni`` (``kernels_int8.py``, AVX512-VNNI): q4_0 weights kept as GGUF's blocks (split
  into codes and scales), activations quantized to q8_0 per call, as llama.cpp does; several
  times faster than float32 at batch 1.
- ``int4pack``: torch's fused int4 CPU kernel (``_weight_int4pack_mm_for_cpu``) on
  bfloat16 activations, for ``int4`` (group 32-256) and ``q4_0`` weights; q4_0's per-block
  scales are kept as float16 and expanded per call into a shared scratch (zero points are
  all 0), so the layer holds 4.5 bits per weight.
- ``dequant``: any registered scheme; dequantizes into a per-thread scratch buffer that
  all layers share, then ``F.linear``.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from ..errors import UnsupportedError
from . import kernels_int8
from .base import QTensor, dequantize
from .bits import pack_nibbles
from .blocks_legacy import join_q4_0, nibbles, split_q4_0
from .intx import INT4_GROUP_SIZES, pack_pairs, unpack_pairs

_SCRATCH = threading.local()


def scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A per-thread 1-D buffer of at least ``numel`` elements, shared by every layer."""
    bufs: dict[torch.dtype, torch.Tensor] = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < numel:
        buf = bufs[dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


class LinearKernel(Protocol):
    name: str

    # (B, in) -> (B, out), plus ``bias`` (out,) when given
    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor: ...
    def qtensor(self) -> QTensor: ...
    @property
    def nbytes(self) -> int: ...


# -- int8: torch's fbgemm / x86 dynamic quantized linear ----------------------------------------
@functools.cache
def fbgemm_available() -> bool:
    engines = torch.backends.quantized.supported_engines
    ops = torch.ops.quantized
    return ("x86" in engines or "fbgemm" in engines) and hasattr(ops, "linear_dynamic")


def _prepack_int8(codes: torch.Tensor, scale: torch.Tensor) -> object:
    with warnings.catch_warnings():  # quantized-tensor constructors warn of deprecation
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(
            codes, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, None)


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y.add_(bias)  # y is fresh from the kernel


@functools.cache
def int8_full_range() -> bool:
    """Whether 8-bit activations are safe: no int16 saturation of u8*s8 pair sums.

    Without VNNI, fbgemm sums pairs of u8*s8 products in int16, which saturates unless the
    activations use 7 bits (``reduce_range``). A probe that would saturate tells us.
    """
    rows, cols = 16, 64
    codes = torch.full((rows, cols), 127, dtype=torch.int8)
    codes[1::2] = -127
    scale = torch.full((rows,), 1 / 127)
    x = torch.ones(2, cols)  # quantized to the top code, 255
    y = torch.ops.quantized.linear_dynamic(x, _prepack_int8(codes, scale), False)
    return bool(torch.allclose(y, x @ (codes.float() * scale[:, None]).T, rtol=1e-3))


class Int8Dynamic:
    """Per-channel int8 weights prepacked for fbgemm; per-call uint8 activations.

    Activations are quantized per call with one scale for the whole input (fbgemm's
    dynamic linear), using all 8 bits where the CPU cannot saturate (``int8_full_range``).
    Inputs with outlier features (BERT-style LayerNorm outputs) lose more here than with
    weight-only int8; the ``dequant`` kernel keeps activations in float.
    """

    name = "fbgemm-int8"

    def __init__(self, qt: QTensor) -> None:
        codes, scale = qt.data, qt.params["scale"]
        self.shape = qt.shape
        self.scale = scale  # kept: a zero scale is packed as 1 (its codes are all 0)
        self.packed = _prepack_int8(codes, torch.where(scale > 0, scale, torch.ones_like(scale)))
        self.reduce_range = not int8_full_range()

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # the bias is added per call, not folded into ``packed``: then no edit of it (in place,
        # through ``.data``, or a new tensor) can leave a stale copy inside the kernel
        x = x.float().contiguous()
        return _add_bias(torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range),
                         bias)

    def qtensor(self) -> QTensor:
        w, _ = torch.ops.quantized.linear_unpack(self.packed)
        return QTensor("int8", self.shape, w.int_repr(), {"scale": self.scale})

    @property
    def nbytes(self) -> int:  # int8 codes + float32 scales, as fbgemm holds them
        return self.shape[0] * self.shape[1] + 4 * self.shape[0]


class Int8WeightOnly:
    """int8 weights, bfloat16 activations: torch's ``_weight_int8pack_mm`` (weight-only).

    Slower than fbgemm's dynamic path but keeps activations unquantized (bfloat16), so
    inputs with outlier features lose much less. Its float32-activation path is far slower.
    """

    name = "int8pack-bf16"

    def __init__(self, qt: QTensor) -> None:
        self.shape, self.codes, self.scale = qt.shape, qt.data, qt.params["scale"]
        self.scale_bf16 = self.scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(torch.bfloat16).contiguous()
        return _add_bias(torch._weight_int8pack_mm(x, self.codes, self.scale_bf16).float(), bias)

    def qtensor(self) -> QTensor:
        return QTensor("int8", self.shape, self.codes, {"scale": self.scale})

    @property
    def nbytes(self) -> int:  # codes, float32 scales and their bfloat16 copy
        return self.codes.numel() + 6 * self.shape[0]


# -- int4: torch's fused int4 CPU kernel --------------------------------------------------------
def _pack_int4(codes: torch.Tensor) -> torch.Tensor:
    return torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)


def _nibble_sources(rows: int, cols: int) -> torch.Tensor:
    """For each nibble of the packed layout (byte ``i`` low, then high), the weight it holds.

    The layout depends on the CPU (block sizes for AVX2/AVX512), so it is not written out
    here: packing the base-16 digits of each weight's index reveals where each nibble went.
    """
    count = rows * cols
    index = torch.arange(count, dtype=torch.int32).view(rows, cols)
    source = torch.zeros(count, dtype=torch.int32)
    shift = 0
    while (1 << shift) < count:
        plane = _pack_int4((index >> shift) & 15).view(-1)
        digits = torch.stack([plane & 15, plane >> 4], dim=-1).view(-1).to(torch.int32)
        source |= digits << shift
        shift += 4
    return source


_cached_sources = functools.lru_cache(maxsize=16)(_nibble_sources)
CACHE_MAX_WEIGHTS = 1 << 21  # layouts of layers up to this size are remembered (8 MiB each)


def _unpack_int4(packed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Codes ``(rows, cols)`` uint8 back from the kernel's packed layout."""
    small = rows * cols <= CACHE_MAX_WEIGHTS
    source = (_cached_sources if small else _nibble_sources)(rows, cols)
    nibbles = torch.stack([packed.view(-1) & 15, packed.view(-1) >> 4], dim=-1).view(-1)
    codes = torch.empty(rows * cols, dtype=torch.uint8)
    codes[source] = nibbles
    return codes.view(rows, cols)


@functools.cache
def int4pack_available() -> bool:
    """The fused kernel exists and its layout round-trips on a probe (checked once)."""
    if not hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        return False
    try:
        codes = torch.randint(0, 16, (80, 64), generator=torch.Generator().manual_seed(0))
        packed = _pack_int4(codes)
        ok = packed.dtype == torch.uint8 and packed.numel() * 2 == codes.numel()
        return ok and bool((_unpack_int4(packed, 80, 64) == codes).all())
    except RuntimeError:
        return False


def q4_0_parts(qt: QTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``(rows, cols)`` uint8 and float16 scales ``(rows, cols // 32)`` of q4_0 rows."""
    rows, cols = qt.shape[0], qt.shape[-1]
    qs, d = split_q4_0(qt.data.reshape(rows, -1))
    return nibbles(qs.view(-1, 16)).view(rows, cols), d  # GGUF weight order


def q4_0_from_parts(codes: torch.Tensor, d: torch.Tensor) -> QTensor:
    """Inverse of ``q4_0_parts``: the GGUF block bytes again."""
    rows, cols = codes.shape
    qs = pack_nibbles(codes.reshape(-1, 32)).view(rows, -1)
    return QTensor("q4_0", (rows, cols), join_q4_0(qs, d))


class Int4Packed:
    """int4 / q4_0 weights in the fused kernel's layout; bfloat16 activations."""

    name = "int4pack"

    def __init__(self, qt: QTensor) -> None:
        self.shape, self.scheme = qt.shape, qt.scheme
        rows, cols = qt.shape
        if qt.scheme == "q4_0":
            codes, d = q4_0_parts(qt)
            self.group_size = 32
            self.d = d.t().contiguous()  # (groups, rows) float16; zero points are all 0
            self.scale_zero: torch.Tensor | None = None
        else:
            codes = unpack_pairs(qt.data)
            self.group_size = int(qt.options["group_size"])
            self.scale_zero = torch.stack(  # (groups, rows, 2) bfloat16, the kernel's layout
                [qt.params["scale"].t(), qt.params["zero"].t()], dim=-1).contiguous()
        self.packed = _pack_int4(codes)

    def _scale_zero(self) -> torch.Tensor:
        if self.scale_zero is not None:
            return self.scale_zero
        buf = scratch(2 * self.d.numel(), torch.bfloat16).view(*self.d.shape, 2)
        buf[..., 0].copy_(self.d)
        buf[..., 1].zero_()
        return buf

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = torch._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16).contiguous(), self.packed, self.group_size, self._scale_zero())
        return _add_bias(y.float(), bias)

    def qtensor(self) -> QTensor:
        rows, cols = self.shape
        codes = _unpack_int4(self.packed, rows, cols)
        if self.scale_zero is None:
            return q4_0_from_parts(codes, self.d.t())
        params = {"scale": self.scale_zero[..., 0].t().contiguous(),
                  "zero": self.scale_zero[..., 1].t().contiguous()}
        return QTensor("int4", self.shape, pack_pairs(codes), params,
                       {"group_size": self.group_size})

    @property
    def nbytes(self) -> int:
        extra = self.d if self.scale_zero is None else self.scale_zero
        return self.packed.numel() + extra.nbytes


# -- any scheme: dequantize into a shared buffer ------------------------------------------------
class Dequant:
    """Keeps the ``QTensor`` as is; dequantizes it into a shared scratch buffer per call."""

    name = "dequant"

    def __init__(self, qt: QTensor) -> None:
        self.qt = qt

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        # inference only: QuantLinear sends inputs that need a gradient around every kernel
        w = scratch(self.qt.numel, torch.float32).view(self.qt.shape)
        return F.linear(x.float(), dequantize(self.qt, out=w), bias)

    def qtensor(self) -> QTensor:
        return self.qt

    @property
    def nbytes(self) -> int:
        return self.qt.nbytes


class KernelChoice(NamedTuple):
    name: str
    matches: Callable[[QTensor], bool]
    build: Callable[[QTensor], LinearKernel]


def _int4pack_fits(qt: QTensor) -> bool:
    if len(qt.shape) != 2 or qt.shape[0] % 16 or not int4pack_available():
        return False
    if qt.scheme == "q4_0":
        return True
    return qt.scheme == "int4" and qt.options.get("group_size") in INT4_GROUP_SIZES


KERNELS: list[KernelChoice] = [
    KernelChoice("int8-rowwise", kernels_int8.available, kernels_int8.Int8Rowwise),
    KernelChoice("fbgemm-int8", lambda qt: qt.scheme == "int8" and len(qt.shape) == 2
                 and fbgemm_available(), Int8Dynamic),
    KernelChoice("int8pack-bf16", lambda qt: qt.scheme == "int8" and len(qt.shape) == 2
                 and hasattr(torch, "_weight_int8pack_mm"), Int8WeightOnly),
    KernelChoice("q4_0-vnni", kernels_int8.q4_0_available, kernels_int8.Q4_0Vnni),
    KernelChoice("int4pack", _int4pack_fits, Int4Packed),
    KernelChoice("dequant", lambda qt: True, Dequant),
]


def kernels_for(qt: QTensor) -> list[str]:
    """The kernels that can run ``qt`` on this machine, the default first."""
    return [k.name for k in KERNELS if k.matches(qt)]


def build_kernel(qt: QTensor, kernel: str | None = None) -> LinearKernel:
    """The first kernel that fits ``qt`` (or the one named ``kernel``, if it fits).

    Raises:
        UnsupportedError: ``kernel`` is unknown or cannot run these weights.
    """
    names = [k.name for k in KERNELS]
    if kernel is not None and kernel not in names:
        raise UnsupportedError(f"unknown linear kernel {kernel!r}; supported: {', '.join(names)}")
    for choice in KERNELS:
        if (kernel is None or choice.name == kernel) and choice.matches(qt):
            return choice.build(qt)
    raise UnsupportedError(
        f"kernel {kernel!r} cannot run {qt.scheme} weights of shape {list(qt.shape)} here; "
        f"kernels that can: {', '.join(kernels_for(qt))}")
