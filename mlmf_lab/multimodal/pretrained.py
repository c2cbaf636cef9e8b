"""The ``"pretrained"`` encoder kind: a Hugging Face model (``hf.load_encoder``) under a
projection to the branch's width and ``layers`` blocks of its own.

Text takes token ids (a ``TextBatch`` from ``preprocessing_for(folder).text``), images the
pixels of an ``ImageBatch`` (B, 3, S, S) at the backbone's ``image_size``, audio Whisper's
log-mel (B, n_mels, 2 * max_source_positions). The backbone's own attention comes back as
``"<name>.backbone"`` with the labels of its tokens (a vision tower's ``[CLS]`` then the
patch grid, a Whisper encoder's frame times).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MLMFError
from . import hf
from .blocks import Embedded, Encoder, full_mask
from .config import Modality, ModalityConfig
from .maps import AttentionMaps, TokenInfo, patch_labels, time_labels, token_labels
from .preprocess.config import AudioPreprocessing, ImagePreprocessing
from .preprocess.image import ImageBatch


class PretrainedEncoder(Encoder):
    """A transformers encoder from ``cfg.pretrained`` (its weights loaded, memory-mapped), a
    projection to ``cfg.dim``, then ``cfg.layers`` blocks.

    Built under ``torch.device("meta")`` (to load a saved multi-modal model) only the
    skeleton is made from the folder's config.json: the saved file brings the weights.

    Raises:
        ConfigError: preprocessing that does not fit the backbone (image size, mel bands,
            frames), naming the folder.
    """

    def __init__(self, cfg: ModalityConfig, dropout: float = 0.0) -> None:
        super().__init__(cfg, dropout)
        folder = str(cfg.pretrained)
        if torch.get_default_device().type == "meta":
            self.backbone = hf.empty_encoder(folder, cfg.modality)
        else:
            self.backbone = hf.load_encoder(folder, cfg.modality)
        self.proj = nn.Linear(hf.hidden_size(self.backbone), cfg.dim)
        config: Any = self.backbone.config
        self.grid: tuple[int, int] | None = None
        self.frames = 0
        prep = cfg.preprocessing
        if cfg.modality is Modality.IMAGE:
            side = int(config.image_size) // int(config.patch_size)
            self.grid = (side, side)
            if isinstance(prep, ImagePreprocessing) and prep.size != int(config.image_size):
                raise ConfigError(f"{cfg.name}: the backbone reads {config.image_size}px images, "
                                  f"the preprocessing makes {prep.size}px; use "
                                  "preprocessing_for(folder).image", folder)
        if cfg.modality is Modality.AUDIO:
            self.frames = 2 * int(config.max_source_positions)  # two stride-1/2 convolutions
            if isinstance(prep, AudioPreprocessing) and (
                    prep.n_mels != int(config.num_mel_bins) or prep.chunk_samples is None
                    or prep.chunk_samples // prep.hop != self.frames):
                raise ConfigError(f"{cfg.name}: the backbone reads {config.num_mel_bins} mel "
                                  f"bands x {self.frames} frames; use "
                                  "preprocessing_for(folder).audio", folder)

    def prepare(self, value: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(value, ImageBatch):  # the backbone reads pixels, not patches
            return value.pixels, None
        return super().prepare(value)

    def describe(self, value: Any, x: torch.Tensor) -> TokenInfo:
        name, b = self.cfg.name, x.shape[0]
        if self.grid is not None:
            return TokenInfo.uniform(name, patch_labels(self.grid, 1), b, grid=self.grid,
                                     patch_offset=1)
        if self.frames:
            prep = self.cfg.preprocessing
            step = 2 * (prep.hop / prep.sample_rate if isinstance(prep, AudioPreprocessing)
                        else 0.01)  # Whisper's 10 ms hop
            times = (torch.arange(self.frames // 2) * step).expand(b, -1)
            return TokenInfo(name, time_labels(times), times=times)
        return TokenInfo(name, token_labels(value, x))

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None,
              info: TokenInfo | None = None) -> Embedded:
        b = x.shape[0]
        config: Any = self.backbone.config
        if self.grid is not None:
            side = self.grid[0] * int(config.patch_size)
            if x.dim() != 4 or tuple(x.shape[1:]) != (3, side, side):
                raise MLMFError(f"{self.cfg.name}: expected pixels (B, 3, {side}, {side}), "
                                f"found {tuple(x.shape)}; preprocess with "
                                "preprocessing_for(folder).image")
            inputs: dict[str, Any] = {"pixel_values": x}
        elif self.frames:
            n_mels = int(config.num_mel_bins)
            if x.dim() != 3 or tuple(x.shape[1:]) != (n_mels, self.frames):
                raise MLMFError(f"{self.cfg.name}: expected log-mel (B, {n_mels}, "
                                f"{self.frames}), found {tuple(x.shape)}; preprocess with "
                                "preprocessing_for(folder).audio")
            inputs = {"input_features": x}
        else:
            mask = full_mask(b, x.shape[1], x.device) if mask is None else mask.bool()
            inputs = {"input_ids": x, "attention_mask": mask.long()}
        want = info is not None
        with hf.eager_attention(self.backbone) if want else nullcontext():
            out = self.backbone(**inputs, output_attentions=want)
        hidden = out.last_hidden_state  # (B, N, width)
        if self.frames:  # a token per two frames: real when its first frame is
            mask = (full_mask(b, self.frames, x.device) if mask is None else mask.bool())[:, ::2]
        elif self.grid is not None or mask is None:
            mask = full_mask(b, hidden.shape[1], x.device)
        maps = []
        if info is not None:
            maps.append(AttentionMaps.build(f"{self.cfg.name}.backbone", out.attentions, info,
                                            [info]))
        return self.proj(hidden), mask, maps
