"""What every encoder and fusion is made of: the transformer ``Block``, the ``Encoder`` shell,
masked pooling, and the conversion of a model input to ``(tensor, mask)``.

An encoder works in three steps so that middle fusion can interleave encoders and every
part can report its attention: ``prepare(value) -> (x, mask)`` reads an input (a tensor,
a ``(tensor, mask)`` pair, or a preprocessing batch), ``describe(value, x)`` says what its
tokens will be (labels, patch grid, times: a ``TokenInfo``), ``embed(x, mask, info)`` turns
it into tokens ``(B, N, dim)`` (with the attention maps of whatever it runs inside when
``info`` is given), and ``blocks`` (a list of ``Block``) follow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from ..errors import MLMFError
from .attention import CrossModalAttention
from .config import CrossModalAttentionConfig, ModalityConfig
from .maps import AttentionMaps, TokenInfo
from .preprocess.audio import AudioBatch
from .preprocess.image import ImageBatch
from .preprocess.text import TextBatch
from .preprocess.video import VideoBatch


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (or attention to a context) + MLP."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, mlp_ratio: int = 2,
                 cross: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim) if cross else None
        self.attn = CrossModalAttention(CrossModalAttentionConfig(dim, heads, dropout))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, D) with key mask (B, N); a cross block attends to ``context`` (B, Nk, D).

        Returns (x, the attention weights (B, H, N, Nk) when ``output_attentions``)."""
        h = self.norm1(x)
        if self.norm_ctx is None:
            out, w = self.attn(h, h, mask, output_attentions)
        else:
            if context is None:
                raise ValueError("a cross block needs a context")
            out, w = self.attn(h, self.norm_ctx(context), context_mask, output_attentions)
        x = x + out
        x = x + self.mlp(self.norm2(x))
        return x, w


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, N, D) -> (B, D): mean over the tokens where ``mask`` (B, N) is True (0 if none)."""
    if mask is None:
        return tokens.mean(dim=1)
    m = mask.to(tokens.dtype)[..., None]
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def as_input(value: Any, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model input as (tensor, mask or None): a preprocessing batch gives its main tensor
    (patches for images and video) and its mask."""
    if isinstance(value, TextBatch):
        return value.input_ids, value.attention_mask
    if isinstance(value, ImageBatch):
        return value.patches, None
    if isinstance(value, AudioBatch):
        return value.mel, value.mask
    if isinstance(value, VideoBatch):
        return value.patches, value.frame_mask
    if isinstance(value, torch.Tensor):
        return value, None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor):
        return value[0], value[1]
    raise MLMFError(f"input {name!r}: expected a tensor, a (tensor, mask) pair or a "
                    f"preprocessing batch, found {type(value).__name__}")


def full_mask(b: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.bool, device=device)


def check_len(cfg: ModalityConfig, n: int) -> None:
    if n > cfg.max_tokens:
        raise MLMFError(f"{cfg.name}: {n} tokens exceed max_tokens {cfg.max_tokens}; "
                        "truncate the input or raise max_tokens in the config")


Embedded = tuple[torch.Tensor, torch.Tensor, list[AttentionMaps]]


class Encoder(nn.Module, ABC):
    """Shared shell: subclasses define ``embed`` (and ``describe``); ``blocks`` come from
    ``cfg.layers``."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def prepare(self, value: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """An input value as (tensor, mask or None)."""
        return as_input(value, self.cfg.name)

    def describe(self, value: Any, x: torch.Tensor) -> TokenInfo:
        """The tokens ``embed`` makes of ``x``: by default one per position, numbered."""
        return TokenInfo.uniform(self.cfg.name, [str(i) for i in range(x.shape[1])], x.shape[0])

    @abstractmethod
    def embed(self, x: torch.Tensor, mask: torch.Tensor | None,
              info: TokenInfo | None = None) -> Embedded:
        """(tokens (B, N, dim), mask (B, N), attention maps of what runs inside (when
        ``info`` is given))."""

    def forward(self, x: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask, _ = self.embed(x, mask)
        for block in self.blocks:
            tokens, _ = block(tokens, mask)
        return self.norm(tokens), mask
