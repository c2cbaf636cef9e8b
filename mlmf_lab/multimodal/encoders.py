"""Per-modality encoders: an input-specific embedding, then transformer blocks.

Each encoder is an ``Encoder`` (``blocks.py``: ``prepare``, ``describe``, ``embed``,
``blocks``). The kinds trained from scratch live here; ``"pretrained"`` (a Hugging Face
model underneath) is ``pretrained.PretrainedEncoder``. All register in
``ENCODER_BUILDERS`` under the (modality, kind) pairs that ``config.ENCODERS`` lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MLMFError
from .blocks import Block, Embedded, Encoder, check_len, full_mask, masked_mean
from .config import PRETRAINED, Modality, ModalityConfig
from .maps import AttentionMaps, TokenInfo, patch_labels, time_labels, token_labels
from .preprocess.audio import AudioBatch
from .preprocess.config import ImagePreprocessing, VideoPreprocessing
from .preprocess.video import VideoBatch
from .pretrained import PretrainedEncoder


class TextEncoder(Encoder):
    """Token embedding + learned positions + transformer blocks. Input ids (B, L)."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        self.tokens = nn.Embedding(cfg.input_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.dim) * 0.02)

    def describe(self, value: Any, x: torch.Tensor) -> TokenInfo:
        return TokenInfo(self.cfg.name, token_labels(value, x))

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None,
              info: TokenInfo | None = None) -> Embedded:
        check_len(self.cfg, x.shape[1])
        if x.numel() and (int(x.max()) >= self.cfg.input_dim or int(x.min()) < 0):
            raise MLMFError(f"{self.cfg.name}: token ids must be in [0, {self.cfg.input_dim}), "
                            f"found {int(x.min())}..{int(x.max())}; is this the right tokenizer?")
        mask = full_mask(x.shape[0], x.shape[1], x.device) if mask is None else mask.bool()
        return self.tokens(x) + self.pos[: x.shape[1]], mask, []


class ImageEncoder(Encoder):
    """ViT-style: linear patch embedding + learned positions. Input patches (B, N, P*P*3)."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        prep = cfg.preprocessing
        assert isinstance(prep, ImagePreprocessing)
        self.grid = prep.grid
        self.num_patches = prep.num_patches
        self.patch_embed = nn.Linear(prep.patch_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(prep.num_patches, cfg.dim) * 0.02)

    def describe(self, value: Any, x: torch.Tensor) -> TokenInfo:
        return TokenInfo.uniform(self.cfg.name, patch_labels(self.grid), x.shape[0],
                                 grid=self.grid)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None,
              info: TokenInfo | None = None) -> Embedded:
        want = (self.num_patches, self.patch_embed.in_features)
        if x.dim() != 3 or tuple(x.shape[1:]) != want:
            raise MLMFError(f"{self.cfg.name}: expected patches (B, {want[0]}, {want[1]}), "
                            f"found {tuple(x.shape)}; preprocess with the model's config")
        mask = full_mask(x.shape[0], x.shape[1], x.device) if mask is None else mask.bool()
        return self.patch_embed(x) + self.pos, mask, []


class AudioEncoder(Encoder):
    """Mel front end (a 3-tap convolution over time) + positions. Input mel (B, n_mels, T)."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        self.front = nn.Sequential(nn.Conv1d(cfg.input_dim, cfg.dim, 3, padding=1), nn.GELU())
        self.pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.dim) * 0.02)

    def describe(self, value: Any, x: torch.Tensor) -> TokenInfo:
        prep = self.cfg.preprocessing
        if isinstance(value, AudioBatch) and prep is not None:
            step = prep.hop / prep.sample_rate  # type: ignore[union-attr]
            times = (torch.arange(x.shape[2]) * step).expand(x.shape[0], -1)
            return TokenInfo(self.cfg.name, time_labels(times), times=times)
        return TokenInfo.uniform(self.cfg.name, [f"frame {i}" for i in range(x.shape[2])],
                                 x.shape[0])

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None,
              info: TokenInfo | None = None) -> Embedded:
        if x.dim() != 3 or x.shape[1] != self.cfg.input_dim:
            raise MLMFError(f"{self.cfg.name}: expected a mel batch (B, {self.cfg.input_dim}, T), "
                            f"found {tuple(x.shape)}")
        check_len(self.cfg, x.shape[2])
        mask = full_mask(x.shape[0], x.shape[2], x.device) if mask is None else mask.bool()
        tokens = self.front(x * mask[:, None, :]).transpose(1, 2)  # (B, T, dim)
        return tokens + self.pos[: x.shape[2]], mask, []


