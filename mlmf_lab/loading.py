"""Fill a model from a weight file without holding the weights twice."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from . import events
from .errors import StateDictError
from .formats import open_weights
from .formats.base import WeightFile
from .formats.gguf_hf import ModelView, model_view
from .formats.gguf_match import check_model_config

if TYPE_CHECKING:
    from .quant import QTensor


class LoadReport(NamedTuple):
    """What ``load_into`` matched: keys the model lacks, extra keys, shape conflicts."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, model, file)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "missing": list(self.missing), "unexpected": list(self.unexpected),
                "mismatched": [{"key": k, "model": list(want), "file": list(got)}
                               for k, want, got in self.mismatched]}

    def rows(self) -> list[dict[str, Any]]:
        """One row per key that does not match: key, problem, shapes in the model and file."""
        return ([{"key": k, "problem": "missing"} for k in self.missing]
                + [{"key": k, "problem": "unexpected"} for k in self.unexpected]
                + [{"key": k, "problem": "mismatched", "model": want, "file": got}
                   for k, want, got in self.mismatched])

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(
                f"missing from the file: {', '.join(self.missing[:10])}"
                + (f" (+{len(self.missing) - 10} more)" if len(self.missing) > 10 else "")
            )
        if self.unexpected:
            parts.append(
                f"not in the model: {', '.join(self.unexpected[:10])}"
                + (f" (+{len(self.unexpected) - 10} more)" if len(self.unexpected) > 10 else "")
            )
        for key, want, got in self.mismatched[:10]:
            parts.append(f"{key}: model expects {list(want)}, file has {list(got)}")
        return "; ".join(parts) or "all keys match"


def compare_keys(model: nn.Module, state: dict[str, Any]) -> LoadReport:
    """The key-by-key comparison between a model and a state dict."""
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(expected[k].shape), tuple(state[k].shape))
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    return LoadReport(missing, unexpected, mismatched)


