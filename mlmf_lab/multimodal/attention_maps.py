"""Attention maps made ready to show: one stack, thumbnails, bytes, top-k keys, windows.

A view or a figure of attention needs the same few steps whatever produced the maps:

- ``attention_stack``: a transformers ``output.attentions`` tuple (``(B, H, Q, K)`` per
  layer), the lab's own MiniLM maps (the same), a multi-modal ``AttentionMaps`` record
  or a ``(L, H, Q, K)`` tensor -> one ``(L, H, Q, K)`` float32 tensor for one sample;
- ``thumbnails``: every layer and head max-pooled to a few pixels, as uint8, so a grid of
  144 heads costs a few tens of KB;
- ``quantize_map``: one ``(Q, K)`` map as uint8 bytes and the scale to read them back
  (``quantize_maps``: every head at once);
- ``top_keys``: the ``k`` keys each query attends to most (what token-to-token lines draw);
- ``token_window``: which tokens to show around a query when a text is too long to list;
- ``patch_map``: one query's attention over an image's patch grid.

Everything here is a pure function of tensors (no drawing), tested without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MLMFError
from .maps import AttentionMaps

SDPA_HINT = ("a transformers model running with SDPA or flash attention returns no attention "
             "weights; get them with ml.views.capture_attentions(model, **inputs), which runs "
             "that call with eager attention")


class AttentionError(MLMFError):
    """Attention maps that cannot be shown: missing (SDPA), wrongly shaped or mismatched."""


def _batch_item(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if not 0 <= batch < t.shape[0]:
        raise AttentionError(f"{what}: batch index {batch} out of range for a batch of "
                             f"{t.shape[0]}")
    return t[batch]


def attention_stack(attentions: Any, batch: int = 0) -> torch.Tensor:
    """One sample's attention maps as a float32 ``(layers, heads, queries, keys)`` tensor.

    Args:
        attentions: a tuple/list with one ``(B, H, Q, K)`` (or ``(H, Q, K)``) tensor per
            layer (transformers' ``output.attentions``, ``MiniLM(..., output_attentions=True)``),
            an ``AttentionMaps`` record (what every multi-modal encoder and fusion returns;
            ``AttentionMaps.view_args`` also gives the labels), a list of objects with a
            ``.weights`` tensor, or a tensor ``(L, H, Q, K)`` / ``(L, B, H, Q, K)``.
        batch: which sample of a batch.

    Returns:
        A float32 CPU tensor ``(L, H, Q, K)``.

    Raises:
        AttentionError: ``None`` maps (SDPA; the message says how to get them), no layer,
            shapes that differ between layers or have the wrong rank, non-finite values.

    Example:
        >>> attention_stack((torch.ones(1, 2, 3, 3) / 3,) * 4).shape
        torch.Size([4, 2, 3, 3])
    """
    if attentions is None:
        raise AttentionError(f"no attention maps (None): {SDPA_HINT}")
    if isinstance(attentions, AttentionMaps):
        attentions = attentions.stack(batch)  # (L, H, Q, K) of that sample
    if isinstance(attentions, torch.Tensor):
        t = attentions.detach()
        if t.dim() == 5:
            t = _batch_item(t.transpose(0, 1), batch, "attentions")
        if t.dim() != 4:
            raise AttentionError(f"an attention tensor must be (layers, heads, queries, keys) "
                                 f"or (layers, batch, heads, queries, keys), found shape "
                                 f"{tuple(t.shape)}")
        layers = list(t)
    else:
        items = list(attentions)
        if not items:
            raise AttentionError("no attention maps: the model returned an empty tuple (was "
                                 "output_attentions=True passed?)")
        layers = []
        for i, item in enumerate(items):
            if item is None:
                raise AttentionError(f"layer {i} has no attention map (None): {SDPA_HINT}")
            weights = getattr(item, "weights", item)  # a record carrying .weights
            if not isinstance(weights, torch.Tensor):
                raise AttentionError(f"layer {i}: expected a tensor or a record with .weights, "
                                     f"found {type(item).__name__}")
            w = weights.detach()
            if w.dim() == 4:
                w = _batch_item(w, batch, f"layer {i}")
            if w.dim() != 3:
                raise AttentionError(f"layer {i}: expected (batch, heads, queries, keys), "
                                     f"found shape {tuple(weights.shape)}")
            layers.append(w)
    shapes = {tuple(w.shape) for w in layers}
    if len(shapes) != 1:
        raise AttentionError(f"the layers' maps differ in shape: {sorted(shapes)}; pass the "
                             "layers of one model and one input")
    stack = torch.stack([w.float().cpu() for w in layers])
    if not torch.isfinite(stack).all():
        raise AttentionError("attention maps hold NaN or infinity (a fully masked row?)")
    return stack


def thumbnails(stack: torch.Tensor, side: int = 24) -> np.ndarray:
    """Every head max-pooled to at most ``side`` x ``side`` and scaled to uint8 per head.

    Max-pooling, not averaging: a sharp head (one strong key per query) stays visible when
    512 tokens shrink to 24 pixels.

    Returns:
        uint8 ``(L, H, min(Q, side), min(K, side))``; each head's maximum is 255.
    """
    layers, heads, q, k = stack.shape
    out = (min(q, side), min(k, side))
    flat = stack.reshape(layers * heads, 1, q, k)
    pooled = F.adaptive_max_pool2d(flat, out).reshape(layers, heads, *out)
    top = pooled.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (pooled / top * 255).round().to(torch.uint8).numpy()


def quantize_maps(maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Maps ``(..., Q, K)`` as uint8, each scaled by its own maximum, in one vectorised pass.

    ``value ≈ byte / 255 * scale``; a map's scale is its maximum (0.0 for a zero map). A view
    encodes every head at once with it, so switching heads only slices bytes.

    Returns:
        (uint8 ``(..., Q, K)``, float32 scales ``(...)``).

    Example:
        >>> data, scales = quantize_maps(torch.tensor([[[0.5, 1.0]], [[0.0, 0.0]]]))
        >>> data.tolist(), scales.tolist()
        ([[[128, 255]], [[0, 0]]], [1.0, 0.0])
    """
    if maps.shape[-1] * maps.shape[-2] == 0:
        return (np.zeros(tuple(maps.shape), np.uint8),
                np.zeros(tuple(maps.shape[:-2]), np.float32))
    scales = maps.amax(dim=(-2, -1), keepdim=True)
    # a zero map divides by 1 and stays 0, so no NaN
    q = (maps / torch.where(scales > 0, scales, 1.0) * 255).round()
    return q.to(torch.uint8).contiguous().numpy(), scales[..., 0, 0].float().numpy()


def quantize_map(matrix: torch.Tensor) -> tuple[bytes, float]:
    """One ``(Q, K)`` map as row-major uint8 bytes and the scale that reads them back.

    ``value ≈ byte / 255 * scale``; ``scale`` is the map's maximum (0.0 for a zero map).

    Example:
        >>> quantize_map(torch.tensor([[0.5, 0.25], [0.0, 1.0]]))
        (b'\\x80@\\x00\\xff', 1.0)
    """
    data, scale = quantize_maps(matrix)
    return data.tobytes(), float(scale)


def top_keys(matrix: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` keys each query attends to most, strongest first, for maps ``(..., Q, K)``.

    Returns:
        (indices uint16 ``(..., Q, k)``, weights uint8 ``(..., Q, k)`` scaled so each map's
        maximum is 255). ``k`` is capped at the number of keys.
    """
    k = max(1, min(k, matrix.shape[-1]))
    values, idx = matrix.topk(k, dim=-1)
    top = values.amax(dim=(-2, -1), keepdim=True)  # the map's maximum is its top-1 maximum
    top = torch.where(top > 0, top, 1.0)
    return (idx.to(torch.int32).numpy().astype(np.uint16),
            (values / top * 255).round().to(torch.uint8).numpy())


def token_window(n: int, center: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of at most ``size`` tokens out of ``n``, around ``center``.

    Example:
        >>> token_window(512, 3, 64), token_window(512, 500, 64), token_window(10, -1, 64)
        ((0, 64), (448, 512), (0, 10))
    """
    if n <= size:
        return 0, n
    start = min(max(center - size // 2, 0), n - size)
    return start, start + size


def patch_map(matrix: torch.Tensor, query: int, grid: Sequence[int],
              offset: int = 0) -> torch.Tensor:
    """One query's attention over an image's patches, as its ``(gh, gw)`` grid.

    Args:
        matrix: ``(Q, K)`` for one layer and head.
        query: the query token; -1 = the mean over all queries.
        grid: ``(gh, gw)`` patches, row-major along the keys.
        offset: keys before the first patch (a ViT's CLS token, a text prefix).

    Raises:
        AttentionError: the grid does not fit in the keys, or ``query`` is out of range.

    Example:
        >>> patch_map(torch.arange(10.).reshape(2, 5), 0, (2, 2), offset=1).tolist()
        [[1.0, 2.0], [3.0, 4.0]]
    """
    gh, gw = int(grid[0]), int(grid[1])
    q, k = matrix.shape
    if gh * gw + offset > k or gh <= 0 or gw <= 0 or offset < 0:
        raise AttentionError(f"a {gh}x{gw} patch grid after {offset} other keys needs "
                             f"{gh * gw + offset} keys; the maps have {k}")
    if not -1 <= query < q:
        raise AttentionError(f"query {query} out of range: {q} queries")
    row = matrix.mean(0) if query == -1 else matrix[query]
    return row[offset: offset + gh * gw].reshape(gh, gw)


__all__ = ["SDPA_HINT", "AttentionError", "attention_stack", "patch_map", "quantize_map",
           "quantize_maps", "thumbnails", "token_window", "top_keys"]
