"""Multi-modal models: preprocessing for text, image, audio and video, cross-modal
attention, four fusion strategies (the ``FUSIONS`` registry), save/load with the config
in the file.

>>> import mlmf_lab as ml
>>> cfg = ml.multimodal.ImagePreprocessing(size=224, patch=16)
>>> cfg.grid
(14, 14)
"""

from __future__ import annotations

from .attention import CrossModalAttention, attend, attention_weights, pool_attention
from .config import (
    AudioPreprocessing,
    CrossModalAttentionConfig,
    FusionStrategy,
    ImagePreprocessing,
    Modality,
    ModalityConfig,
    MultiModalConfig,
    TextPreprocessing,
    VideoPreprocessing,
)
from .fusion import (
    FUSIONS,
    CrossAttentionMap,
    build_fusion,
    fuse_attention,
    fuse_gate,
    fuse_mean,
    fuse_weighted,
)
from .io import load_multimodal, load_parts, read_config, save_multimodal, save_parts
from .model import MultiModalModel, MultiModalOutput
from .preprocess.audio import AudioBatch, load_audio, log_mel, preprocess_audio
from .preprocess.image import ImageBatch, decode_image, patchify, preprocess_images, unpatchify
from .preprocess.text import TextBatch, build_word_tokenizer, load_tokenizer, tokenize
from .preprocess.video import VideoBatch, preprocess_video, read_frames, write_video

__all__ = [
    "AudioBatch", "AudioPreprocessing", "CrossAttentionMap", "CrossModalAttention",
    "CrossModalAttentionConfig", "FUSIONS", "FusionStrategy", "ImageBatch",
    "ImagePreprocessing", "Modality", "ModalityConfig", "MultiModalConfig", "MultiModalModel",
    "MultiModalOutput", "TextBatch", "TextPreprocessing", "VideoBatch", "VideoPreprocessing",
    "attend", "attention_weights", "build_fusion", "build_word_tokenizer", "decode_image",
    "fuse_attention", "fuse_gate", "fuse_mean", "fuse_weighted", "load_audio",
    "load_multimodal", "load_parts", "load_tokenizer", "log_mel", "patchify", "pool_attention",
    "preprocess_audio", "preprocess_images", "preprocess_video", "read_config", "read_frames",
    "save_multimodal", "save_parts", "tokenize", "unpatchify", "write_video",
]
