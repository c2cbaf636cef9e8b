"""Multi-modal models: preprocessing for text, image, audio and video (or the one a Hugging
Face folder's processors do: ``preprocessing_for``), encoders trained from scratch or loaded
from Hugging Face folders (``load_encoder``: BERT and relatives, CLIP, ViT, Whisper), four
fusion strategies (the ``FUSIONS`` registry), one attention-map record from every part
(``AttentionMaps``), a CLIP-style ``DualEncoder``, save/load with the config in the file.

>>> import mlmf_lab as ml
>>> cfg = ml.multimodal.ImagePreprocessing(size=224, patch=16)
>>> cfg.grid
(14, 14)
"""

from __future__ import annotations

from .attention import CrossModalAttention, attend, attention_weights, pool_attention
from .config import (
    CrossModalAttentionConfig,
    FusionStrategy,
    Modality,
    ModalityConfig,
    MultiModalConfig,
)
from .dual import DualEncoder, DualOutput, contrastive_logits, load_dual_encoder
from .fusion import FUSIONS, build_fusion, fuse_attention, fuse_gate, fuse_mean, fuse_weighted
from .hf import HF_ENCODERS, load_encoder
from .io import load_multimodal, load_parts, read_config, save_multimodal, save_parts
from .maps import AttentionMaps, KeySpan, TokenInfo
from .model import MultiModalModel, MultiModalOutput
from .preprocess.audio import AudioBatch, load_audio, log_mel, preprocess_audio
from .preprocess.config import (
    AudioPreprocessing,
    ImagePreprocessing,
    TextPreprocessing,
    VideoPreprocessing,
)
from .preprocess.image import ImageBatch, decode_image, patchify, preprocess_images, unpatchify
from .preprocess.text import TextBatch, build_word_tokenizer, load_tokenizer, tokenize
from .preprocess.video import VideoBatch, preprocess_video, read_frames, write_video
from .processors import FolderPreprocessing, preprocessing_for

__all__ = [
    "FUSIONS", "HF_ENCODERS", "AttentionMaps", "AudioBatch", "AudioPreprocessing",
    "CrossModalAttention", "CrossModalAttentionConfig", "DualEncoder", "DualOutput",
    "FolderPreprocessing", "FusionStrategy", "ImageBatch", "ImagePreprocessing", "KeySpan",
    "Modality", "ModalityConfig", "MultiModalConfig", "MultiModalModel", "MultiModalOutput",
    "TextBatch", "TextPreprocessing", "TokenInfo", "VideoBatch", "VideoPreprocessing", "attend",
    "attention_weights", "build_fusion", "build_word_tokenizer", "contrastive_logits",
    "decode_image", "fuse_attention", "fuse_gate", "fuse_mean", "fuse_weighted", "load_audio",
    "load_dual_encoder", "load_encoder", "load_multimodal", "load_parts", "load_tokenizer",
    "log_mel", "patchify", "pool_attention", "preprocess_audio", "preprocess_images",
    "preprocess_video", "preprocessing_for", "read_config", "read_frames", "save_multimodal",
    "save_parts", "tokenize", "unpatchify", "write_video",
]
