"""Rotary scaling between a Hugging Face config and llama.cpp's GGUF, both ways.

transformers names a scaling by ``rope_type`` with its parameters (``rope_parameters``;
``rope_scaling`` in older configs). llama.cpp runs one from ``{arch}.rope.scaling.*`` keys
and, for Llama 3, a tensor of per-frequency divisors. ``RopeScaling`` is the second form,
what llama.cpp computes, as read in its source (llama-cpp-python 0.3.36:
``llama-model.cpp``, ``llama-context.cpp``, ``ggml-cpu/ops.cpp``):

- ``linear``: type ``linear`` and ``factor``; the positions are divided by it.
- ``llama3``: no scaling key; ``rope_freqs.weight[i]`` divides frequency ``i``
  (``llama3_divisors``, as llama.cpp's converter computes them). Its ``llama``
  architecture loads that tensor; its ``qwen2`` does not.
- ``yarn``: type ``yarn``, ``factor`` and ``original_context_length``. For llama and qwen2
  llama.cpp reads nothing else of YaRN but ``rope.scaling.attn_factor``, a multiplier on
  its own magnitude scaling ``1 + 0.1 ln(factor)``; its ramp between interpolated and
  extrapolated frequencies always uses beta_fast 32 and beta_slow 1, floored and ceiled as
  transformers does by default. The converter also copies the ``yarn_*`` keys a config
  has, which these loaders do not read: a config whose betas differ is refused, and an
  ``attention_factor`` (or ``mscale`` pair) is carried by ``attn_factor``.

The way back rebuilds ``rope_type`` and its parameters from what the file makes llama.cpp
run; for Llama 3 that means solving the divisors for the parameters (``fit_llama3``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..errors import FormatError, MLMFError, UnsupportedError

if TYPE_CHECKING:
    from gguf import GGUFWriter

    from .gguf_arch import HFConfig

YARN_BETAS = {"beta_fast": 32.0, "beta_slow": 1.0}  # what llama.cpp's llama and qwen2 use


def rope_freqs_name() -> str:
    """llama.cpp's name of Llama 3's divisors, from ``gguf``'s tables."""
    from gguf import MODEL_TENSOR, TENSOR_NAMES

    return TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"


