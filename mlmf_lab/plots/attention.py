"""One attention head as a static figure: the fallback of ``ml.views.AttentionView``.

Token axes are labelled up to ``LABELLED`` tokens; a longer input is drawn as a plain
heatmap (512 labels would be unreadable). With an image and a patch grid, the head's
attention (one query's, or the mean over queries) is laid over the picture instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

LABELLED = 48


def plot_attention_head(matrix: np.ndarray, tokens: Sequence[str] = (),
                        key_tokens: Sequence[str] = (), title: str = "attention",
                        image: np.ndarray | None = None,
                        patches: np.ndarray | None = None) -> Figure:
    """A (Q, K) attention map (rows attend to columns), or ``patches`` over ``image``.

    Args:
        matrix: (Q, K) weights of one layer and head.
        tokens, key_tokens: labels of the queries and keys (keys default to ``tokens``).
        image: (H, W) or (H, W, 3) picture; with ``patches`` (gh, gw), drawn beside the map.
    """
    q, k = matrix.shape
    key_tokens = key_tokens or tokens
    with_image = image is not None and patches is not None
    side = min(0.3 * max(q, k) + 2.0, 7.0)
    fig = Figure(figsize=(side + (3.0 if with_image else 0.0), side))
    ax = fig.add_subplot(1, 2 if with_image else 1, 1)
    im = ax.imshow(matrix, cmap="viridis", vmin=0, interpolation="nearest", aspect="auto")
    if len(tokens) == q and q <= LABELLED:
        ax.set_yticks(range(q), list(tokens), fontsize=7)
    if len(key_tokens) == k and k <= LABELLED:
        ax.set_xticks(range(k), list(key_tokens), rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("keys", fontsize=8)
    ax.set_ylabel("queries", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    if with_image:
        assert image is not None and patches is not None
        ax2 = fig.add_subplot(1, 2, 2)
        h, w = image.shape[:2]
        ax2.imshow(image, cmap=None if image.ndim == 3 else "gray")
        ax2.imshow(patches, cmap="inferno", alpha=0.55, vmin=0, interpolation="nearest",
                   extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        ax2.set_xticks([])
        ax2.set_yticks([])
        ax2.set_title("over the image patches", fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["plot_attention_head"]