def with_tied(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` plus the names the model ties to a name the state has.

    transformers saves a model with ``tie_word_embeddings`` without ``lm_head.weight``
    (it is ``embed_tokens.weight``); the model still lists both names. A name is tied when
    the model holds the very same parameter under another name.
    """
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    out = dict(state)
    for names in groups.values():
        present = next((n for n in names if n in state), None)
        for name in names:
            if present is not None and name not in out:
                out[name] = state[present]
    return out


def in_dtype(value: Any, dtype: torch.dtype | None) -> Any:
    """A floating-point tensor in the dtype of the model's parameter it fills.

    Files mix dtypes (an f16 GGUF keeps its norms in F32); assigning them as they are would
    leave a model whose forward pass fails on mixed dtypes, so the model's dtype decides, as
    in ``nn.Module.load_state_dict`` without ``assign``. Anything else is left alone.
    """
    if isinstance(value, torch.Tensor) and value.is_floating_point() and dtype is not None \
            and dtype.is_floating_point and value.dtype != dtype:
        return value.to(dtype)
    return value


def load_into(
    model: nn.Module,
    path: str | os.PathLike[str],
    strict: bool = True,
    keep_quantized: bool = False,
) -> LoadReport:
    """Fill ``model`` (built on the meta device or not) from a weight file, copy-free.

    The file's tensors are memory-mapped and assigned as the model's parameters
    (``load_state_dict(assign=True)``), so the weights are never held twice; a tensor whose
    dtype differs from the model's is cast (a copy), and names the model ties to another
    (``lm_head.weight`` of a model saved with ``tie_word_embeddings``) need not be in the
    file. A GGUF file in llama.cpp's layout is read under the model's own names, with
    llama's Q/K rows put back in Hugging Face's order (``formats.gguf_hf.model_view``), and
    the model's config must compute what the file describes: the settings no tensor shape
    shows (rotary scaling, ``rope_theta``, the norms' epsilon) are compared with the config
    the file carries (``formats.gguf_match``) before anything is loaded.

    Args:
        model: any ``nn.Module``; build it under ``torch.device("meta")`` to skip init.
        path: any file ``ml.open_weights`` reads.
        strict: raise on missing, unexpected or shape-mismatched keys.
        keep_quantized: keep the file's quantized linear weights (GGUF blocks, int8/int4
            in safetensors) quantized: each matching ``nn.Linear`` becomes an
            ``ml.quant.QuantLinear`` holding the ``QTensor`` instead of a float copy.

    Returns:
        The ``LoadReport``; with ``strict=False`` the matching keys are loaded anyway.

    Raises:
        StateDictError: naming the file and the keys, when ``strict`` and they differ.
        ConfigError: a llama.cpp GGUF file whose rotary scaling, ``rope_theta`` or norm
            epsilon differ from the model's config (named, with both values), whatever
            ``strict``: build the model from the config ``ml.convert(gguf, folder)`` writes.

    Example:
        >>> with torch.device("meta"):  # doctest: +SKIP
        ...     model = MyModel()
        >>> ml.load_into(model, "model.safetensors")  # doctest: +SKIP
    """
    with events.activity("load", used=[path], params={"into": type(model).__name__}) as act:
        wf = model_view(open_weights(path), model.state_dict())
        if isinstance(wf, ModelView):
            check_model_config(model, wf)
        state: dict[str, Any] = quantized_state(model, wf) if keep_quantized \
            else wf.state_dict()
        state = with_tied(model, state)
        report = compare_keys(model, state)
        if strict and not report.ok:
            raise StateDictError(f"the model and the file disagree: {report.describe()}", path)
        bad = {k for k, _, _ in report.mismatched}
        expected = model.state_dict(keep_vars=True)
        usable = {k: in_dtype(v, getattr(expected[k], "dtype", None)) for k, v in state.items()
                  if k not in bad and k not in report.unexpected}
        model.load_state_dict(usable, strict=False, assign=True)
        tie = getattr(model, "tie_weights", None)
        if callable(tie):
            tie()
        rebuild_buffers(model, path)
        act.generated.append(model)
    return report


def rebuild_buffers(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Give values to the buffers a meta-built model computes at construction and no file
    holds (non-persistent ones: transformers' rotary ``inv_freq``, ``position_ids``), as
    ``from_pretrained`` does: every transformers model inside ``model`` runs its own
    ``initialize_weights`` with the loaded tensors marked as initialised, so only the empty
    buffers are filled.

    Raises:
        StateDictError: non-persistent buffers still without data (named), e.g. in a model
            that is not a transformers model.
    """
    meta = {n: t for n, t in model.named_buffers() if t.is_meta
            and n.rpartition(".")[2] in model.get_submodule(
                n.rpartition(".")[0])._non_persistent_buffers_set}
    if not meta:
        return
    try:
        from transformers import PreTrainedModel
    except ImportError:  # not a transformers model then: nothing knows these values
        PreTrainedModel = ()  # type: ignore[assignment,misc]  # noqa: N806
    hf = [(n, m) for n, m in model.named_modules() if isinstance(m, PreTrainedModel)]
    # the outermost ones: initialize_weights covers everything below them
    tops = [m for n, m in hf if not any(o != n and (o == "" or n.startswith(o + "."))
                                        for o, _ in hf)]
    left = list(meta)
    if tops:
        for t in model.state_dict(keep_vars=True).values():
            if not t.is_meta:
                t._is_hf_initialized = True  # type: ignore[attr-defined]  # loaded: keep
        for name, buf in meta.items():
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner).register_buffer(
                leaf, torch.empty_like(buf, device="cpu"), persistent=False)
        with torch.no_grad():
            for top in tops:
                top.initialize_weights()
        left = [n for n, t in model.named_buffers() if n in meta and t.is_meta]
    if left:
        raise StateDictError(
            f"buffers {left[:5]} are on the meta device and in no file; build the model with "
            "only its parameters on the meta device (e.g. accelerate's init_empty_weights()) "
            "so that buffers computed at construction keep their values", path)


def quantized_state(model: nn.Module, wf: WeightFile) -> dict[str, torch.Tensor | QTensor]:
    """The state of a weight file with its quantized linear weights left quantized.

    Every quantized tensor ``<layer>.weight`` whose ``<layer>`` is an ``nn.Linear`` of the
    same shape is swapped (in ``model``, in place) for a ``QuantLinear`` holding the file's
    ``QTensor``; the state maps that name to the ``QTensor``. Every other tensor is read as
    ``WeightFile.tensor`` does. ``load_into(..., keep_quantized=True)`` loads the rest.

    Args:
        model: the model to fill (on the meta device or not).
        wf: the open weight file, under the model's names (``formats.gguf_hf.model_view``);
            GGUF files, and safetensors files saved with int8/int4, hold quantized tensors.

    Returns:
        Name -> tensor, or ``QTensor`` for the weights kept quantized.
    """
    from .quant import QTensor  # quant is imported only when asked

    state: dict[str, torch.Tensor | QTensor] = {}
    for name in wf:
        raw = wf.raw(name) if wf.info(name).quant else None
        if isinstance(raw, QTensor) and _swap_in_quantized(model, name, raw):
            state[name] = raw
        else:
            state[name] = wf.tensor(name)
    for alias, target in wf.aliases.items():
        if target in state and alias not in state:
            kept = state[target]  # a float tensor is shared as it is
            if isinstance(kept, QTensor) and not _swap_in_quantized(model, alias, kept):
                kept = wf.tensor(target)  # tied to a non-linear (an embedding): floats
            state[alias] = kept
    return state


def _swap_in_quantized(model: nn.Module, name: str, qt: QTensor) -> bool:
    """Replace the ``nn.Linear`` owning weight ``name`` by a ``QuantLinear`` holding ``qt``,
    if there is one of ``qt``'s shape; whether it did."""
    from .quant import QuantLinear

    prefix, _, leaf = name.rpartition(".")
    layer = _linear_at(model, prefix) if leaf == "weight" else None
    if layer is None or tuple(qt.shape) != tuple(layer.weight.shape):
        return False
    model.set_submodule(prefix, QuantLinear(qt, layer.bias))
    return True


def _linear_at(model: nn.Module, name: str) -> nn.Linear | None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return module if type(module) is nn.Linear else None
