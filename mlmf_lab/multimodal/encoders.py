"""Per-modality encoders: an input-specific embedding, then transformer blocks.

Every encoder has the same two steps so that middle fusion can interleave them:
``embed(x, mask) -> (tokens (B, N, dim), mask (B, N))`` and ``blocks`` (a list of
``Block``). ``forward`` runs both. Encoders register in ``ENCODER_BUILDERS`` under the
(modality, kind) pairs that ``config.ENCODERS`` lists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, MLMFError
from .attention import CrossModalAttention
from .config import (
    CrossModalAttentionConfig,
    ImagePreprocessing,
    Modality,
    ModalityConfig,
    VideoPreprocessing,
)


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
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, D) with key mask (B, N); a cross block attends to ``context`` (B, Nk, D)."""
        h = self.norm1(x)
        if self.norm_ctx is None:
            out, w = self.attn(h, h, mask, need_weights)
        else:
            if context is None:
                raise ValueError("a cross block needs a context")
            out, w = self.attn(h, self.norm_ctx(context), context_mask, need_weights)
        x = x + out
        x = x + self.mlp(self.norm2(x))
        return x, w


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, N, D) -> (B, D): mean over the tokens where ``mask`` (B, N) is True (0 if none)."""
    if mask is None:
        return tokens.mean(dim=1)
    m = mask.to(tokens.dtype)[..., None]
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class Encoder(nn.Module):
    """Shared shell: subclasses define ``embed``; ``blocks`` come from ``cfg.layers``."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def embed(self, x: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(type(self).__name__)

    def forward(self, x: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = self.embed(x, mask)
        for block in self.blocks:
            tokens, _ = block(tokens, mask)
        return self.norm(tokens), mask


def _full_mask(b: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.bool, device=device)


def _check_len(cfg: ModalityConfig, n: int) -> None:
    if n > cfg.max_tokens:
        raise MLMFError(f"{cfg.name}: {n} tokens exceed max_tokens {cfg.max_tokens}; "
                        "truncate the input or raise max_tokens in the config")


class TextEncoder(Encoder):
    """Token embedding + learned positions + transformer blocks. Input ids (B, L)."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        self.tokens = nn.Embedding(cfg.input_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.dim) * 0.02)

    def embed(self, x: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_len(self.cfg, x.shape[1])
        if x.numel() and (int(x.max()) >= self.cfg.input_dim or int(x.min()) < 0):
            raise MLMFError(f"{self.cfg.name}: token ids must be in [0, {self.cfg.input_dim}), "
                            f"found {int(x.min())}..{int(x.max())}; is this the right tokenizer?")
        mask = _full_mask(x.shape[0], x.shape[1], x.device) if mask is None else mask.bool()
        return self.tokens(x) + self.pos[: x.shape[1]], mask


class MiniLMTextEncoder(Encoder):
    """A pretrained MiniLM (``mlmf_lab.models.minilm``) + a projection + own blocks.

    The backbone's weights come from ``cfg.pretrained`` (a MiniLM folder) when the
    model is built for training, or from the saved multi-modal file when loaded.
    """

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        try:
            from ..models.minilm import MiniLM
        except ImportError:
            raise MLMFError("the MiniLM text encoder (mlmf_lab.models.minilm) is not available "
                            "in this installation; use encoder='transformer'") from None
        if cfg.pretrained is None:
            raise ConfigError(f"{cfg.name}: encoder 'minilm' needs pretrained=<MiniLM folder>, "
                              "e.g. str(ml.examples.minilm_dir())")
        if torch.get_default_device().type == "meta":  # being rebuilt to load a saved model:
            from ..models.minilm import BertConfig  # the file brings the backbone weights

            folder = Path(cfg.pretrained)
            self.backbone = MiniLM(BertConfig.from_json(folder / "config.json"))
        else:
            self.backbone = MiniLM.from_pretrained(cfg.pretrained)
        width = int(self.backbone.config.hidden_size)
        self.proj = nn.Linear(width, cfg.dim)

    def embed(self, x: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _full_mask(x.shape[0], x.shape[1], x.device) if mask is None else mask.bool()
        hidden, _ = self.backbone(x, mask.long())  # (B, L, 384)
        return self.proj(hidden), mask


class ImageEncoder(Encoder):
    """ViT-style: linear patch embedding + learned positions. Input patches (B, N, P*P*3)."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        prep = cfg.preprocessing
        assert isinstance(prep, ImagePreprocessing)
        self.num_patches = prep.num_patches
        self.patch_embed = nn.Linear(prep.patch_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(prep.num_patches, cfg.dim) * 0.02)

    def embed(self, x: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        want = (self.num_patches, self.patch_embed.in_features)
        if x.dim() != 3 or tuple(x.shape[1:]) != want:
            raise MLMFError(f"{self.cfg.name}: expected patches (B, {want[0]}, {want[1]}), "
                            f"found {tuple(x.shape)}; preprocess with the model's config")
        mask = _full_mask(x.shape[0], x.shape[1], x.device) if mask is None else mask.bool()
        return self.patch_embed(x) + self.pos, mask


class AudioEncoder(Encoder):
    """Mel front end (a 3-tap convolution over time) + positions. Input mel (B, n_mels, T)."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        self.front = nn.Sequential(nn.Conv1d(cfg.input_dim, cfg.dim, 3, padding=1), nn.GELU())
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.dim) * 0.02)

    def embed(self, x: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[1] != self.cfg.input_dim:
            raise MLMFError(f"{self.cfg.name}: expected a mel batch (B, {self.cfg.input_dim}, T), "
                            f"found {tuple(x.shape)}")
        _check_len(self.cfg, x.shape[2])
        mask = _full_mask(x.shape[0], x.shape[2], x.device) if mask is None else mask.bool()
        tokens = self.front(x * mask[:, None, :]).transpose(1, 2)  # (B, T, dim)
        return tokens + self.pos[: x.shape[2]], mask


class VideoEncoder(Encoder):
    """Frame encoder (patch embedding, one block, mean over patches) + temporal attention.

    Input patches (B, T, N, P*P*3) with a frame mask (B, T). ``frame_pool`` averages the
    frames into one token instead of keeping one token per frame.
    """

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        prep = cfg.preprocessing
        assert isinstance(prep, VideoPreprocessing)
        self.patch_embed = nn.Linear(prep.image.patch_dim, cfg.dim)
        self.patch_pos = nn.Parameter(torch.randn(prep.image.num_patches, cfg.dim) * 0.02)
        self.frame_block = Block(cfg.dim, cfg.heads, dropout)
        self.time_pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.dim) * 0.02)
        self.pool_frames = cfg.encoder == "frame_pool"

    def embed(self, x: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[3] != self.patch_embed.in_features:
            raise MLMFError(f"{self.cfg.name}: expected clips (B, T, N, "
                            f"{self.patch_embed.in_features}), found {tuple(x.shape)}")
        b, t = x.shape[:2]
        _check_len(self.cfg, t)
        mask = _full_mask(b, t, x.device) if mask is None else mask.bool()
        patches = self.patch_embed(x.flatten(0, 1)) + self.patch_pos  # (B*T, N, dim)
        patches, _ = self.frame_block(patches)
        frames = patches.mean(dim=1).unflatten(0, (b, t)) + self.time_pos[:t]  # (B, T, dim)
        if self.pool_frames:
            return masked_mean(frames, mask)[:, None, :], mask.any(dim=1, keepdim=True)
        return frames, mask


class CustomEncoder(Encoder):
    """Precomputed features (B, N, input_dim) -> linear projection + blocks."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        self.proj = nn.Linear(cfg.input_dim, cfg.dim)

    def embed(self, x: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[2] != self.cfg.input_dim:
            raise MLMFError(f"{self.cfg.name}: expected features (B, N, {self.cfg.input_dim}), "
                            f"found {tuple(x.shape)}")
        mask = _full_mask(x.shape[0], x.shape[1], x.device) if mask is None else mask.bool()
        return self.proj(x), mask


ENCODER_BUILDERS: dict[tuple[Modality, str], Callable[[ModalityConfig, float], Encoder]] = {
    (Modality.TEXT, "transformer"): TextEncoder,
    (Modality.TEXT, "minilm"): MiniLMTextEncoder,
    (Modality.IMAGE, "patch_transformer"): ImageEncoder,
    (Modality.AUDIO, "mel_transformer"): AudioEncoder,
    (Modality.VIDEO, "frame_temporal"): VideoEncoder,
    (Modality.VIDEO, "frame_pool"): VideoEncoder,
    (Modality.CUSTOM, "linear"): CustomEncoder,
}


def build_encoder(cfg: ModalityConfig, dropout: float = 0.0) -> Encoder:
    """The encoder for one modality config; ConfigError listing the known kinds otherwise."""
    builder = ENCODER_BUILDERS.get((cfg.modality, cfg.encoder))
    if builder is None:
        known = ", ".join(f"{m.value}/{k}" for m, k in ENCODER_BUILDERS)
        raise ConfigError(f"no encoder {cfg.modality.value}/{cfg.encoder}; supported: {known}")
    return builder(cfg, dropout)
