"""PEFT adapter folders, both ways: ``adapter_config.json`` + ``adapter_model.safetensors``.

PEFT stores module ``<path>``'s factors as ``base_model.model.<path>.lora_A.weight``
(``(r, in)``) and ``...lora_B.weight`` (``(out, r)``), for ``nn.Linear`` and GPT-2
``Conv1D`` alike; the adapter name is not part of the key. Scaling is ``lora_alpha / r``
(``/ sqrt(r)`` with ``use_rslora``), with per-module ``rank_pattern``/``alpha_pattern``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import events
from ..atomic import replacing
from ..errors import ConfigError, FormatError, MLMFError, StateDictError, UnsupportedError
from ..files import read_json
from ..formats import load_state_dict, save_state_dict
from .layer import (
    AdapterSpec,
    LoraLayer,
    adapter_names,
    base_kind,
    freeze_base,
    lora_layers,
    set_active,
    target_candidates,
    wrap_module,
)
from .math import matches_target, pattern_value
from .patterns import pattern_problem
from .summary import LoraSummary, summary

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."
KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])\.weight$")

# config fields whose non-default values change the maths in ways this loader does not do
_UNSUPPORTED: dict[str, Any] = {
    "use_dora": False, "lora_bias": False, "bias": "none", "modules_to_save": None,
    "layer_replication": None, "trainable_token_indices": None, "target_parameters": None,
    "use_bdlora": None, "arrow_config": None, "velora_config": None,
    "monteclora_config": None, "kasa_config": None, "alora_invocation_tokens": None,
    "use_qalora": False,
}

# inits that only set A and B; PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA, MiCA also rewrite W
_PLAIN_INITS = (True, False, "gaussian", "orthogonal", "eva")


def _read_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise MLMFError(f"expected a PEFT adapter folder with {CONFIG_NAME}; not found", folder)
    cfg = read_json(cfg_path, "the adapter config", expect=dict)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UnsupportedError(f"expected peft_type 'LORA', found {cfg.get('peft_type')!r}",
                               cfg_path)
    odd = {k: cfg[k] for k, default in _UNSUPPORTED.items()
           if cfg.get(k, default) not in (default, [], {}, False)}
    if odd:
        raise UnsupportedError(f"adapter uses features mlmf_lab does not load: {odd}; "
                               f"supported is plain LoRA (bias='none', no DoRA)", cfg_path)
    init = cfg.get("init_lora_weights", True)
    if init not in _PLAIN_INITS:
        raise UnsupportedError(
            f"adapter was made with init_lora_weights={init!r}, which also changes the base "
            "weights; expected a plain LoRA init (true, false, 'gaussian', 'orthogonal', "
            "'eva'). Convert it with PEFT: save_pretrained(..., "
            "path_initial_model_for_weight_conversion=...)", cfg_path)
    _check_values(cfg, cfg_path)
    return cfg


MAX_ALPHA = 1e6  # PEFT configs use up to a few thousand; far beyond, updates overflow float16


def _check_values(cfg: dict[str, Any], cfg_path: Path) -> None:
    """The numbers, patterns and flags the loader uses, checked before any is used."""
    def bad(field: str, expected: str, value: Any) -> FormatError:
        return FormatError(f"expected {expected} for {field!r}, found {str(value)[:80]}",
                           cfg_path)

    def rank_ok(v: Any) -> bool:
        return type(v) is int and v > 0 or type(v) is float and v.is_integer() and 0 < v < 2**31

    def alpha_ok(v: Any) -> bool:  # abs(NaN) <= x is False; a huge int compares exactly
        return type(v) in (int, float) and abs(v) <= MAX_ALPHA

    if not rank_ok(cfg.get("r")):
        raise bad("r", "a positive integer", cfg.get("r"))
    if not alpha_ok(cfg.get("lora_alpha")):
        raise bad("lora_alpha", f"a finite number of at most {MAX_ALPHA:g}", cfg.get("lora_alpha"))
    for field, ok, expected in (("rank_pattern", rank_ok, "positive integers"),
                                ("alpha_pattern", alpha_ok, f"numbers up to {MAX_ALPHA:g}")):
        patterns = cfg.get(field) or {}
        if not isinstance(patterns, dict):
            raise bad(field, "an object of module pattern -> value", patterns)
        for key, value in patterns.items():
            problem = pattern_problem(key)
            if problem is not None:
                raise FormatError(f"{field} key {str(key)[:80]!r} cannot be used: {problem}",
                                  cfg_path)
            if not ok(value):
                raise bad(f"{field}[{str(key)[:80]!r}]", expected, value)
    dropout = cfg.get("lora_dropout") or 0.0
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:
        raise bad("lora_dropout", "a number in [0, 1)", dropout)
    if type(cfg.get("use_rslora", False)) is not bool:
        raise bad("use_rslora", "true or false", cfg.get("use_rslora"))


def _read_factors(folder: Path) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """``module path -> {"A": tensor, "B": tensor}``; keys of any other form are an error."""
    weights = next((folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise MLMFError(f"expected one of {', '.join(WEIGHTS_NAMES)}; none found", folder)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    bad = []
    for key, tensor in load_state_dict(weights).items():
        m = KEY.match(key)
        if m is None:
            bad.append(key)
        else:
            factors.setdefault(m["module"], {})[m["factor"]] = tensor
    if bad:
        raise StateDictError(
            f"expected keys '{PREFIX}<module>.lora_A.weight' / '.lora_B.weight'; found "
            f"{len(bad)} other key(s): {', '.join(bad[:10])}", weights)
    half = sorted(p for p, f in factors.items() if len(f) != 2)
    if half:
        raise StateDictError(f"expected lora_A and lora_B for every module; only one of them "
                             f"for: {', '.join(half[:10])}", weights)
    if not factors:
        raise StateDictError("expected LoRA factors; the file holds no tensors", weights)
    return weights, factors


def load_peft_adapter(
    model: nn.Module, path: str | os.PathLike[str], name: str = "default"
) -> LoraSummary:
    """Load a PEFT LoRA adapter folder into ``model`` as adapter ``name`` (made active).

    As with ``inject``, the base is frozen afterwards (only LoRA factors require grad).

    Every check runs before the model is touched: a key naming no module of ``model``,
    a factor of the wrong shape, or a config this loader cannot honour is an error.

    Args:
        model: the plain base model (e.g. a transformers ``LlamaForCausalLM``), not a
            ``PeftModel``.
        path: folder with ``adapter_config.json`` and ``adapter_model.safetensors``
            (or ``adapter_model.bin``, read with ``weights_only``).
        name: adapter name in ``model``.

    Returns:
        A ``LoraSummary`` whose rows list the modules the adapter touched.

    Raises:
        StateDictError: keys matching no module (all listed), missing factors, or shapes
            that do not fit (module and both shapes named).
        UnsupportedError: DoRA, trained biases, modules_to_save and similar extras.
        FormatError: ``adapter_config.json`` is not JSON, or a value in it cannot work (a
            rank that is not a positive integer, a non-finite alpha, a rank/alpha pattern
            that is not a simple regular expression, a dropout outside [0, 1)).
        ConfigError: ``name`` already exists.
        Each names the file (``adapter_config.json``, or the weights).
    """
    folder = Path(path)
    try:
        return _load(model, folder, name)
    except (ConfigError, UnsupportedError) as e:  # from the layers, which know no file
        if e.path is not None:
            raise
        raise type(e)(e.message, folder / CONFIG_NAME) from None


def _load(model: nn.Module, folder: Path, name: str) -> LoraSummary:
    cfg = _read_config(folder)
    weights, factors = _read_factors(folder)
    if name in adapter_names(model):
        raise ConfigError(f"adapter {name!r} already exists in the model; pick another name")
    modules = dict(target_candidates(model))
    missing = sorted(p for p in factors if p not in modules)
    if missing:
        hint = ", ".join(list(modules)[:8])
        raise StateDictError(
            f"{len(missing)} adapter module(s) match no module of the model: "
            f"{', '.join(PREFIX + p for p in missing[:20])}"
            f"{' ...' if len(missing) > 20 else ''}; the model's modules look like: {hint}",
            weights)
    specs: dict[str, AdapterSpec] = {}
    for mod_path, f in factors.items():
        module = modules[mod_path]
        kind = module.kind if isinstance(module, LoraLayer) else base_kind(module, mod_path)
        n_in, n_out = kind.features(module.base_layer if isinstance(module, LoraLayer) else module)
        rank = int(pattern_value(cfg.get("rank_pattern") or {}, mod_path, cfg["r"]))
        alpha = float(pattern_value(cfg.get("alpha_pattern") or {}, mod_path,
                                    cfg["lora_alpha"]))
        for factor, want in (("A", (rank, n_in)), ("B", (n_out, rank))):
            if tuple(f[factor].shape) != want:
                raise StateDictError(
                    f"module {mod_path!r}: lora_{factor} expected shape {want} (r={rank}, "
                    f"in={n_in}, out={n_out}), found {tuple(f[factor].shape)}", weights)
        specs[mod_path] = AdapterSpec(rank, alpha, bool(cfg.get("use_rslora", False)),
                                      float(cfg.get("lora_dropout", 0.0) or 0.0))
    with events.activity("lora-load", used=[folder, model],
                         params={"name": name, "r": cfg["r"], "lora_alpha": cfg["lora_alpha"],
                                 "modules": len(factors)}) as act:
        for mod_path, f in factors.items():
            wrap_module(model, mod_path).add_adapter(name, specs[mod_path], f["A"], f["B"])
        set_active(model, [name])
        freeze_base(model)
        act.generated.append(model)
    return summary(model, names=[name])


def _common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


def peft_config(model: nn.Module, name: str = "default") -> dict[str, Any]:
    """The ``adapter_config.json`` content PEFT needs to rebuild adapter ``name``."""
    layers = {p: m for p, m in lora_layers(model).items() if name in m.specs}
    if not layers:
        raise ConfigError(f"no adapter {name!r} in the model; it has {adapter_names(model)}")
    specs = {p: m.specs[name] for p, m in layers.items()}
    rslora = {s.rslora for s in specs.values()}
    if len(rslora) > 1:
        raise ConfigError(f"adapter {name!r} mixes rsLoRA and plain scaling across modules; "
                          "one PEFT config cannot express that")
    r = _common([s.rank for s in specs.values()])
    alpha = _common([s.alpha for s in specs.values()])
    suffixes = sorted({p.rpartition(".")[2] for p in layers})
    hit = {p for p, _ in target_candidates(model) if matches_target(p, suffixes)}
    targets = suffixes if hit == set(layers) else sorted(layers)
    base_name = getattr(model, "name_or_path", None) or None
    return {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_name,
        "r": r, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": targets,
        "rank_pattern": {re.escape(p): s.rank for p, s in specs.items() if s.rank != r},
        "alpha_pattern": {re.escape(p): s.alpha for p, s in specs.items() if s.alpha != alpha},
        "lora_dropout": _common([s.dropout for s in specs.values()]),
        "use_rslora": rslora.pop(), "fan_in_fan_out": any(m.fan_in_fan_out
                                                         for m in layers.values()),
        "bias": "none", "lora_bias": False, "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True, "layers_to_transform": None,
        "layers_pattern": None, "revision": None,
    }


def save_peft_adapter(
    model: nn.Module, path: str | os.PathLike[str], name: str = "default"
) -> Path:
    """Write adapter ``name`` as a PEFT folder that ``PeftModel.from_pretrained`` loads.

    Args:
        model: a model with adapter ``name``.
        path: target folder (created; the two files are replaced atomically).
        name: the adapter to save.

    Returns:
        The folder.

    Raises:
        ConfigError: no adapter ``name`` in the model.
    """
    folder = Path(path)
    cfg = peft_config(model, name)
    tensors = {}
    for mod_path, layer in lora_layers(model).items():
        if name in layer.specs:
            tensors[f"{PREFIX}{mod_path}.lora_A.weight"] = layer.lora_A[name].detach().cpu()
            tensors[f"{PREFIX}{mod_path}.lora_B.weight"] = layer.lora_B[name].detach().cpu()
    with events.activity("lora-save", used=[model],
                         params={"name": name, "r": cfg["r"], "modules": len(tensors) // 2}) as act:
        folder.mkdir(parents=True, exist_ok=True)
        save_state_dict({k: v.contiguous() for k, v in tensors.items()},
                        folder / WEIGHTS_NAMES[0], metadata={"format": "pt"})
        with replacing(folder / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        act.generated.append(folder)
    return folder