def inv_freqs(base: float, dim: int) -> torch.Tensor:
    """The rotary frequencies ``base ** (-2i / dim)`` in float32, as both sides compute them."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def llama3_divisors(base: float, dim: int, factor: float, low: float, high: float,
                    original: float) -> torch.Tensor:
    """Llama 3's divisor of each rotary frequency (float32, ``dim // 2`` of them).

    A wavelength ``2π / f`` shorter than ``original / high`` is kept (1), one longer than
    ``original / low`` is divided by ``factor``, and in between the divisor moves smoothly:
    ``1 / ((1 - s) / factor + s)`` with ``s = (original / wavelength - low) / (high - low)``.
    Evaluated in float32 in the order llama.cpp's converter uses, so the bytes match its.
    """
    wavelen = 2 * math.pi / inv_freqs(base, dim)
    smooth = (original / wavelen - low) / (high - low)
    between = 1 / ((1 - smooth) / factor + smooth)
    return torch.where(wavelen < original / high, 1.0,
                       torch.where(wavelen > original / low, factor, between)).float()


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude scaling of cos and sin (transformers' and llama.cpp's ``get_mscale``)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def to_float32(x: float) -> float:
    """``x`` as GGUF stores it: rounded to float32."""
    return float(torch.tensor(x, dtype=torch.float32))


@dataclass(frozen=True, eq=False)  # compared by ``same``: a tensor has no plain ==
class RopeScaling:
    """A rotary scaling as llama.cpp runs it.

    Attributes:
        kind: ``rope.scaling.type``: ``"none"``, ``"linear"`` or ``"yarn"`` (Llama 3's is
            ``"none"`` with ``divisors``).
        factor: ``rope.scaling.factor`` (1 without one).
        original_context: ``rope.scaling.original_context_length`` (yarn).
        attn_factor: ``rope.scaling.attn_factor`` (yarn; 1 without one).
        divisors: Llama 3's ``rope_freqs.weight``, else None.
    """

    kind: str = "none"
    factor: float = 1.0
    original_context: int = 0
    attn_factor: float = 1.0
    divisors: torch.Tensor | None = None

    def same(self, other: RopeScaling) -> bool:
        """Whether llama.cpp computes the same with both (numbers compared as float32)."""
        if (self.divisors is None) != (other.divisors is None):
            return False
        if self.divisors is not None and other.divisors is not None and not (
                self.divisors.shape == other.divisors.shape
                and torch.allclose(self.divisors, other.divisors, rtol=1e-6, atol=0)):
            return False
        f32 = to_float32
        return (self.kind, f32(self.factor), self.original_context, f32(self.attn_factor)) == \
            (other.kind, f32(other.factor), other.original_context, f32(other.attn_factor))


# -- Hugging Face -> llama.cpp ------------------------------------------------------------------
def _number(rope: Mapping[str, Any], key: str, kind: str, path: Any) -> float:
    value = rope.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise MLMFError(f"config.json's rope_type {kind!r} needs {key} as a positive number; "
                        f"found {value!r}", path)
    return float(value)


def scaling_from_hf(c: HFConfig, dim: int, supported: frozenset[str]) -> RopeScaling:
    """The ``RopeScaling`` llama.cpp needs to run the config's rotary scaling.

    Args:
        c: the config.
        dim: the rotary dimensions of a head.
        supported: the ``rope_type`` values llama.cpp runs for this architecture.

    Raises:
        UnsupportedError: a ``rope_type`` llama.cpp does not run for the architecture (the
            message lists those it does), or YaRN settings llama.cpp does not read.
        MLMFError: a missing or non-positive parameter (named).
    """
    rope = c.rope
    kind = str(rope.get("rope_type", rope.get("type")) or "default")
    if kind not in supported:
        raise UnsupportedError(f"config.json asks for rope_type {kind!r}, which llama.cpp does "
                               f"not run for this architecture; supported: "
                               f"{', '.join(sorted(supported))}", c.path)
    if kind == "default":
        return RopeScaling()
    factor = _number(rope, "factor", kind, c.path)
    if kind == "linear":
        return RopeScaling("linear", factor)
    if kind == "llama3":
        args = [_number(rope, k, kind, c.path) for k in
                ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")]
        base = float(rope.get("rope_theta", 10000.0))
        return RopeScaling(divisors=llama3_divisors(base, dim, factor, *args))
    # yarn
    original = int(_number(rope, "original_max_position_embeddings", kind, c.path))
    for key, value in YARN_BETAS.items():
        if rope.get(key) not in (None, value):
            raise UnsupportedError(
                f"config.json's yarn has {key} {rope[key]!r}; llama.cpp's llama and qwen2 "
                f"read no {key} from a GGUF file and always use {value:g}", c.path)
    if rope.get("truncate") is False:
        raise UnsupportedError("config.json's yarn has truncate false; llama.cpp always floors "
                               "and ceils the correction range", c.path)
    attention = rope.get("attention_factor")
    if attention is None:
        mscale, all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
        attention = (yarn_mscale(factor, mscale) / yarn_mscale(factor, all_dim)
                     if mscale and all_dim else yarn_mscale(factor))
    return RopeScaling("yarn", factor, original, float(attention) / yarn_mscale(factor))


def write_scaling(s: RopeScaling, rope: Mapping[str, Any],
                  w: GGUFWriter) -> dict[str, torch.Tensor]:
    """Write ``s``'s keys with ``GGUFWriter``'s helpers; the tensors it needs (Llama 3's
    divisors, by llama.cpp name). ``rope`` is the config's, for the keys llama.cpp's converter
    copies beside (``yarn_*``), which llama.cpp's llama does not read."""
    from gguf import RopeScalingType

    if s.kind == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(s.factor)
    elif s.kind == "yarn":
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(s.factor)
        w.add_rope_scaling_orig_ctx_len(s.original_context)
        copied = {"extrapolation_factor": w.add_rope_scaling_yarn_ext_factor,
                  "attention_factor": w.add_rope_scaling_yarn_attn_factor,
                  "beta_fast": w.add_rope_scaling_yarn_beta_fast,
                  "beta_slow": w.add_rope_scaling_yarn_beta_slow}
        for key, add in copied.items():
            if rope.get(key) is not None:
                add(float(rope[key]))
        if to_float32(s.attn_factor) != 1.0:  # the one llama.cpp reads
            w.add_rope_scaling_attn_factors(s.attn_factor)
    return {} if s.divisors is None else {rope_freqs_name(): s.divisors}


# -- llama.cpp -> Hugging Face ------------------------------------------------------------------
def scaling_from_gguf(metadata: Mapping[str, Any], arch: str, divisors: torch.Tensor | None,
                      path: str | os.PathLike[str] | None = None) -> RopeScaling:
    """The scaling llama.cpp runs a file with: its keys read with llama.cpp's defaults (type
    ``linear``, ``factor`` 0 meaning 1, the original context defaulting to the context length).

    Raises:
        UnsupportedError: a scaling type transformers' llama has no counterpart for, or
            Llama 3's divisors combined with a scaling.
        FormatError: a value of the wrong type.
    """
    def key(name: str, default: Any, types: tuple[type, ...]) -> Any:
        value = metadata.get(f"{arch}.{name}", default)
        if isinstance(value, bool) or not isinstance(value, types):
            raise FormatError(f"{arch}.{name} must be a {types[0].__name__}; found {value!r}",
                              path)
        return value

    kind = key("rope.scaling.type", "linear", (str,))
    factor = float(key("rope.scaling.factor", key("rope.scale_linear", 0.0, (float, int)),
                       (float, int))) or 1.0
    if kind not in ("none", "linear", "yarn"):
        raise UnsupportedError(f"{arch}.rope.scaling.type is {kind!r}; transformers' "
                               f"{arch} has no counterpart read by this lab (none, linear, "
                               "yarn, and Llama 3's rope_freqs)", path)
    if kind == "none" or (kind == "linear" and factor == 1.0):
        s = RopeScaling()
    elif kind == "linear":
        s = RopeScaling("linear", factor)
    else:
        original = key("rope.scaling.original_context_length",
                       key("context_length", 0, (int,)), (int,))
        s = RopeScaling("yarn", factor, original,
                        float(key("rope.scaling.attn_factor", 1.0, (float, int))))
    if divisors is not None:
        if s.kind != "none":
            raise UnsupportedError(f"{rope_freqs_name()} together with {arch}.rope.scaling.type "
                                   f"{kind!r}: transformers has no rope_type for both", path)
        s = RopeScaling(divisors=divisors.float())
    return s


