"""Cross-modal attention: one modality's tokens (queries) read another's (keys, values).

``attend`` is the maths on ``F.scaled_dot_product_attention``; ``attention_weights`` is
the same softmax written out, used only when the per-head weights are wanted for a view;
``pool_attention`` turns those weights into one distribution over the keys per sample.
``CrossModalAttention`` is a thin module holding the projections.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CrossModalAttentionConfig


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, D) -> (B, H, N, D/H)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, Dh) -> (B, N, H*Dh)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def _bias(key_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, Nk) bool, True = attend -> additive (B, 1, 1, Nk) bias.

    A query whose keys are all masked would give NaN; those rows attend uniformly and
    their output is zeroed afterwards by ``attend``.
    """
    if key_mask is None:
        return None
    km = key_mask.clone()
    km[~km.any(dim=-1)] = True
    bias = torch.zeros(km.shape, dtype=dtype, device=km.device)
    bias.masked_fill_(~km, float("-inf"))
    return bias[:, None, None, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           key_mask: torch.Tensor | None = None, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q kᵀ / √d) v per head, through ``F.scaled_dot_product_attention``.

    Args:
        q: (B, H, Nq, Dh); k, v: (B, H, Nk, Dh).
        key_mask: (B, Nk) bool, True on keys that may be attended. A sample with no
            valid key gets a zero output.
        dropout: attention dropout probability (training only).

    Returns:
        (B, H, Nq, Dh).
    """
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_bias(key_mask, q.dtype),
                                         dropout_p=dropout)
    if key_mask is not None:
        out = out * key_mask.any(dim=-1).to(out.dtype)[:, None, None, None]
    return out


def attention_weights(q: torch.Tensor, k: torch.Tensor,
                      key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention probabilities (B, H, Nq, Nk) that ``attend`` applies, written out."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    bias = _bias(key_mask, q.dtype)
    if bias is not None:
        scores = scores + bias
    w = scores.softmax(dim=-1)
    if key_mask is not None:
        w = w * key_mask.any(dim=-1).to(w.dtype)[:, None, None, None]
    return w


def pool_attention(weights: torch.Tensor,
                   query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """How much of the queries' attention each key gets: one distribution per sample.

    The mean over heads, then over the real query tokens (padding left out), renormalised
    to sum to 1 over the keys: what a view draws over an image's patches.

    Args:
        weights: (B, H, Nq, Nk) attention probabilities, e.g. one layer of
            ``AttentionMaps.span("image").weights``.
        query_mask: (B, Nq) bool, True on real query tokens; None = every token.

    Returns:
        (B, Nk); a sample with no real query token, or no weight on any key (every key
        masked), gets zeros.

    Example:
        >>> w = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # B=1, H=1, Nq=2, Nk=2
        >>> pool_attention(w).tolist(), pool_attention(w, torch.tensor([[True, False]])).tolist()
        ([[0.75, 0.25]], [[0.5, 0.5]])
    """
    w = weights.mean(dim=1)  # (B, Nq, Nk)
    if query_mask is None:
        query_mask = torch.ones(w.shape[:2], dtype=torch.bool, device=w.device)
    qm = query_mask.to(w.dtype)
    w = (w * qm[..., None]).sum(1) / qm.sum(1, keepdim=True).clamp_min(1.0)  # (B, Nk)
    return w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)


class CrossModalAttention(nn.Module):
    """Multi-head attention from ``x`` (queries) to ``context`` (keys and values).

    Example:
        >>> att = CrossModalAttention(CrossModalAttentionConfig(dim=32, heads=4))
        >>> out, w = att(torch.randn(2, 5, 32), torch.randn(2, 7, 32), output_attentions=True)
        >>> tuple(out.shape), tuple(w.shape)
        ((2, 5, 32), (2, 4, 5, 7))
    """

    def __init__(self, cfg: CrossModalAttentionConfig, context_dim: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        kv_dim = context_dim or cfg.dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(kv_dim, cfg.dim)
        self.v = nn.Linear(kv_dim, cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` (B, Nq, D) to ``context`` (B, Nk, Dc).

        Args:
            context_mask: (B, Nk) bool, True on context tokens that exist.
            output_attentions: also return the per-head weights (B, H, Nq, Nk).

        Returns:
            (output (B, Nq, D), weights or None).
        """
        h = self.cfg.heads
        q = split_heads(self.q(x), h)  # (B, H, Nq, Dh)
        k = split_heads(self.k(context), h)  # (B, H, Nk, Dh)
        v = split_heads(self.v(context), h)
        p = self.cfg.dropout if self.training else 0.0
        out = self.out(merge_heads(attend(q, k, v, context_mask, p)))
        weights = attention_weights(q, k, context_mask).detach() if output_attentions else None
        return out, weights
