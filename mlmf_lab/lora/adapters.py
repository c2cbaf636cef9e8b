"""LoRA adapters: inject, combine, merge and unmerge exactly, PEFT files both ways.

>>> import mlmf_lab as ml
>>> ml.lora.inject(model, rank=8, alpha=16, targets=["q_proj", "v_proj"])  # doctest: +SKIP
>>> ml.lora.merge(model); ml.lora.unmerge(model)                          # doctest: +SKIP

The maths lives in ``lora_math`` (pure functions), the wrapper module in ``lora_layer``,
the PEFT file format in ``lora_peft``, the summary table in ``lora_summary``, and merging
into quantized bases (``ml.quant.QuantLinear``) in ``lora_quant``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import events
from ..errors import ConfigError
from ..tables import fields_dict
from .layer import (
    BASE_KINDS,
    AdapterSpec,
    BaseKind,
    LoraLayer,
    active_adapters,
    adapter_names,
    base_kind,
    freeze_base,
    lora_layers,
    register_base_kind,
    require_unmerged,
    set_active,
    target_candidates,
    wrap_module,
    wrappable_suffixes,
)
from .math import (
    combine_deltas,
    delta_norm,
    delta_singular_values,
    lora_delta,
    lora_scaling,
    matches_target,
    scaled_delta,
)
from .peft import load_peft_adapter, save_peft_adapter
from .summary import AdapterRow, LoraSummary, summary


def inject(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: str | Sequence[str],
    dropout: float = 0.0,
    name: str = "default",
    use_rslora: bool = False,
) -> LoraSummary:
    """Add adapter ``name`` to every targeted layer; the base is frozen, the adapter made active.

    Args:
        model: any ``nn.Module`` holding ``nn.Linear``, GPT-2 ``Conv1D`` (handled with
            ``fan_in_fan_out``, detected from the layer type) or ``ml.quant.QuantLinear`` layers.
        rank: ``r``; alpha: ``lora_alpha``; forward is ``base(x) + (alpha/r)·B(A(dropout(x)))``.
        targets: a regex matched against whole module paths, or a list of names matched as
            the path or its suffix after a dot (PEFT's rules).
        dropout: dropout on the adapter input during training.
        name: adapter name (several adapters can live side by side).
        use_rslora: scaling ``alpha/sqrt(r)``.

    Returns:
        A ``LoraSummary`` of the wrapped modules.

    Raises:
        ConfigError: no module matches ``targets`` (the message lists some module names),
            bad rank/dropout, or the adapter name already exists.
        UnsupportedError: a matched module is of a type LoRA cannot wrap.

    Example:
        >>> ml.lora.inject(model, rank=8, alpha=16, targets=["q_proj", "v_proj"])  # doctest: +SKIP
    """
    spec = AdapterSpec(rank, float(alpha), use_rslora, dropout)
    if name in adapter_names(model):
        raise ConfigError(f"adapter {name!r} already exists in the model; pick another name")
    if not isinstance(targets, str) and not list(targets):
        raise ConfigError("targets is empty; give module names or a regex")
    candidates = target_candidates(model)
    paths = [p for p, _ in candidates if matches_target(p, targets)]
    for path in paths:  # check them all before wrapping any
        module = model.get_submodule(path)
        if not isinstance(module, LoraLayer):
            base_kind(module, path)
    if not paths:
        raise ConfigError(
            f"targets {targets!r} matched no module; LoRA-wrappable modules here end in: "
            f"{', '.join(wrappable_suffixes(model)) or 'nothing (no nn.Linear or Conv1D)'}"
        )
    with events.activity("lora-inject", used=[model],
                         params={"name": name, "rank": rank, "alpha": alpha,
                                 "targets": targets if isinstance(targets, str) else list(targets),
                                 "use_rslora": use_rslora, "dropout": dropout}) as act:
        for path in paths:
            wrap_module(model, path).add_adapter(name, spec)
        set_active(model, [name])
        freeze_base(model)
        act.generated.append(model)
    return summary(model, names=[name])


def disable(model: nn.Module) -> None:
    """Run the base model only (adapters kept, skipped in forward)."""
    require_unmerged(model, "disable adapters")
    for layer in lora_layers(model).values():
        layer.enabled = False


def enable(model: nn.Module) -> None:
    """Undo ``disable``: the active adapters take part in forward again."""
    for layer in lora_layers(model).values():
        layer.enabled = True


@dataclass(frozen=True)
class MergeReport:
    """What a merge did: adapters and weights folded in, modules touched, storage error.

    ``max_store_error`` is ``max |stored - (W + ΔW)|`` over all modules: 0 for float32
    bases, the rounding of a half-precision base, or the requantization error of a
    quantized base (per module in ``store_errors``).
    """

    adapters: tuple[tuple[str, float], ...]
    modules: tuple[str, ...]
    store_errors: tuple[float, ...]

    @property
    def max_store_error(self) -> float:
        return max(self.store_errors, default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {**fields_dict(self), "max_store_error": self.max_store_error}

    def rows(self) -> list[dict[str, Any]]:
        """One row per merged module with its storage error."""
        return [{"module": m, "store_error": e}
                for m, e in zip(self.modules, self.store_errors, strict=True)]


def merge(model: nn.Module, names: Sequence[str] | None = None, safe: bool = True) -> MergeReport:
    """Fold the active adapters (or ``names``, which become active) into the base weights.

    The merged weight ``W + Σ wᵢ·sᵢ·Bᵢ·Aᵢ`` is computed in float32 and stored in the base's
    own format (dtype, or quantization scheme: dequantize, add, requantize). The original
    weight objects are kept, so ``unmerge`` restores them bit for bit.

    Args:
        model: a model with LoRA layers.
        names: adapters to merge; default the active combination.
        safe: compute every merged weight first and check it for NaN/Inf before changing
            any layer (nothing is modified if one fails).

    Returns:
        A ``MergeReport``.

    Raises:
        ConfigError: nothing to merge, already merged, or (safe) a non-finite merged weight.
    """
    if names is not None:
        set_active(model, list(names))
    every = lora_layers(model)
    if any(m.merged for m in every.values()):
        raise ConfigError("the model is already merged; call ml.lora.unmerge(model) first")
    active = list(dict(pair for m in every.values() for pair in m.active).items())
    layers = {p: m for p, m in every.items() if m.active and m.enabled}
    if not layers:
        raise ConfigError("no active, enabled adapter to merge; inject or set_active first")
    with events.activity("merge", used=[model], params={"adapters": active, "safe": safe}) as act:
        staged: list[tuple[LoraLayer, object, float]] = []
        for path, layer in layers.items():
            target = layer.merge_target()
            # NaN and ±Inf reach amax/amin: two reductions, no temporary of the weight's size
            if safe and not bool(torch.isfinite(target.amax()) & torch.isfinite(target.amin())):
                raise ConfigError(f"merging {active} into {path!r} gives NaN/Inf; "
                                  "no layer was changed (the adapter is broken)")
            stored, err = layer.kind.encode(layer.base_layer, target)
            if safe:
                staged.append((layer, stored, err))
            else:
                layer.commit_merge(stored)
                staged.append((layer, None, err))
        for layer, stored, _ in staged:
            if stored is not None:
                layer.commit_merge(stored)
        act.generated.append(model)
    return MergeReport(tuple(active), tuple(layers), tuple(e for _, _, e in staged))


def unmerge(model: nn.Module) -> list[str]:
    """Restore every merged layer's original base weight exactly; returns the paths restored.

    Raises:
        ConfigError: nothing is merged.
    """
    merged = {p: m for p, m in lora_layers(model).items() if m.merged}
    if not merged:
        raise ConfigError("no merged adapter to unmerge; call ml.lora.merge(model) first")
    with events.activity("unmerge", used=[model], params={"modules": len(merged)}) as act:
        for layer in merged.values():
            layer.unmerge()
        act.generated.append(model)
    return list(merged)


def unload(model: nn.Module, merge_first: bool = False) -> nn.Module:
    """Remove every LoRA wrapper, putting the base layers back (merged first if asked).

    With ``merge_first`` this is PEFT's ``merge_and_unload``: the adapters are gone and the
    active combination lives in the base weights (no way back). Returns ``model``.
    """
    if merge_first and not any(m.merged for m in lora_layers(model).values()):
        merge(model)
    for path, layer in lora_layers(model).items():
        model.set_submodule(path, layer.base_layer)
    return model


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every layer (layers left without adapters are unwrapped)."""
    if name not in adapter_names(model):
        raise ConfigError(f"unknown adapter {name!r}; the model has {adapter_names(model)}")
    for path, layer in lora_layers(model).items():
        if name in layer.specs:
            layer.delete_adapter(name)
        if not layer.specs:
            model.set_submodule(path, layer.base_layer)


def delta_spectra(model: nn.Module, name: str | None = None) -> dict[str, torch.Tensor]:
    """Singular values of each layer's ``ΔW`` for adapter ``name`` (default: the first active
    one, else the first added), by module path; ``r`` values each, descending."""
    if name is None:
        active = active_adapters(model) or [(n, 1.0) for n in adapter_names(model)]
        if not active:
            raise ConfigError("the model has no LoRA adapter")
        name = active[0][0]
    out = {}
    for path, layer in lora_layers(model).items():
        if name in layer.specs:
            out[path] = delta_singular_values(layer.lora_A[name], layer.lora_B[name],
                                              layer.specs[name].scaling)
    if not out:
        raise ConfigError(f"no adapter {name!r} in the model; it has {adapter_names(model)}")
    return out


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model`` (shared tensors counted once)."""
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    return sum(n for n, t in seen.values() if t), sum(n for n, _ in seen.values())


__all__ = [
    "BASE_KINDS", "AdapterRow", "AdapterSpec", "BaseKind", "LoraLayer", "LoraSummary",
    "MergeReport", "active_adapters", "adapter_names", "combine_deltas", "delete_adapter",
    "delta_norm", "delta_singular_values", "delta_spectra", "disable", "enable", "freeze_base",
    "inject", "load_peft_adapter", "lora_delta", "lora_layers", "lora_scaling",
    "matches_target", "merge", "parameter_counts", "register_base_kind", "save_peft_adapter",
    "scaled_delta", "set_active", "summary", "unload", "unmerge", "wrap_module",
]
