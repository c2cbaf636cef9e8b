"""Our own integer kernels (``native/int8.c``, AVX512-VNNI): ``int8-rowwise`` and ``q4_0-vnni``.

``int8-rowwise``: int8 weights per output channel, activations quantized per input row.

Quantizing each input row with its own scale keeps one outlier token from coarsening the
others; fbgemm's dynamic linear (``fbgemm-int8``) uses one scale for the whole input, which
costs BERT-style models (outlier features after LayerNorm) several times the output error.

- up to ``GEMV_ROWS`` (4) rows (decoding token by token): uint8 activations with a scale
  and zero point per row, AVX512-VNNI dot products that read the weights once for all rows;
- more rows: int8 activations (symmetric, a scale per row), an int8 GEMM on AMX tiles
  (Sapphire Rapids and later), else in blocks of 4 by 4 with VNNI.

Both in ``native/int8.c``, the work cut into small chunks that torch's OpenMP threads take
from a shared counter, or, while a busy process on another core stalls that team, helper
threads that the caller never waits for unless they took work (``native/pool.c``): a busy
neighbour slows a call down by at most its share of a core instead of stalling it.

``q4_0-vnni``: q4_0 weights as stored in GGUF (4.5 bits per weight), activations quantized
to q8_0 (int8 per block of 32) per call, llama.cpp's scheme, for any number of rows.

Inputs with NaN or infinity take the float path (dequantized weights), so they propagate as
in float32. These kernels are offered only where the native library has VNNI
(``native.int8_vnni``); elsewhere ``fbgemm-int8`` and ``int4pack`` are the defaults.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import native
from .base import QTensor
from .blocks_legacy import join_q4_0, split_q4_0

MATMUL_MIN_IN = 16  # narrower layers always take the few-rows path (a zero point per row)
GEMV_ROWS = 4  # beyond, the tiled GEMM reads the weights fewer times than row-by-row dots


def _native_or_float(
    kernel: Int8Rowwise | Q4_0Vnni, x: torch.Tensor, bias: torch.Tensor | None,
    run: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor | None],
) -> torch.Tensor:
    """``run`` on float32 contiguous inputs; where it declines (NaN, inf or extreme inputs),
    the float linear on the dequantized weights."""
    x = x.float().contiguous()
    b = None if bias is None else bias.float().contiguous()
    y = run(x, b)
    return y if y is not None else F.linear(x, kernel.qtensor().dequantize(), b)


def available(qt: QTensor) -> bool:
    return (qt.scheme == "int8" and len(qt.shape) == 2 and 0 < qt.shape[1] <= native.INT8_MAX_IN
            and native.int8_vnni())


class Int8Rowwise:
    """int8 codes ``(out, in)``, float32 scales per output channel, as ``quantize`` made them."""

    name = "int8-rowwise"

    def __init__(self, qt: QTensor) -> None:
        self.shape = qt.shape
        self.codes = qt.data.contiguous()
        self.scale = qt.params["scale"].float().contiguous()
        self.rowsum = self.codes.sum(dim=1, dtype=torch.int32)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return _native_or_float(self, x, bias, self._native)

    def _native(self, x: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor | None:
        few = x.shape[0] <= GEMV_ROWS or self.shape[1] < MATMUL_MIN_IN
        run = native.int8_linear if few else native.int8_matmul
        return run(x, self.codes, self.scale, self.rowsum, b)

    def qtensor(self) -> QTensor:
        return QTensor("int8", self.shape, self.codes, {"scale": self.scale})

    @property
    def nbytes(self) -> int:  # codes, float32 scales, int32 row sums
        return self.codes.numel() + 8 * self.shape[0]


def q4_0_available(qt: QTensor) -> bool:
    return (qt.scheme == "q4_0" and len(qt.shape) == 2 and qt.shape[1] % 32 == 0
            and native.int8_vnni())


class Q4_0Vnni:
    """q4_0 weights as GGUF's blocks split in two: codes ``(out, in / 2)`` and float16 scales
    ``(out, in / 32)``, 4.5 bits per weight as in the file; activations quantized to q8_0 per
    call (int8 per block of 32, llama.cpp's scheme for q4_0 dot products)."""

    name = "q4_0-vnni"

    def __init__(self, qt: QTensor) -> None:
        self.shape = qt.shape
        self.codes, self.scales = split_q4_0(qt.data.reshape(qt.shape[0], -1))

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return _native_or_float(self, x, bias, lambda x, b: native.q4_0_linear(
            x, self.codes, self.scales, b))

    def qtensor(self) -> QTensor:
        return QTensor("q4_0", self.shape, join_q4_0(self.codes, self.scales))

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 2 * self.scales.numel()