def scaling_to_hf(s: RopeScaling, base: float, dim: int,
                  path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """transformers' ``rope_type`` and parameters for ``s`` (without ``rope_theta``).

    Raises:
        UnsupportedError: divisors no Llama 3 parameters give.
        FormatError: divisors that are not one per rotary frequency.
    """
    if s.divisors is not None:
        if s.divisors.shape != (dim // 2,):
            raise FormatError(f"{rope_freqs_name()} has shape {tuple(s.divisors.shape)}; "
                              f"{dim} rotary dimensions need ({dim // 2},)", path)
        fitted = fit_llama3(s.divisors, base, dim)
        if fitted is None:
            raise UnsupportedError(f"{rope_freqs_name()} follows llama 3's rule for no factor, "
                                   "low/high freq factor and original context; transformers has "
                                   "no rope_type for it", path)
        return fitted
    if s.kind == "linear":
        return {"rope_type": "linear", "factor": s.factor}
    if s.kind == "yarn":
        out: dict[str, Any] = {"rope_type": "yarn", "factor": s.factor,
                               "original_max_position_embeddings": s.original_context}
        if to_float32(s.attn_factor) != 1.0:
            out["attention_factor"] = s.attn_factor * yarn_mscale(s.factor)
        return out
    return {"rope_type": "default"}


def fit_llama3(divisors: torch.Tensor, base: float, dim: int) -> dict[str, Any] | None:
    """Llama 3 parameters whose ``llama3_divisors`` are ``divisors``, if any are.

    The divisors fix ``factor`` (the largest) and the two wavelength thresholds
    ``original / low`` and ``original / high``, not ``original`` itself: it is taken as the
    whole number nearest the larger threshold, so ``low_freq_factor`` comes out 1 for
    Llama 3's own settings. In between, ``1 / divisor`` is linear in ``1 / wavelength``,
    which a least-squares line recovers from two frequencies or more; with fewer, the
    thresholds are placed in the gaps around them. Round numbers are tried first; the
    parameters are returned only if they give the divisors back (to 1e-6).
    """
    r = divisors.double()
    c = inv_freqs(base, dim).double() / (2 * math.pi)  # 1 / wavelength, decreasing
    factor = float(r.max())
    if factor <= 1.0:
        return None
    one, top = r == 1.0, r == factor
    mid = ~one & ~top
    s = (1 / r - 1 / factor) / (1 - 1 / factor)  # 0 at the factor end, 1 at the kept end
    hi = float(c[one].min()) if one.any() else 2 * float(c.max())  # b < hi
    lo = float(c[top].max())  # a > lo
    if int(mid.sum()) >= 2:
        x, y = c[mid], s[mid]
        k = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
        m = float(y.mean()) - k * float(x.mean())
        a, b = -m / k, (1 - m) / k
    elif int(mid.sum()) == 1:
        cm, sm = float(c[mid][0]), float(s[mid][0])
        b = math.sqrt(cm * hi)
        a = (cm - sm * b) / (1 - sm)
    else:
        a, b = lo * (hi / lo) ** (1 / 3), lo * (hi / lo) ** (2 / 3)
    if not 0 < a < b:
        return None
    original = max(1, round(1 / a))
    low, high = a * original, b * original
    snapped = [float(f"{v:.6g}") for v in (factor, low, high)]
    for f, lf, hf in (snapped, (factor, low, high)):
        if torch.allclose(llama3_divisors(base, dim, f, lf, hf, original).double(), r,
                          rtol=1e-6, atol=0):
            return {"rope_type": "llama3", "factor": f, "low_freq_factor": lf,
                    "high_freq_factor": hf, "original_max_position_embeddings": original}
    return None


__all__ = ["YARN_BETAS", "RopeScaling", "fit_llama3", "inv_freqs", "llama3_divisors",
           "rope_freqs_name", "scaling_from_gguf", "scaling_from_hf", "scaling_to_hf",
           "write_scaling", "yarn_mscale"]
