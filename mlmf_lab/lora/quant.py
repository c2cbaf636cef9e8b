"""LoRA on quantized bases: wrap ``ml.quant.QuantLinear`` and merge through its scheme.

Merging dequantizes ``W``, adds ``ΔW`` in float32 and requantizes with the layer's own
scheme and options; the error this introduces (``max |deq(requant(W + ΔW)) - (W + ΔW)|``)
is what ``MergeReport.store_errors`` reports. The original ``QTensor`` is kept, so
unmerging puts back exactly the codes and scales the layer had.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..quant import QTensor, QuantLinear, dequantize, quantize
from .layer import BaseKind, register_base_kind
from .math import max_abs_diff


def _layer(module: nn.Module) -> QuantLinear:
    assert isinstance(module, QuantLinear)  # guaranteed by ``matches``
    return module


def _read(module: nn.Module) -> torch.Tensor:
    return dequantize(_layer(module).qweight)


def _encode(module: nn.Module, target: torch.Tensor) -> tuple[Any, float]:
    layer = _layer(module)
    qt = quantize(target, layer.scheme, **layer.qweight.options)
    return qt, max_abs_diff(dequantize(qt), target)


def _snapshot(module: nn.Module) -> QTensor:
    return _layer(module).qweight


def _assign(module: nn.Module, value: Any) -> None:
    _layer(module).set_qweight(value)


QUANT_LINEAR = BaseKind(
    "ml.quant.QuantLinear", lambda m: isinstance(m, QuantLinear),
    lambda m: (_layer(m).in_features, _layer(m).out_features), False,
    _read, _encode, _snapshot, _assign, priority=10,  # before the dense kinds
)
register_base_kind(QUANT_LINEAR)
