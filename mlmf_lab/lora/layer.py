"""The LoRA wrapper module and the registry of base-layer kinds it can wrap.

``LoraLayer`` is a thin shell: the base layer's own forward, plus
``Σ wᵢ·sᵢ·Bᵢ(Aᵢ(dropout(x)))`` for the active adapters. Merging replaces the base
weight by a new tensor and keeps the original object, so unmerging is bit-exact.

A base kind says how to read a layer's weight as float32 and how to store a merged
one back; kinds are tried by falling ``priority`` and the first whose ``matches`` accepts a
module wins (``BASE_KINDS``), whatever order they were registered in.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnsupportedError
from .math import lora_scaling, max_abs_diff, scaled_delta


class BaseKind(NamedTuple):
    """How LoRA wraps one family of layers.

    ``read`` returns the weight as float32 in the layer's own layout; ``encode`` turns a
    float32 merged weight into what the layer stores and returns it with the max abs error
    that storing introduced; ``snapshot``/``assign`` get and set that stored object.

    ``priority``: kinds are tried from the highest (ties by name). The built-in dense kinds
    are 0; a kind for a subclass of ``nn.Linear`` needs more to be tried before them.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    features: Callable[[nn.Module], tuple[int, int]]  # (in_features, out_features)
    fan_in_fan_out: bool  # weight stored (in, out), as GPT-2 Conv1D
    read: Callable[[nn.Module], torch.Tensor]
    encode: Callable[[nn.Module, torch.Tensor], tuple[Any, float]]
    snapshot: Callable[[nn.Module], Any]
    assign: Callable[[nn.Module, Any], None]
    priority: int


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)  # guaranteed by the kind's ``matches``
    return weight


def _dense_read(module: nn.Module) -> torch.Tensor:
    return _weight(module).detach().float()


def _dense_encode(module: nn.Module, target: torch.Tensor) -> tuple[Any, float]:
    dtype = _weight(module).dtype
    stored = target.to(dtype)
    return stored, 0.0 if dtype == torch.float32 else max_abs_diff(stored, target)


def _dense_snapshot(module: nn.Module) -> Any:
    return _weight(module).data


def _dense_assign(module: nn.Module, value: Any) -> None:
    _weight(module).data = value


def _linear_features(module: nn.Module) -> tuple[int, int]:
    n_out, n_in = _weight(module).shape
    return int(n_in), int(n_out)


def _conv1d_features(module: nn.Module) -> tuple[int, int]:
    n_in, n_out = _weight(module).shape
    return int(n_in), int(n_out)


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D (weight (in, out)), recognised without importing it
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf")
            and isinstance(weight, torch.Tensor) and weight.dim() == 2)


BASE_KINDS: list[BaseKind] = []  # in the order they are tried (register_base_kind)


def register_base_kind(kind: BaseKind) -> None:
    """Add (or replace, by name) a layer family LoRA can wrap, tried by its ``priority``."""
    BASE_KINDS[:] = sorted([k for k in BASE_KINDS if k.name != kind.name] + [kind],
                           key=lambda k: (-k.priority, k.name))


register_base_kind(BaseKind("nn.Linear", lambda m: isinstance(m, nn.Linear), _linear_features,
                            False, _dense_read, _dense_encode, _dense_snapshot, _dense_assign,
                            priority=0))
register_base_kind(BaseKind("Conv1D (transformers, weight (in, out))", _is_conv1d,
                            _conv1d_features, True, _dense_read, _dense_encode,
                            _dense_snapshot, _dense_assign, priority=0))


def base_kind(module: nn.Module, path: str = "") -> BaseKind:
    """The first registered kind that accepts ``module``, or an error listing them."""
    for kind in BASE_KINDS:
        if kind.matches(module):
            return kind
    raise UnsupportedError(
        f"module {path!r} is a {type(module).__name__}, which LoRA cannot wrap; "
        f"supported: {', '.join(k.name for k in BASE_KINDS)}"
    )


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter's hyper-parameters at one layer."""

    rank: int
    alpha: float
    rslora: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        lora_scaling(self.alpha, self.rank, self.rslora)  # validates the rank
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), found {self.dropout}")

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.rank, self.rslora)


