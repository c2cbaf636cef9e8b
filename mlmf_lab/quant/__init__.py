"""Quantization: a registry of schemes (GGUF block types, int8, int4) and quantized layers."""

from . import ggml, intx  # noqa: F401  (register the GGUF block types; int8 and int4)
from .base import SCHEMES, QTensor, Scheme, dequantize, get_scheme, quantize, register_scheme
from .kernels import kernels_for
from .linear import QuantizeSummary, QuantLinear, quantize_model
from .report import LayerReport, QuantReport, report

__all__ = [
    "SCHEMES", "QTensor", "Scheme", "dequantize", "get_scheme", "quantize", "register_scheme",
    "QuantLinear", "QuantizeSummary", "kernels_for", "quantize_model",
    "LayerReport", "QuantReport", "report",
]
