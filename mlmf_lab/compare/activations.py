"""The activations level: the two models' hidden states on the same inputs, layer by layer.

``run(model, batch)`` records each block's output (forward hooks on the model's stack of
blocks: ``encoder.layer``, ``model.layers``, ``transformer.h`` ...) and the model's final
output. ``linear_cka(x, y)`` is Kornblith et al. (2019)'s linear CKA of two (N, d)
representations of the same N tokens, HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) with linear
kernels, computed in whichever of the feature (d×d) or token (N×N) forms is smaller. For
causal LMs, the logit lens reads each block's output through the model's own final norm
and head (``lens_parts``), so the last layer's lens is the model's real output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import MLMFError
from ..tables import Column, Table, fields_dict

# where transformers keeps the final norm of a causal LM, before the head
FINAL_NORMS = ("model.norm", "transformer.ln_f", "model.final_layernorm",
               "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations (N, p) and (N, q) of the same N examples.

    Returns:
        A number in [0, 1]; 1 for representations equal up to rotation and scale.

    Example:
        >>> x = torch.randn(50, 8)
        >>> round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8)).Q), 6)
        1.0
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    if x.shape[0] < max(x.shape[1], y.shape[1]):  # the N×N Gram form is smaller
        k, lg = x @ x.T, y @ y.T
        num, den = float((k * lg).sum()), float(torch.linalg.norm(k) * torch.linalg.norm(lg))
    else:
        num = float(torch.linalg.norm(y.T @ x) ** 2)
        den = float(torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y))
    return num / den if den else math.nan


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of blocks: the ``nn.ModuleList`` of one repeated module type with
    the most parameters.

    Raises:
        MLMFError: the model has no such list.
    """
    best, size = None, -1
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and \
                len({type(m) for m in module}) == 1:
            n = sum(p.numel() for p in module.parameters())
            if n > size:
                best, size = module, n
    if best is None:
        raise MLMFError(f"{type(model).__name__} has no list of blocks (nn.ModuleList) whose "
                        "hidden states could be compared")
    return best