class LoraLayer(nn.Module):
    """A base layer plus named low-rank adapters (``lora_A[name]``: ``(r, in)``,
    ``lora_B[name]``: ``(out, r)``, as in PEFT)."""

    def __init__(self, base_layer: nn.Module, path: str = "") -> None:
        super().__init__()
        self.in_features, self.out_features = base_kind(base_layer, path).features(base_layer)
        self.base_layer = base_layer
        self.train(base_layer.training)  # a wrapper in an eval() model must not drop out
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.specs: dict[str, AdapterSpec] = {}
        self.active: list[tuple[str, float]] = []  # (adapter, weight) pairs in forward
        self.enabled = True
        self.merged: tuple[tuple[str, float], ...] = ()
        self._original: Any = None  # the base weight object from before merging
        self._plan: list[tuple[torch.Tensor, torch.Tensor, float, float]] = []

    @property
    def kind(self) -> BaseKind:
        """Looked up on use: the base layer may be swapped (e.g. by ``quantize_model``)."""
        return base_kind(self.base_layer)

    @property
    def fan_in_fan_out(self) -> bool:
        return self.kind.fan_in_fan_out

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(self, name: str, spec: AdapterSpec,
                    A: torch.Tensor | None = None, B: torch.Tensor | None = None) -> None:
        """Create adapter ``name``; without factors A is Kaiming-uniform, B zero (as PEFT)."""
        if name in self.specs:
            raise ConfigError(f"adapter {name!r} already exists; pick another name or delete it")
        a = torch.empty(spec.rank, self.in_features) if A is None else A.detach().float().clone()
        b = torch.zeros(self.out_features, spec.rank) if B is None else B.detach().float().clone()
        if A is None:
            nn.init.kaiming_uniform_(a, a=5**0.5)
        held = next(itertools.chain(self.base_layer.parameters(), self.base_layer.buffers()), None)
        device = held.device if held is not None else torch.device("cpu")
        self.lora_A[name] = nn.Parameter(a.to(device))
        self.lora_B[name] = nn.Parameter(b.to(device))
        self.specs[name] = spec
        self.refresh()

    def delete_adapter(self, name: str) -> None:
        if any(n == name for n, _ in self.merged):
            raise ConfigError(f"adapter {name!r} is merged; call unmerge(model) first")
        del self.lora_A[name], self.lora_B[name], self.specs[name]
        self.active = [(n, w) for n, w in self.active if n != name]
        self.refresh()

    def set_active(self, active: list[tuple[str, float]]) -> None:
        self.active = [(n, w) for n, w in active if n in self.specs]
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the forward plan (call after replacing adapter parameters)."""
        self._plan = [
            (self.lora_A[n], self.lora_B[n], self.specs[n].scaling * w, self.specs[n].dropout)
            for n, w in self.active
        ]

    def delta(self, name: str) -> torch.Tensor:
        """``s·B·A`` of one adapter in the base weight's layout, float32."""
        return scaled_delta(self.lora_A[name], self.lora_B[name], self.specs[name].scaling,
                            self.fan_in_fan_out)

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        if not self.enabled or self.merged:
            return out
        for A, B, coef, p in self._plan:
            h = x if x.dtype == A.dtype else x.to(A.dtype)
            if p and self.training:
                h = F.dropout(h, p, True)
            h = F.linear(h, A)  # (..., in) -> (..., r)
            if out.dtype == B.dtype and not out.requires_grad and out.is_contiguous():
                # out += coef·h·Bᵀ as one GEMM; safe: nothing recorded ``out`` for backward
                out.view(-1, out.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), B.T, alpha=coef)
            else:
                lora = F.linear(h, B)  # (..., r) -> (..., out)
                out = torch.add(out, lora if lora.dtype == out.dtype else lora.to(out.dtype),
                                alpha=coef)
        return out

    # -- merging ----------------------------------------------------------------------------
    def merge_target(self) -> torch.Tensor:
        """The float32 merged weight for the active combination (nothing is modified)."""
        target = self.kind.read(self.base_layer)
        fifo = self.fan_in_fan_out
        for A, B, coef, _ in self._plan:
            a, b = A.detach().float(), B.detach().float()
            # W + coef·B·A (or its transpose) in one GEMM, into a new tensor: W stays intact
            target = (torch.addmm(target, a.T, b.T, alpha=coef) if fifo
                      else torch.addmm(target, b, a, alpha=coef))
        return target

    def commit_merge(self, stored: Any) -> None:
        """Install an encoded merged weight, keeping the original object for ``unmerge``."""
        self._original = self.kind.snapshot(self.base_layer)
        self.kind.assign(self.base_layer, stored)
        self.merged = tuple(self.active)

    def unmerge(self) -> None:
        """Put back the original weight object: bit-exact, whatever the dtype or scheme."""
        if self.merged:
            self.kind.assign(self.base_layer, self._original)
            self._original = None
            self.merged = ()

    def extra_repr(self) -> str:
        adapters = ", ".join(f"{n}(r={s.rank}, alpha={s.alpha})" for n, s in self.specs.items())
        return f"kind={self.kind.name}, adapters=[{adapters}], merged={bool(self.merged)}"