class VideoEncoder(Encoder):
    """Frame encoder (patch embedding, one block, mean over patches) + temporal attention.

    Input patches (B, T, N, P*P*3) with a frame mask (B, T). ``frame_pool`` averages the
    frames into one token instead of keeping one token per frame. Its attention maps:
    ``"<name>.frames"`` (inside each frame, batch = B * T) and the temporal blocks.
    """

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        prep = cfg.preprocessing
        assert isinstance(prep, VideoPreprocessing)
        self.grid = prep.image.grid
        self.patch_embed = nn.Linear(prep.image.patch_dim, cfg.dim)
        self.patch_pos = nn.Parameter(torch.randn(prep.image.num_patches, cfg.dim) * 0.02)
        self.frame_block = Block(cfg.dim, cfg.heads, dropout)
        self.time_pos = nn.Parameter(torch.randn(cfg.max_tokens, cfg.dim) * 0.02)
        self.pool_frames = cfg.encoder == "frame_pool"

    def describe(self, value: Any, x: torch.Tensor) -> TokenInfo:
        b, t = x.shape[:2]
        if self.pool_frames:
            return TokenInfo.uniform(self.cfg.name, ["clip"], b)
        if isinstance(value, VideoBatch):
            return TokenInfo(self.cfg.name, time_labels(value.times), times=value.times.float())
        return TokenInfo.uniform(self.cfg.name, [f"frame {i}" for i in range(t)], b)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None,
              info: TokenInfo | None = None) -> Embedded:
        if x.dim() != 4 or x.shape[3] != self.patch_embed.in_features:
            raise MLMFError(f"{self.cfg.name}: expected clips (B, T, N, "
                            f"{self.patch_embed.in_features}), found {tuple(x.shape)}")
        b, t = x.shape[:2]
        check_len(self.cfg, t)
        mask = full_mask(b, t, x.device) if mask is None else mask.bool()
        patches = self.patch_embed(x.flatten(0, 1)) + self.patch_pos  # (B*T, N, dim)
        patches, w = self.frame_block(patches, output_attentions=info is not None)
        maps = []
        if w is not None:
            inside = TokenInfo.uniform(f"{self.cfg.name}.frames", patch_labels(self.grid),
                                       b * t, grid=self.grid)
            maps.append(AttentionMaps.build(inside.name, [w], inside, [inside]))
        frames = patches.mean(dim=1).unflatten(0, (b, t)) + self.time_pos[:t]  # (B, T, dim)
        if self.pool_frames:
            return masked_mean(frames, mask)[:, None, :], mask.any(dim=1, keepdim=True), maps
        return frames, mask, maps


class CustomEncoder(Encoder):
    """Precomputed features (B, N, input_dim) -> linear projection + blocks."""

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        self.proj = nn.Linear(cfg.input_dim, cfg.dim)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None,
              info: TokenInfo | None = None) -> Embedded:
        if x.dim() != 3 or x.shape[2] != self.cfg.input_dim:
            raise MLMFError(f"{self.cfg.name}: expected features (B, N, {self.cfg.input_dim}), "
                            f"found {tuple(x.shape)}")
        mask = full_mask(x.shape[0], x.shape[1], x.device) if mask is None else mask.bool()
        return self.proj(x), mask, []


ENCODER_BUILDERS: dict[tuple[Modality, str], Callable[[ModalityConfig, float], Encoder]] = {
    (Modality.TEXT, "transformer"): TextEncoder,
    (Modality.TEXT, PRETRAINED): PretrainedEncoder,
    (Modality.IMAGE, "patch_transformer"): ImageEncoder,
    (Modality.IMAGE, PRETRAINED): PretrainedEncoder,
    (Modality.AUDIO, "mel_transformer"): AudioEncoder,
    (Modality.AUDIO, PRETRAINED): PretrainedEncoder,
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