def batch_for(model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` for ``model`` from texts, ids or a dict.

    Raises:
        MLMFError: texts for a model without ``tokenize``, or inputs of another kind.
    """
    if isinstance(inputs, Sequence) and not isinstance(inputs, str) and inputs and \
            all(isinstance(t, str) for t in inputs):
        tokenize = getattr(model, "tokenize", None)
        if not callable(tokenize):
            raise MLMFError(f"{type(model).__name__} has no tokenize(texts); pass token ids "
                            "(a (batch, tokens) tensor or a dict with input_ids)")
        batch = dict(tokenize(list(inputs)))
    elif isinstance(inputs, torch.Tensor):
        batch = {"input_ids": inputs if inputs.ndim == 2 else inputs[None]}
    elif isinstance(inputs, Mapping) and "input_ids" in inputs:
        batch = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    else:
        raise MLMFError(f"inputs must be a list of texts, a (batch, tokens) tensor of ids or a "
                        f"dict with input_ids; got {type(inputs).__name__}")
    ids = torch.as_tensor(batch["input_ids"])
    if ids.ndim != 2 or ids.is_floating_point():
        raise MLMFError(f"input_ids must be a (batch, tokens) tensor of integers; got "
                        f"{tuple(ids.shape)} {ids.dtype}")
    mask = batch.get("attention_mask")
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None
            else torch.as_tensor(mask)}


@torch.no_grad()
def run(model: nn.Module, batch: dict[str, torch.Tensor], label: str) -> tuple[list[torch.Tensor],
                                                                               Any]:
    """Each block's output (B, T, d) and the model's output on ``batch``.

    Raises:
        MLMFError: the model cannot take these inputs (its error, with the shapes).
    """
    states: list[torch.Tensor] = []

    def keep(_: nn.Module, __: Any, out: Any) -> None:
        states.append((out[0] if isinstance(out, (tuple, list)) else out).detach())

    hooks = [b.register_forward_hook(keep) for b in blocks(model)]
    try:
        out = model(**batch)
    except (RuntimeError, IndexError, TypeError, ValueError) as e:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items())
        raise MLMFError(f"{label} ({type(model).__name__}) cannot take these inputs "
                        f"({shapes}): {e}") from None
    finally:
        for h in hooks:
            h.remove()
    return states, out


def lens_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(final norm, head) of a causal LM, for the logit lens; None for other models."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module):
        return None
    for name in FINAL_NORMS:
        try:
            return model.get_submodule(name), head
        except AttributeError:
            continue
    return None


@dataclass(frozen=True)
class ActivationStats:
    """Per layer: CKA and hidden-state cosine of a's and b's block outputs (logit lens too)."""

    tokens: int
    layers: tuple[str, ...]
    cka: tuple[float, ...]  # CKA(a layer i, b layer i)
    cka_matrix: tuple[tuple[float, ...], ...]  # CKA(a layer i, b layer j)
    cosine_mean: tuple[float, ...]  # per-token cos(h_a, h_b), mean over tokens
    cosine_min: tuple[float, ...]
    lens_kl: tuple[float, ...] = ()  # mean KL(a ‖ b) of the lens distributions, causal LMs
    lens_same_top: tuple[float, ...] = ()  # share of tokens whose lens arg-max agrees

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for i, layer in enumerate(self.layers):
            row: dict[str, Any] = {"layer": layer, "cka": self.cka[i],
                                   "cosine_mean": self.cosine_mean[i],
                                   "cosine_min": self.cosine_min[i]}
            if self.lens_kl:
                row |= {"lens_kl": self.lens_kl[i], "lens_same_top": self.lens_same_top[i]}
            out.append(row)
        return out

    def table(self) -> Table:
        cols = [Column("layer"), Column("cka", "CKA", ".4f"),
                Column("cosine_mean", "mean cos(h_a, h_b)", ".4f"),
                Column("cosine_min", "min cos", ".4f")]
        if self.lens_kl:
            cols += [Column("lens_kl", "logit lens KL", ".4g"),
                     Column("lens_same_top", "lens same top", ".1%")]
        return Table(cols, self.rows(), title=f"activations: {self.tokens} tokens, per layer")

    def _repr_html_(self) -> str:
        return self.table().html()


def _tokens(states: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    keep = mask.bool()
    return [s[keep].double() for s in states]  # (N, d) per layer


def activation_stats(states_a: list[torch.Tensor], states_b: list[torch.Tensor],
                     mask: torch.Tensor, lens_a: Any = None, lens_b: Any = None) -> ActivationStats:
    """CKA (all pairs of layers), per-token cosine and logit lens of two models' block outputs.

    Args:
        states_a, states_b: each block's output (B, T, d) on the same batch.
        mask: (B, T) attention mask; only real tokens count.
        lens_a, lens_b: ``lens_parts`` of causal LMs (both, or neither).
    """
    xa, xb = _tokens(states_a, mask), _tokens(states_b, mask)
    matrix = tuple(tuple(linear_cka(x, y) for y in xb) for x in xa)
    n = min(len(xa), len(xb))
    cos_mean, cos_min, kl, top = [], [], [], []
    for i in range(n):
        if xa[i].shape == xb[i].shape:
            c = torch.nn.functional.cosine_similarity(xa[i], xb[i], dim=-1)
            cos_mean.append(float(c.mean()))
            cos_min.append(float(c.min()))
        else:
            cos_mean.append(math.nan)
            cos_min.append(math.nan)
    if lens_a is not None and lens_b is not None:
        with torch.no_grad():
            for i in range(n):
                la = _lens(lens_a, states_a[i])[mask.bool()]
                lb = _lens(lens_b, states_b[i])[mask.bool()]
                pa, pb = torch.log_softmax(la.double(), -1), torch.log_softmax(lb.double(), -1)
                kl.append(float((pa.exp() * (pa - pb)).sum(-1).mean()))
                top.append(float((la.argmax(-1) == lb.argmax(-1)).double().mean()))
    return ActivationStats(int(mask.sum()), tuple(f"layer {i}" for i in range(n)),
                           tuple(matrix[i][i] for i in range(n)), matrix, tuple(cos_mean),
                           tuple(cos_min), tuple(kl), tuple(top))


def _lens(parts: tuple[nn.Module, nn.Module], h: torch.Tensor) -> torch.Tensor:
    norm, head = parts
    return head(norm(h))


__all__ = ["ActivationStats", "activation_stats", "batch_for", "blocks", "lens_parts",
           "linear_cka", "run"]