# -- walking a model ---------------------------------------------------------------------------
def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Every wrapped module, by its path in ``model`` (the path of the module it replaced)."""
    return {path: m for path, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapter_names(model: nn.Module) -> list[str]:
    """Adapter names present in ``model``, in the order they were added."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.specs))
    return list(names)


def target_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules LoRA may target: not a wrapper's internals, not a wrapper's adapters."""
    inside = tuple(p + "." for p in lora_layers(model))
    return [(p, m) for p, m in model.named_modules()
            if p and not (inside and p.startswith(inside))]


def wrap_module(model: nn.Module, path: str) -> LoraLayer:
    """The ``LoraLayer`` at ``path``, wrapping the module there first if needed."""
    module = model.get_submodule(path)
    if isinstance(module, LoraLayer):
        return module
    layer = LoraLayer(module, path)
    model.set_submodule(path, layer)
    return layer


def freeze_base(model: nn.Module) -> None:
    """Only LoRA factors train: every other parameter gets ``requires_grad=False``."""
    for path, p in model.named_parameters():
        p.requires_grad_(".lora_A." in f".{path}" or ".lora_B." in f".{path}")


def set_active(model: nn.Module, names: str | Sequence[str],
               weights: Sequence[float] | None = None) -> None:
    """Make ``names`` the active adapters, each delta scaled by its weight (default 1.0).

    The combination is ``Σ wᵢ·sᵢ·Bᵢ·Aᵢ``: deltas are added, A and B are never averaged.

    Raises:
        ConfigError: an unknown name (message lists the known ones), weights of another
            length, or the model is merged (unmerge first).
    """
    names = [names] if isinstance(names, str) else list(names)
    ws = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    if len(ws) != len(names):
        raise ConfigError(f"expected {len(names)} weights for adapters {names}, found {len(ws)}")
    known = adapter_names(model)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown adapter(s) {unknown}; the model has {known}")
    require_unmerged(model, "change the active adapters")
    for layer in lora_layers(model).values():
        layer.set_active(list(zip(names, ws, strict=True)))


def active_adapters(model: nn.Module) -> list[tuple[str, float]]:
    """The active ``(adapter, weight)`` pairs over all layers, in activation order."""
    pairs: dict[str, float] = {}
    for layer in lora_layers(model).values():
        pairs.update(layer.active)
    return list(pairs.items())


def wrappable_suffixes(model: nn.Module) -> list[str]:
    """The distinct last path components of modules LoRA could wrap (for error messages)."""
    names: dict[str, None] = {}
    for path, module in target_candidates(model):
        if isinstance(module, LoraLayer) or any(k.matches(module) for k in BASE_KINDS):
            names[path.rpartition(".")[2]] = None
    return list(names)


def require_unmerged(model: nn.Module, what: str) -> None:
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ConfigError(f"cannot {what} while adapters are merged; call ml.lora.unmerge(model)")
