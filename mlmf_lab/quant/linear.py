"""Quantized linear layers and ``quantize_model``: swap ``nn.Linear`` for weights kept quantized.

``QuantLinear`` is a thin shell: the maths live in the kernels (``kernels.py``) and the
schemes. Its ``state_dict()`` gives the effective (dequantized) float weight, so a quantized
model's state loads into a float twin; ``state_dict(keep_vars=True)`` gives the stored
``QTensor``, and ``load_state_dict`` accepts either (a float weight is re-quantized with
the layer's scheme).
"""

from __future__ import annotations

import fnmatch
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import events
from ..errors import MLMFError
from ..progress import bar
from ..tables import Column, Table, fields_dict, fields_row
from ..units import human_bytes
from .base import QTensor, get_scheme, quantize
from .kernels import LinearKernel, build_kernel

PROGRESS_MIN_WEIGHTS = 1 << 24  # smaller models quantize in about a second: no progress bar


class QuantLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` kept quantized (a ``QTensor`` behind a CPU kernel).

    Args:
        qweight: weights of shape ``(out_features, in_features)``.
        bias: optional float bias ``(out_features,)`` (kept as is, not copied).
        kernel: force a kernel by name (``"fbgemm-int8"``, ``"int4pack"``, ``"dequant"``);
            by default the fastest one that fits the scheme.
    """

    def __init__(
        self, qweight: QTensor, bias: torch.Tensor | None = None, kernel: str | None = None
    ) -> None:
        super().__init__()
        if len(qweight.shape) != 2:
            raise MLMFError(f"QuantLinear expects 2-D weights, found shape {list(qweight.shape)}")
        self.out_features, self.in_features = qweight.shape
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise MLMFError(f"QuantLinear bias must have shape [{self.out_features}], "
                            f"found {list(bias.shape)}")
        self.kernel_name = kernel
        self._kernel: LinearKernel = build_kernel(qweight, kernel)
        # the QTensor it was built from, while someone else holds it (a file's state dict):
        # handing it back saves unpacking the kernel's layout, and loading it again is a no-op
        self._source = weakref.ref(qweight)
        self._for_grad: QTensor | None = None  # rebuilt once for the autograd path
        self._scheme, self._options = qweight.scheme, dict(qweight.options)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def kernel(self) -> str:
        return self._kernel.name

    @property
    def qweight(self) -> QTensor:
        """The weights as a ``QTensor`` (rebuilt from the kernel's layout when it packs them)."""
        source = self._source()
        return source if source is not None else self._kernel.qtensor()

    @property
    def weight_nbytes(self) -> int:
        """Bytes the layer holds for its weights (codes, scales, zero points), including the
        copy the autograd path rebuilt from a packed kernel layout, once it did."""
        extra = 0 if self._for_grad is None else self._for_grad.nbytes
        return self._kernel.nbytes + extra

    def set_qweight(self, qweight: QTensor) -> None:
        if tuple(qweight.shape) != (self.out_features, self.in_features):
            raise MLMFError(f"QuantLinear expects weights of shape "
                            f"{[self.out_features, self.in_features]}, found {list(qweight.shape)}")
        if qweight is self._source():
            return
        self._kernel = build_kernel(qweight, self.kernel_name)
        self._source = weakref.ref(qweight)
        self._for_grad = None
        self._scheme, self._options = qweight.scheme, dict(qweight.options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        lead = x.shape[:-1]
        bias_grad = self.bias is not None and self.bias.requires_grad
        if torch.is_grad_enabled() and (x.requires_grad or bias_grad):
            # Training through a frozen quantized base (LoRA on top, QLoRA-style): the fused
            # kernels have no backward, so use the dequantized weight, which autograd can follow.
            w = self._weights_for_grad().dequantize(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            y = F.linear(x.reshape(-1, self.in_features), w, bias)
        else:
            y = self._kernel(x.reshape(-1, self.in_features), self.bias)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def _weights_for_grad(self) -> QTensor:
        """The QTensor to dequantize for autograd: the source while someone holds it; else the
        kernel's layout unpacked once and kept (int4pack unpacks slower than a step runs)."""
        source = self._source()
        if source is not None:
            return source
        if self._for_grad is None:
            self._for_grad = self._kernel.qtensor()
        return self._for_grad

    # -- state dict: float weight out, float or QTensor weight in ------------------------------
    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        qt = self.qweight
        destination[prefix + "weight"] = qt if keep_vars else qt.dequantize()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, local_metadata: dict[str, Any],
        strict: bool, missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        value = state_dict.get(key)
        if value is None:
            if strict:
                missing_keys.append(key)
        elif isinstance(value, QTensor):
            try:
                self.set_qweight(value)
            except MLMFError as e:
                error_msgs.append(f"{key}: {e}")
        elif isinstance(value, torch.Tensor):
            if tuple(value.shape) != (self.out_features, self.in_features):
                error_msgs.append(f"{key}: expected shape {[self.out_features, self.in_features]}"
                                  f", found {list(value.shape)}")
            else:
                self.set_qweight(quantize(value, self.scheme, **self._options))
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}, kernel={self.kernel}")


@dataclass(frozen=True)
class LayerChange:
    """One ``nn.Linear`` replaced by ``quantize_model``."""

    name: str
    shape: tuple[int, int]
    kernel: str
    bytes_before: int  # the float weight
    bytes_after: int  # what the quantized layer holds for it

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes_after / (self.shape[0] * self.shape[1])

    def as_dict(self) -> dict[str, Any]:
        return {**fields_dict(self), "bits_per_weight": self.bits_per_weight}

    def rows(self) -> list[dict[str, Any]]:
        return [{**fields_row(self), "bits_per_weight": self.bits_per_weight}]


@dataclass(frozen=True)
class QuantizeSummary:
    """What ``quantize_model`` did: layers replaced, layers skipped, weight bytes saved."""

    scheme: str
    options: dict[str, Any]
    layers: tuple[LayerChange, ...]
    skipped: tuple[str, ...]

    @property
    def bytes_before(self) -> int:
        return sum(c.bytes_before for c in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.layers)

    @property
    def ratio(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else 0.0

    def __repr__(self) -> str:
        return (f"QuantizeSummary({self.scheme}: {len(self.layers)} linears quantized, "
                f"{len(self.skipped)} skipped, {human_bytes(self.bytes_before)} -> "
                f"{human_bytes(self.bytes_after)}, {self.ratio:.1f}x smaller)")

    def as_dict(self) -> dict[str, Any]:
        return {**fields_dict(self), "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "ratio": self.ratio}

    def rows(self) -> list[dict[str, Any]]:
        return [row for c in self.layers for row in c.rows()]

    def table(self) -> Table:
        return Table(
            [Column("name", "layer", code=True), Column("shape", fmt="shape"), Column("kernel"),
             Column("bits_per_weight", "bits/weight", ".2f"),
             Column("bytes_before", "before", "bytes"), Column("bytes_after", "after", "bytes")],
            self.rows(), title=f"quantized to {self.scheme}: {len(self.layers)} linears, "
            f"{human_bytes(self.bytes_before)} → {human_bytes(self.bytes_after)} "
            f"({self.ratio:.1f}× smaller); skipped: {', '.join(self.skipped) or 'none'}")

    def _repr_html_(self) -> str:
        return self.table().html()


def _skipped(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p)
               for p in patterns)


def quantize_model(
    model: nn.Module, scheme: str, skip: Iterable[str] = (), kernel: str | None = None,
    **options: Any,
) -> QuantizeSummary:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a ``QuantLinear``.

    Args:
        model: any module; only layers of type exactly ``nn.Linear`` are replaced
            (subclasses such as ``nn.MultiheadAttention``'s projection read ``.weight`` directly).
        scheme: a registered scheme (``"int8"``, ``"int4"``, ``"q8_0"``, ``"q4_0"``, ...).
        skip: layer names or glob patterns to leave in float (``"classifier"``, ``"*.pooler.*"``);
            a name also skips everything below it.
        kernel: force a kernel (see ``QuantLinear``).
        **options: scheme options, e.g. ``group_size=64`` for ``int4``.

    Returns:
        A ``QuantizeSummary`` (per-layer kernel, bytes before and after).

    Raises:
        UnsupportedError: unknown scheme (the message lists the supported ones).
        MLMFError: a layer's shape does not fit the scheme (the message names the layer and
            suggests ``skip=``).

    Example:
        >>> summary = ml.quant.quantize_model(model, "int8", skip=["classifier"])  # doctest: +SKIP
    """
    get_scheme(scheme)  # fail before touching the model
    patterns = (skip,) if isinstance(skip, str) else tuple(skip)
    params = {"scheme": scheme, "skip": list(patterns), **options}
    with events.activity("quantize", used=[model], params=params) as act:
        targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
        changes, skipped = [], []
        small = sum(m.weight.numel() for _, m in targets) < PROGRESS_MIN_WEIGHTS
        for name, layer in bar(targets, progress=not small, desc=f"quantize {scheme}", leave=False):
            if _skipped(name, patterns):
                skipped.append(name)
                continue
            try:
                qt = quantize(layer.weight.detach(), scheme, **options)
            except MLMFError as e:
                raise MLMFError(f"cannot quantize layer {name!r} "
                                f"{list(layer.weight.shape)} with {scheme}: {e.message}; "
                                f"leave it in float with skip=[{name!r}]") from None
            new = QuantLinear(qt, layer.bias, kernel=kernel)
            model.set_submodule(name, new)
            before = layer.weight.nbytes
            changes.append(LayerChange(name, (new.out_features, new.in_features), new.kernel,
                                       before, new.weight_nbytes))
        act.generated.append(model)
    return QuantizeSummary(scheme.lower(), dict(options), tuple(changes), tuple(skipped))
