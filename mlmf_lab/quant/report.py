"""How much a quantized model differs from its float original, layer by layer.

``report(model_ref, model_q, inputs)`` compares every ``QuantLinear`` of ``model_q`` with the
``nn.Linear`` of the same name in ``model_ref``: the weight error (relative L2 and SNR), and,
by running both models on ``inputs``, the output drift of that layer (accumulated through
the network) and its local drift (the quantized layer fed the float model's input).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import MLMFError
from ..tables import Column, Table, fields_dict, fields_row
from .linear import QuantLinear

ERROR_SAMPLES = 20_000  # per layer, kept for histograms


def relative_error(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """``||approx - ref|| / ||ref||`` in float64 (0 when both are 0, inf when only ref is)."""
    num = torch.linalg.vector_norm((approx.double() - ref.double()).flatten()).item()
    den = torch.linalg.vector_norm(ref.double().flatten()).item()
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def snr_db(rel_error: float) -> float:
    """Signal-to-noise ratio in dB of an approximation with this relative L2 error."""
    return math.inf if rel_error == 0 else -20.0 * math.log10(rel_error)


@dataclass(frozen=True)
class LayerReport:
    """One quantized layer against its float original."""

    name: str
    scheme: str
    shape: tuple[int, ...]
    bits_per_weight: float
    rel_error: float  # ||W_q - W|| / ||W||
    snr_db: float  # 20 log10(||W|| / ||W_q - W||)
    drift: float  # relative L2 of this layer's output, errors of earlier layers included
    local_drift: float  # the quantized layer on the float model's input for it

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def as_dict(self) -> dict[str, Any]:
        """JSON data; an infinite SNR (an exact layer) or a drift not measured is None."""
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


@dataclass(frozen=True)
class QuantReport:
    """Per-layer errors of a quantized model; ``_repr_html_`` shows the table.

    Attributes:
        layers: one ``LayerReport`` per quantized linear.
        output_drift: relative L2 between the two models' outputs on the inputs.
        errors: layer name -> a fixed subsample of ``(W_q - W) / rms(W)`` (for histograms).
    """

    layers: tuple[LayerReport, ...]
    output_drift: float
    errors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def schemes(self) -> str:
        return ", ".join(sorted({r.scheme for r in self.layers}))

    @property
    def bits_per_weight(self) -> float:
        """Over all quantized layers, weighted by their sizes."""
        n = sum(r.numel for r in self.layers)
        return sum(r.bits_per_weight * r.numel for r in self.layers) / n if n else 0.0

    @property
    def rel_error(self) -> float:
        """Relative L2 error of all quantized weights together (each layer weighted by size)."""
        n = sum(r.numel for r in self.layers)
        return math.sqrt(sum(r.rel_error**2 * r.numel for r in self.layers) / n) if n else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON data: the layers and the totals (the error samples stay out)."""
        return {"layers": [r.as_dict() for r in self.layers], "schemes": self.schemes,
                "bits_per_weight": self.bits_per_weight, "rel_error": self.rel_error,
                "output_drift": self.output_drift}

    def rows(self) -> list[dict[str, Any]]:
        return [row for r in self.layers for row in r.rows()]

    def __repr__(self) -> str:
        return (f"QuantReport({self.schemes}: {len(self.layers)} layers, "
                f"{self.bits_per_weight:.2f} bits/weight, weight error {self.rel_error:.4f}, "
                f"output drift {self.output_drift:.4f})")

    def table(self) -> Table:
        return Table(
            [Column("name", "layer", code=True), Column("scheme"),
             Column("bits_per_weight", "bits/weight", ".2f"),
             Column("rel_error", "rel. L2 error", ".4f"), Column("snr_db", "SNR (dB)", ".1f"),
             Column("drift", "output drift", ".4f"), Column("local_drift", "local drift", ".4f")],
            self.rows(), title=f"{self.schemes}: {len(self.layers)} quantized layers, "
            f"{self.bits_per_weight:.2f} bits/weight, weight error {self.rel_error:.4f}, "
            f"model output drift {self.output_drift:.4f}")

    def _repr_html_(self) -> str:
        return self.table().html()


