"""Does a model's config compute what a llama.cpp GGUF file describes?

Filling a model checks its tensors' names and shapes, which catch most disagreements
(hidden size, layers, heads, vocabulary). Some hyperparameters change the computation and no
shape: the rotary scaling (``rope_type`` and its parameters), the rotary base ``rope_theta``
and the norms' epsilon. A default-rope ``LlamaForCausalLM`` filled from a Llama 3 file loads
cleanly and computes other logits. ``config_mismatches`` compares these between the model's
config and the config the file carries (``config_from_gguf``: what ``ml.convert(gguf,
folder)`` writes as ``config.json``); ``check_model_config`` is ``ml.load_into``'s refusal.

Numbers are compared once stored as float32, as GGUF keeps them (``gguf_hf.agree``). Two
rotary scalings are the same when llama.cpp computes the same with both (``gguf_rope``: Llama
3's divisors to 1e-6, YaRN's attention factor whether written as ``attention_factor`` or as
an ``mscale`` pair), so a config written another way (Llama 3's parameters solved from a
file's ``rope_freqs``) still matches; only when they differ are the keys that differ named.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError, MLMFError
from .gguf_arch import Arch, HFConfig, rope_dimension
from .gguf_hf import ModelView, agree, config_from_gguf
from .gguf_model import HF_CONFIG_KEY
from .gguf_rope import RopeScaling, scaling_from_hf

EPSILONS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")  # transformers' names
ROPE = "rope_parameters"  # transformers 5's name; older configs: rope_scaling + rope_theta


@dataclass(frozen=True)
class ConfigMismatch:
    """One setting on which a model's config and a file's disagree.

    Attributes:
        key: the config key (``rms_norm_eps``; rotary ones as ``rope_parameters.<key>``).
        model: the model's value (None: the model's config does not set it).
        file: the file's value (None: the file's config does not set it).
    """

    key: str
    model: Any
    file: Any

    def describe(self) -> str:
        model, file = ("no value" if v is None else repr(v) for v in (self.model, self.file))
        return f"{self.key}: the model has {model}, the file has {file}"


def _running(c: HFConfig, arch: Arch) -> RopeScaling | None:
    """The scaling llama.cpp runs for config ``c``; None for one it does not run."""
    try:
        s = scaling_from_hf(c, rope_dimension(c), arch.rope_scalings)
    except MLMFError:
        return None
    return RopeScaling() if s.kind == "linear" and agree(s.factor, 1.0) else s


def _rope_keys(c: HFConfig) -> dict[str, Any]:
    """The config's rotary parameters without ``rope_theta``, ``type`` read as ``rope_type``."""
    rope = {("rope_type" if k == "type" else k): v for k, v in c.rope.items()}
    rope.pop("rope_theta", None)
    return rope


def _rope_mismatches(model: HFConfig, file: HFConfig, arch: Arch) -> list[ConfigMismatch]:
    out = []
    theta = [c.rope.get("rope_theta", 10000.0) for c in (model, file)]  # transformers' default
    if not agree(*theta):
        out.append(ConfigMismatch(f"{ROPE}.rope_theta", *theta))
    ours, theirs = _running(model, arch), _running(file, arch)
    if ours is not None and theirs is not None and ours.same(theirs):
        return out
    m, f = _rope_keys(model), _rope_keys(file)
    keys = sorted(m.keys() | f.keys(), key=lambda k: (k != "rope_type", k))  # the type first
    differ = [ConfigMismatch(f"{ROPE}.{k}", m.get(k), f.get(k)) for k in keys
              if not agree(m.get(k), f.get(k))]
    # Llama 3's divisors also move with rope_theta alone; and where neither scaling is one
    # llama.cpp runs (or a config lacks the head size), the keys are all there is to compare
    if differ or out or (ours is None and theirs is None):
        return out + differ
    return [ConfigMismatch(ROPE, model.rope, file.rope)]


def config_mismatches(model_config: Mapping[str, Any], file_config: Mapping[str, Any],
                      arch: Arch) -> list[ConfigMismatch]:
    """The shape-invisible settings on which two configs of architecture ``arch`` disagree.

    Args:
        model_config: the model's config as a dict (``PretrainedConfig.to_dict()``).
        file_config: the file's (``config_from_gguf``).
        arch: the file's architecture (its rotary scalings).

    Returns:
        The norms' epsilon (each of ``EPSILONS`` both configs have), ``rope_theta`` and the
        rotary scaling's parameters (architectures with rotary embeddings) that differ; empty
        when the model computes what the file describes.

    Example:
        >>> from mlmf_lab.formats.gguf_arch import ARCHS
        >>> [m.describe() for m in config_mismatches(
        ...     {"rms_norm_eps": 1e-6, "rope_theta": 10000.0},
        ...     {"rms_norm_eps": 1e-5, "rope_theta": 10000.0}, ARCHS["llama"])]
        ['rms_norm_eps: the model has 1e-06, the file has 1e-05']
    """
    out = [ConfigMismatch(k, model_config[k], file_config[k]) for k in EPSILONS
           if k in model_config and k in file_config and not agree(model_config[k],
                                                                    file_config[k])]
    if arch.rope_scalings:
        out += _rope_mismatches(HFConfig(dict(model_config), None),
                                HFConfig(dict(file_config), None), arch)
    return out


def model_config(model: nn.Module) -> dict[str, Any] | None:
    """The model's config as a dict: a transformers ``PretrainedConfig`` or a dataclass (the
    lab's own models) at ``model.config``; None for a model without one."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    try:
        from transformers import PretrainedConfig
    except ImportError:  # then nothing else has such a config
        return None
    return config.to_dict() if isinstance(config, PretrainedConfig) else None


def check_model_config(model: nn.Module, view: ModelView) -> None:
    """Refuse to fill ``model`` from ``view`` when its config computes something else.

    Raises:
        ConfigError: naming the file, each setting, the model's value and the file's, and
            how to build a model that matches.
        MLMFError: the file's config cannot be rebuilt (``config_from_gguf``'s errors, e.g.
            a rotary scaling transformers has no ``rope_type`` for).

    Warns:
        UserWarning: the file carries no config and transformers has no GGUF mapping for
            its architecture (llama.cpp's converter's bert), so nothing can be compared.
    """
    values = model_config(model)
    if values is None:
        return
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    source, arch = view.source, view.arch
    if not isinstance(source.metadata.get(HF_CONFIG_KEY), dict) and \
            arch.name not in GGUF_CONFIG_MAPPING:
        eps = {k: source.metadata[k] for k in source.metadata  # values read: these only
               if k.startswith(f"{arch.name}.attention.layer_norm")}
        warnings.warn(f"{source.path}: {type(model).__name__}'s config is not checked against "
                      f"the file: it carries no {HF_CONFIG_KEY} and transformers has no GGUF "
                      f"config mapping for {arch.name!r}; llama.cpp runs it with {eps}",
                      stacklevel=3)
        return
    wrong = config_mismatches(values, config_from_gguf(source), arch)
    if wrong:
        raise ConfigError(
            f"the {type(model).__name__}'s config does not compute what the file describes "
            f"(these settings change no tensor shape: the weights would load and give other "
            f"logits): {'; '.join(m.describe() for m in wrong)}. Build the model from the "
            f"config the file carries: ml.convert('{source.path}', folder) writes it as "
            "folder/config.json (with the weights, for from_pretrained(folder)); or set these "
            "values in the model's config before building it", source.path)


__all__ = ["EPSILONS", "ConfigMismatch", "check_model_config", "config_mismatches",
           "model_config"]
