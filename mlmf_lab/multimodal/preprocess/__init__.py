"""Preprocessing, one module per modality: ``text`` (tokenizers), ``image`` (OpenCV + PIL),
``audio`` (librosa + torch spectrogram maths), ``video`` (OpenCV + the image pipeline).

Each is pure and batched; bad input raises ``MLMFError`` naming the file.
"""

from __future__ import annotations

from .audio import AudioBatch, load_audio, log_mel, preprocess_audio
from .image import ImageBatch, decode_image, patchify, preprocess_images, unpatchify
from .text import TextBatch, build_word_tokenizer, load_tokenizer, tokenize
from .video import VideoBatch, preprocess_video, read_frames, write_video

__all__ = [
    "AudioBatch", "ImageBatch", "TextBatch", "VideoBatch", "build_word_tokenizer",
    "decode_image", "load_audio", "load_tokenizer", "log_mel", "patchify", "preprocess_audio",
    "preprocess_images", "preprocess_video", "read_frames", "tokenize", "unpatchify",
    "write_video",
]