def _first_tensor(out: Any) -> torch.Tensor:
    """The first tensor in a model output (a tensor, a tuple, a dict or a ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, Mapping) else out
    if isinstance(values, (tuple, list)) or isinstance(out, Mapping):
        for v in values:
            if isinstance(v, torch.Tensor):
                return v
    raise MLMFError(f"the model returned {type(out).__name__}; expected a tensor or a "
                    "tuple/dict holding one")


def _run(model: nn.Module, inputs: Any) -> torch.Tensor:
    if isinstance(inputs, Mapping):
        return _first_tensor(model(**inputs))
    if isinstance(inputs, (tuple, list)):
        return _first_tensor(model(*inputs))
    return _first_tensor(model(inputs))


def _capture(
    modules: Mapping[str, nn.Module], store: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> list[Any]:
    """Forward hooks keeping the first (input, output) of each module."""
    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            store.setdefault(name, (args[0].detach(), output.detach()))
        return hook
    return [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]


def _error_sample(ref: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    err = (approx - ref).flatten()
    rms = ref.pow(2).mean().sqrt()
    step = max(1, err.numel() // ERROR_SAMPLES)
    return (err[::step][:ERROR_SAMPLES] / (rms if rms > 0 else 1.0)).clone()


@torch.no_grad()
def report(model_ref: nn.Module, model_q: nn.Module, inputs: Any) -> QuantReport:
    """Compare a quantized model with its float original, layer by layer.

    Args:
        model_ref: the float model.
        model_q: the same architecture after ``quantize_model`` (or loaded with
            ``keep_quantized=True``); its ``QuantLinear`` layers are compared with the
            ``nn.Linear`` layers of the same names in ``model_ref``.
        inputs: what both models are called with: a tensor, a tuple (positional) or a dict
            (keyword arguments).

    Returns:
        A ``QuantReport`` with one ``LayerReport`` per quantized layer.

    Raises:
        MLMFError: ``model_q`` has no quantized layers, or a name has no float twin.

    Example:
        >>> rep = ml.quant.report(model, model_q, torch.randn(4, 64))  # doctest: +SKIP
    """
    quantized = {n: m for n, m in model_q.named_modules() if isinstance(m, QuantLinear)}
    if not quantized:
        raise MLMFError("the quantized model has no QuantLinear layers; "
                        "run ml.quant.quantize_model first")
    originals: dict[str, nn.Module] = {}
    for name in quantized:
        try:
            originals[name] = model_ref.get_submodule(name)
        except AttributeError:
            originals[name] = nn.Identity()
        if not isinstance(getattr(originals[name], "weight", None), torch.Tensor):
            raise MLMFError(f"layer {name!r} of the quantized model has no float twin with a "
                            "weight in the reference model; pass the same architecture")
    seen_ref: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    seen_q: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = _capture(originals, seen_ref) + _capture(quantized, seen_q)
    try:
        out_ref, out_q = _run(model_ref, inputs), _run(model_q, inputs)
    finally:
        for h in handles:
            h.remove()
    layers, errors = [], {}
    for name, layer in quantized.items():
        qt = layer.qweight
        w = torch.as_tensor(originals[name].weight).detach().float()
        wq = qt.dequantize()
        rel = relative_error(w, wq)
        drift = local = math.nan  # a layer the inputs never reach has no output to compare
        if name in seen_ref and name in seen_q:
            x_ref, y_ref = seen_ref[name]
            drift = relative_error(y_ref, seen_q[name][1])
            local = relative_error(y_ref, layer(x_ref))
        layers.append(LayerReport(name, qt.scheme, tuple(qt.shape), layer.weight_nbytes * 8.0
                                  / qt.numel, rel, snr_db(rel), drift, local))
        errors[name] = _error_sample(w, wq)
    return QuantReport(tuple(layers), relative_error(out_ref, out_q), errors)
