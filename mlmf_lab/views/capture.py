"""``capture_attentions``: a model's attention maps, whatever attention it runs.

transformers models running with SDPA or flash attention return ``attentions`` as ``None``
(or a tuple of ``None``) even with ``output_attentions=True``: the fused kernels never
materialise the weights (transformers #40597, #31990, #30978). This switches such a model
to eager attention for the one call and back, or says exactly why it cannot.
"""

from __future__ import annotations

from typing import Any

import torch

from ..multimodal.attention_maps import AttentionError, attention_stack


def _implementation(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def _transformers_attentions(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    before = _implementation(model)
    switch = before not in (None, "eager")
    if switch:
        setter = getattr(model, "set_attn_implementation", None)
        if setter is None:
            raise AttentionError(
                f"{type(model).__name__} runs {before!r} attention, which returns no weights, "
                "and this transformers version cannot switch it; load the model with "
                "attn_implementation='eager'")
        try:
            setter("eager")
        except Exception as e:  # transformers raises ValueError/ImportError by architecture
            raise AttentionError(
                f"{type(model).__name__} runs {before!r} attention and cannot switch to eager "
                f"({e}); load it with attn_implementation='eager'") from e
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        if switch:
            model.set_attn_implementation(before)
    attentions = getattr(out, "attentions", None)
    if attentions is None:
        attentions = getattr(out, "encoder_attentions", None)
    if attentions is None or any(a is None for a in attentions):
        raise AttentionError(
            f"{type(model).__name__} returned no attention weights even with eager attention "
            f"(implementation was {before!r}); this architecture does not expose them")
    return tuple(attentions)


def capture_attentions(model: Any, **inputs: Any) -> Any:
    """The attention maps of one forward pass, ready for ``AttentionView``.

    Args:
        model: a transformers model (any attention implementation), the lab's ``MiniLM``
            or a multi-modal ``MultiModalModel``.
        inputs: the model's inputs (``input_ids=...``, ``attention_mask=...``; for the
            multi-modal model ``inputs={"text": ..., "image": ...}``).

    Returns:
        A tuple with one ``(B, H, Q, K)`` tensor per layer; for the multi-modal model its
        ``AttentionMaps`` records by source (``"fusion.text"``, ``"image.backbone"``, ...).

    Raises:
        AttentionError: the model cannot give its weights; the message says why and how.

    Example:
        >>> enc = tokenizer("a cat", return_tensors="pt")  # doctest: +SKIP
        >>> att = capture_attentions(bert, **enc)          # doctest: +SKIP
    """
    from ..models.minilm import MiniLM
    from ..multimodal.model import MultiModalModel

    if isinstance(model, MiniLM):
        with torch.no_grad():
            _, maps = model(**inputs, output_attentions=True)
        return tuple(maps)
    if isinstance(model, MultiModalModel):
        with torch.no_grad():
            out = model(inputs.get("inputs", inputs), output_attentions=True)
        if not out.attentions:
            raise AttentionError("this MultiModalModel computes no attention: its encoders "
                                 "have no layers and its fusion is late")
        return out.attentions
    if hasattr(model, "config") and callable(model):
        maps = _transformers_attentions(model, inputs)
        attention_stack(maps)  # fail here, naming the problem, not later in the view
        return maps
    raise AttentionError(f"cannot capture attentions from a {type(model).__name__}: supported "
                         "are transformers models, MiniLM and MultiModalModel")


__all__ = ["capture_attentions"]
