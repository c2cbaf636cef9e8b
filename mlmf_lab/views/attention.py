"""AttentionView: every layer and head as thumbnails, the selected head large.

>>> view = ml.views.AttentionView(out.attentions, tokens=tokens)   # doctest: +SKIP
>>> view.layer, view.head = 3, 7  # redraws the page                # doctest: +SKIP

Python keeps the whole ``(L, H, Q, K)`` stack and sends the page one head at a time as
uint8 bytes (``quantize_maps``) with its top-k keys per query (``top_keys``); thumbnails
are max-pooled once (``thumbnails``). All of that is ``mlmf_lab.multimodal.attention_maps``;
this module only wires it to synced traitlets.

Every head is encoded once, up front (one vectorised pass, a quarter of the stack's bytes),
so a click on a thumbnail costs the kernel a slice: the page's head switch is bound by the
message, not by the maths (the browser test measures it at 12 x 12 heads x 512 tokens).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import traitlets as t

from ..multimodal.attention_maps import (
    AttentionError,
    attention_stack,
    patch_map,
    quantize_map,
    quantize_maps,
    thumbnails,
    token_window,
    top_keys,
)
from .base import View

STANDALONE_BYTES = 1 << 22  # save_html embeds every head's map up to this many bytes
ENCODE_AHEAD_BYTES = 1 << 27  # every head encoded up front up to this many uint8 bytes


def _png(image: Any) -> tuple[bytes, list[int]]:
    """A picture (H, W[, 3|4]) as PNG bytes and its [height, width]."""
    from matplotlib.image import imsave

    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise AttentionError(f"image: expected (height, width[, channels]), found shape "
                             f"{arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    buf = io.BytesIO()
    no_stamp: dict[str, Any] = {"Software": None}  # the same bytes on every run
    imsave(buf, arr, format="png", cmap="gray" if arr.ndim == 2 else None, metadata=no_stamp)
    return buf.getvalue(), [int(arr.shape[0]), int(arr.shape[1])]


def _square_grid(keys: int, offset: int) -> list[int]:
    side = int(round((keys - offset) ** 0.5))
    if side * side != keys - offset:
        raise AttentionError(f"cannot tell the patch grid of {keys - offset} image keys (not a "
                             "square); pass grid=(rows, cols)")
    return [side, side]


class AttentionView(View):
    """A grid of layer x head thumbnails and the selected head as heatmap and lines.

    Args:
        attentions: transformers' ``output.attentions``, the lab's MiniLM maps, a list of
            ``CrossAttentionMap`` (or their ``.span("image")``), or a ``(L, H, Q, K)`` tensor.
        tokens: labels of the queries (and of the keys, unless ``key_tokens``).
        image: a picture (H, W[, 3]) whose patches are the keys: the page lays the selected
            query's attention over it.
        key_tokens: labels of the keys for cross-modal maps (audio frames, other text).
        grid: (rows, cols) of image patches; default: the square that fits the keys.
        patch_offset: keys before the first patch (a ViT's CLS token).
        batch: which sample of a batch. top_k: lines drawn per query (at most the number
            of keys). window: tokens listed at once in the lines panel (long inputs are
            windowed around the query).

    Raises:
        AttentionError: missing (SDPA) or malformed maps, labels that do not match the maps.
    """

    view_name = "attention"

    layer = t.Int(0).tag(sync=True)
    head = t.Int(0).tag(sync=True)
    query = t.Int(-1).tag(sync=True)  # -1: no query selected (the overlay shows the mean)
    title = t.Unicode("attention").tag(sync=True)
    shape = t.List(t.Int()).tag(sync=True)  # [layers, heads, queries, keys]
    tokens = t.List(t.Unicode()).tag(sync=True)
    key_tokens = t.List(t.Unicode()).tag(sync=True)
    thumbs = t.Bytes(b"").tag(sync=True)  # uint8 (L, H, th, tw)
    thumb_shape = t.List(t.Int()).tag(sync=True)
    head_map = t.Bytes(b"").tag(sync=True)  # uint8 (Q, K) of the selected head
    head_shown = t.List(t.Int()).tag(sync=True)  # [layer, head] whose bytes head_map holds
    head_scale = t.Float(0.0).tag(sync=True)
    top_k = t.Int(3).tag(sync=True)
    top_idx = t.Bytes(b"").tag(sync=True)  # uint16 (Q, k)
    top_w = t.Bytes(b"").tag(sync=True)  # uint8 (Q, k)
    window = t.List(t.Int()).tag(sync=True)  # [start, stop) of the queries listed
    key_window = t.List(t.Int()).tag(sync=True)  # [start, stop) of the keys listed
    window_size = t.Int(64).tag(sync=True)
    grid = t.List(t.Int()).tag(sync=True)  # [rows, cols] of image patches, [] = no image
    image_png = t.Bytes(b"").tag(sync=True)
    image_size = t.List(t.Int()).tag(sync=True)
    patch = t.Bytes(b"").tag(sync=True)  # uint8 (rows, cols) for the selected query

    def __init__(self, attentions: Any, tokens: Sequence[str] | None = None, image: Any = None,
                 *, key_tokens: Sequence[str] | None = None, grid: Sequence[int] | None = None,
                 patch_offset: int = 0, batch: int = 0, layer: int = 0, head: int = 0,
                 top_k: int = 3, window: int = 64, title: str = "attention") -> None:
        stack = attention_stack(attentions, batch)
        n_layers, n_heads, n_q, n_k = stack.shape
        tokens = [str(x) for x in tokens] if tokens is not None else [str(i) for i in range(n_q)]
        keys = [str(x) for x in key_tokens] if key_tokens is not None else (
            tokens if n_q == n_k else [str(i) for i in range(n_k)])
        if len(tokens) != n_q or len(keys) != n_k:
            raise AttentionError(f"{len(tokens)} tokens and {len(keys)} key labels for maps "
                                 f"of {n_q} queries and {n_k} keys")
        self._stack = stack
        self._offset = patch_offset
        self._ready = False  # observers wait until the traits below are set
        self._shown: tuple[int, int, int] | None = None  # (layer, head, query) last sent
        # every head's bytes (uint8 (L, H, Q, K), float32 (L, H)) and top-k keys, or None:
        # a stack too big to hold a second time encodes each head when it is selected
        self._encoded = quantize_maps(stack) if stack.numel() <= ENCODE_AHEAD_BYTES else None
        self._top: tuple[np.ndarray, np.ndarray] | None = None
        thumbs = thumbnails(stack)
        image_state: dict[str, Any] = {}
        if image is not None:
            png, size = _png(image)
            cells = [int(g) for g in grid] if grid is not None else _square_grid(n_k, patch_offset)
            patch_map(stack[0, 0], -1, cells, patch_offset)  # checks the grid fits the keys
            image_state = {"image_png": png, "image_size": size, "grid": cells}
        super().__init__(shape=[n_layers, n_heads, n_q, n_k], tokens=tokens, key_tokens=keys,
                         thumbs=thumbs.tobytes(), thumb_shape=list(thumbs.shape[2:]),
                         top_k=top_k, window_size=window, title=title, **image_state)
        self._encode_top_keys()
        self._ready = True
        with self.hold_sync():
            self.layer, self.head = layer, head
            self._send_selection()

    # -- validation and redraws ------------------------------------------------------------
    @t.validate("layer", "head", "query")
    def _in_range(self, proposal: dict[str, Any]) -> int:
        name, value = proposal["trait"].name, int(proposal["value"])
        size = dict(zip(("layer", "head", "query"), self._stack.shape[:3], strict=True))[name]
        low = -1 if name == "query" else 0
        if not low <= value < size:
            plural = {"layer": "layers", "head": "heads", "query": "queries"}[name]
            raise AttentionError(f"{name} {value} out of range: the maps have {size} {plural}")
        return value

    @t.validate("top_k")
    def _top_k_in_range(self, proposal: dict[str, Any]) -> int:
        value = int(proposal["value"])
        if value < 1:
            raise AttentionError(f"top_k {value}: draw at least 1 line per query")
        return min(value, self._stack.shape[-1])  # the page reads top_idx with this stride

    @t.observe("layer", "head", "query")
    def _on_select(self, _: Any) -> None:
        if self._ready:
            self._send_selection()

    @t.observe("top_k")
    def _on_top_k(self, _: Any) -> None:
        if self._ready:
            self._encode_top_keys()
            self._shown = None
            self._send_selection()

    def matrix(self) -> torch.Tensor:
        """The selected head's (Q, K) weights (float32)."""
        return self._stack[self.layer, self.head]

    def _encode_top_keys(self) -> None:
        self._top = top_keys(self._stack, self.top_k) if self._encoded is not None else None

    def _head_bytes(self) -> tuple[bytes, float, bytes, bytes]:
        """The selected head as (map, scale, top-k indices, top-k weights): sliced from the
        heads encoded up front, or encoded now when the stack was too big for that."""
        layer, head = self.layer, self.head
        if self._encoded is None or self._top is None:
            m = self.matrix()
            data, scale = quantize_map(m)
            idx, w = top_keys(m, self.top_k)
            return data, scale, idx.tobytes(), w.tobytes()
        maps, scales = self._encoded
        idx, w = self._top
        return (maps[layer, head].tobytes(), float(scales[layer, head]),
                idx[layer, head].tobytes(), w[layer, head].tobytes())

    def _send_selection(self) -> None:
        """The selected head and query, in one message. A click sets layer and head in one
        update, which fires the observer twice: the second call finds nothing new."""
        key = (self.layer, self.head, self.query)
        if key == self._shown:
            return
        with self.hold_sync():
            if self._shown is None or key[:2] != self._shown[:2]:
                self.head_map, self.head_scale, self.top_idx, self.top_w = self._head_bytes()
                self.head_shown = [self.layer, self.head]
            self._send_query()
        self._shown = key

    def _send_query(self) -> None:
        m = self.matrix()
        n_q, n_k = m.shape
        self.window = list(token_window(n_q, self.query, self.window_size))
        # self-attention lists the same tokens on both sides; cross-attention (text over audio
        # frames, say) centres the keys on the query's strongest key
        focus = self.query if n_q == n_k else (int(m[self.query].argmax()) if self.query >= 0
                                               else 0)
        self.key_window = list(token_window(n_k, focus, self.window_size))
        if self.grid:
            grid = patch_map(m, self.query, self.grid, self._offset)
            self.patch = quantize_map(grid)[0]

    # -- outputs ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        n_layers, n_heads, n_q, n_k = self.shape
        image = f", over a {self.grid[0]}x{self.grid[1]} patch grid" if self.grid else ""
        return (f"AttentionView({n_layers} layers x {n_heads} heads, {n_q} queries x {n_k} "
                f"keys{image}; layer {self.layer}, head {self.head})")

    def _fallback_figure(self) -> Any:
        from ..plots.attention import plot_attention_head

        m = self.matrix().numpy()
        image = patches = None
        if self.grid:
            from matplotlib.image import imread

            image = imread(io.BytesIO(self.image_png), format="png")
            patches = patch_map(self.matrix(), self.query, self.grid, self._offset).numpy()
        return plot_attention_head(m, self.tokens, self.key_tokens,
                                   f"{self.title}: layer {self.layer}, head {self.head}",
                                   image, patches)

    def _standalone_extra(self) -> dict[str, Any]:
        """Every head's map (and patch maps) when small enough: the saved page switches heads."""
        n_layers, n_heads, n_q, n_k = self.shape
        if n_layers * n_heads * n_q * n_k > STANDALONE_BYTES:
            return {}
        heads = []
        for layer in range(n_layers):
            for head in range(n_heads):
                m = self._stack[layer, head]
                data, scale = quantize_map(m)
                idx, w = top_keys(m, self.top_k)
                patches = ([quantize_map(patch_map(m, q, self.grid, self._offset))[0]
                            for q in range(-1, n_q)] if self.grid else [])
                heads.append({"map": data, "scale": scale, "idx": idx.tobytes(),
                              "w": w.tobytes(), "patches": patches})
        windows = [list(token_window(n_q, q, self.window_size)) for q in range(-1, n_q)]
        return {"heads": heads, "windows": windows if n_q == n_k else []}


__all__ = ["AttentionView"]
