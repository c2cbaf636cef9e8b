"""LoRA adapters: inject, combine, merge and unmerge exactly, PEFT files both ways.

>>> import mlmf_lab as ml
>>> ml.lora.inject(model, rank=8, alpha=16, targets=["q_proj", "v_proj"])  # doctest: +SKIP
>>> ml.lora.merge(model); ml.lora.unmerge(model)                          # doctest: +SKIP

Modules: ``math`` (pure functions), ``layer`` (the wrapper module and the base kinds),
``adapters`` (inject, merge, enable, unload), ``peft`` (PEFT's file layout both ways),
``summary`` (the table), ``quant`` (merging into ``ml.quant.QuantLinear`` bases).
"""

from __future__ import annotations

from . import quant  # noqa: F401  (registers QuantLinear as a base kind LoRA can wrap)
from .adapters import (
    BASE_KINDS,
    AdapterRow,
    AdapterSpec,
    BaseKind,
    LoraLayer,
    LoraSummary,
    MergeReport,
    active_adapters,
    adapter_names,
    combine_deltas,
    delete_adapter,
    delta_norm,
    delta_singular_values,
    delta_spectra,
    disable,
    enable,
    freeze_base,
    inject,
    load_peft_adapter,
    lora_delta,
    lora_layers,
    lora_scaling,
    matches_target,
    merge,
    parameter_counts,
    register_base_kind,
    save_peft_adapter,
    scaled_delta,
    set_active,
    summary,
    unload,
    unmerge,
    wrap_module,
)

__all__ = [
    "BASE_KINDS",
    "AdapterRow",
    "AdapterSpec",
    "BaseKind",
    "LoraLayer",
    "LoraSummary",
    "MergeReport",
    "active_adapters",
    "adapter_names",
    "combine_deltas",
    "delete_adapter",
    "delta_norm",
    "delta_singular_values",
    "delta_spectra",
    "disable",
    "enable",
    "freeze_base",
    "inject",
    "load_peft_adapter",
    "lora_delta",
    "lora_layers",
    "lora_scaling",
    "matches_target",
    "merge",
    "parameter_counts",
    "register_base_kind",
    "save_peft_adapter",
    "scaled_delta",
    "set_active",
    "summary",
    "unload",
    "unmerge",
    "wrap_module",
]
