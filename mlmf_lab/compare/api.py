"""``ml.compare(a, b, inputs=None)``: two models side by side on weights, activations, outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MLMFError
from ..files import read_json
from ..progress import Progress
from .activations import activation_stats, batch_for, lens_parts, run
from .outputs import embedding_stats, token_stats
from .record import Comparison
from .sources import match, open_side
from .tensors import compare_weights


def compare(a: Any, b: Any, inputs: Any = None, *, labels: tuple[str, str] | None = None,
            k: int = 16, progress: Progress = False) -> Comparison:
    """Compare model ``b`` with the reference ``a``.

    Args:
        a: the reference: a path (safetensors file, Hugging Face folder, GGUF of any type,
            int8/int4 safetensors, DCP folder), a checkpoint step (its ``step-*`` folder or
            a ``CheckpointRecord``; its weight files are checked against its manifest), an
            open ``WeightFile``, a state dict or an ``nn.Module``.
        b: the other model, any of the same. A Hugging Face model and its llama.cpp GGUF
            match tensor by tensor through ``gguf``'s name tables.
        inputs: None (weights only), or texts (models with ``tokenize``, like the lab's
            MiniLM), a (batch, tokens) tensor of ids, or a dict with ``input_ids`` and
            ``attention_mask``: then activations (CKA, cosine, logit lens) and outputs
            (llama.cpp's KL statistics for causal LMs, embedding agreement for encoders).
            Paths are loaded as transformers models (a folder with ``config.json``, or a
            llama.cpp GGUF).
        labels: names of the two sides in tables (default: paths or class names).
        k: leading singular values kept per 2-D ΔW.
        progress: True, False or a callable ``(done, total)`` over tensors.

    Returns:
        A ``Comparison`` (``as_dict``, ``rows``, a table in a notebook,
        ``ml.views.CompareView``, ``ml.plots.plot_comparison``).

    Raises:
        MLMFError: different architectures (``sources.check_architectures``), no tensor in
            common, inputs a model cannot take, or outputs that cannot be compared
            (different vocabularies).
        ChecksumError: a checkpoint step's weight file differs from its manifest (named).

    Example:
        >>> c = ml.compare("model.safetensors", "model-q4_0.gguf")   # doctest: +SKIP
        >>> c.weights["encoder.layer.0.attention.self.query.weight"].rel_change  # doctest: +SKIP
    """
    la, lb = labels if labels is not None else (None, None)
    sa, sb = open_side(a, la), open_side(b, lb)
    try:
        match(sa, sb)
        weights = compare_weights(sa, sb, k=k, progress=progress)
    finally:
        sa.close()
        sb.close()
    if inputs is None:
        return Comparison(sa.label, sb.label, weights)
    ma, mb = as_model(a, sa.label), as_model(b, sb.label)
    batch_a, batch_b = batch_for(ma, inputs), batch_for(mb, inputs)
    if not torch.equal(batch_a["input_ids"], batch_b["input_ids"]):
        raise MLMFError(f"the two models tokenize the inputs differently ({sa.label}: "
                        f"{tuple(batch_a['input_ids'].shape)}, {sb.label}: "
                        f"{tuple(batch_b['input_ids'].shape)}); pass token ids")
    states_a, out_a = run(ma, batch_a, sa.label)
    states_b, out_b = run(mb, batch_b, sb.label)
    mask = batch_a["attention_mask"]
    acts = activation_stats(states_a, states_b, mask, lens_parts(ma), lens_parts(mb))
    logits_a: Any = getattr(out_a, "logits", None)
    logits_b: Any = getattr(out_b, "logits", None)
    if (logits_a is None) != (logits_b is None):
        raise MLMFError(f"one model is a language model and the other is not: {sa.label} "
                        f"({type(ma).__name__}) vs {sb.label} ({type(mb).__name__})")
    if logits_a is not None:
        ids = batch_a["input_ids"]
        scored = (mask[:, :-1] * mask[:, 1:]).bool()  # position t predicts token t + 1
        outputs: Any = token_stats(logits_a[:, :-1][scored], logits_b[:, :-1][scored],
                                   ids[:, 1:][scored])
    else:
        outputs = embedding_stats(_embeddings(out_a, mask, sa.label),
                                  _embeddings(out_b, mask, sb.label))
    return Comparison(sa.label, sb.label, weights, acts, outputs)


def _embeddings(out: Any, mask: torch.Tensor, label: str) -> torch.Tensor:
    """Sentence embeddings: the mask-weighted mean of the last hidden state (sentence-
    transformers' mean pooling), L2-normalized."""
    states = getattr(out, "last_hidden_state", None)
    if states is None and isinstance(out, (tuple, list)) and out:
        states = out[0]
    if states is None and isinstance(out, torch.Tensor):
        states = out
    if not isinstance(states, torch.Tensor) or states.ndim != 3:
        raise MLMFError(f"{label}: the model's output has no (batch, tokens, hidden) states "
                        "to pool into embeddings")
    m = mask[..., None].to(states.dtype)
    pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def as_model(x: Any, label: str) -> nn.Module:
    """``x`` as a model in eval mode: a module as it is, a path loaded with transformers.

    Raises:
        MLMFError: a state dict (no forward pass), or a path that holds no model.
    """
    if isinstance(x, nn.Module):
        return x.eval()
    if isinstance(x, (str, os.PathLike)):
        return load_model(x)
    raise MLMFError(f"{label}: activations and outputs need a model (an nn.Module or a model "
                    f"folder / GGUF path); got a {type(x).__name__}")


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """A transformers model from a folder with ``config.json`` (``from_pretrained``, local
    files only) or a llama.cpp GGUF file (its class built, then filled by ``ml.load_into``;
    not on the meta device, whose non-persistent buffers such as rotary frequencies would
    stay empty).

    Raises:
        MLMFError: neither, or a class transformers does not have.
    """
    import transformers

    from ..formats.gguf_hf import config_from_gguf, llama_arch
    from ..formats.registry import open_weights
    from ..loading import load_into

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if (folder / "config.json").is_file() and (p.is_dir() or p.suffix == ".safetensors"):
        config = read_json(folder / "config.json", "the model config", expect=dict)
        cls = getattr(transformers, str((config.get("architectures") or ["AutoModel"])[0]),
                      transformers.AutoModel)
        return cls.from_pretrained(folder, local_files_only=True).eval()
    else:
        with open_weights(p) as wf:
            if llama_arch(wf) is None:
                raise MLMFError("activations and outputs need a model: a folder with "
                                "config.json, a llama.cpp GGUF file, or an nn.Module", p)
            config = config_from_gguf(wf)
    name = (config.get("architectures") or ["AutoModel"])[0]
    cls = getattr(transformers, str(name), None)
    if cls is None or "model_type" not in config:
        raise MLMFError(f"transformers has no model class {name!r} (or config.json has no "
                        "model_type)", p)
    settings = {k: v for k, v in config.items() if k != "model_type"}
    cfg = transformers.AutoConfig.for_model(config["model_type"], **settings)
    model = cls(cfg)
    load_into(model, p, strict=False)
    return model.eval()


__all__ = ["as_model", "compare", "load_model"]
