"""Small Hugging Face folders that transformers itself writes from seeded configs: a CLIP, a
ViT, a Whisper and the BERT family, with their processors and trained tokenizers. Nothing
is downloaded; demos and tests load them as they would a checkpoint from the Hub.

The weights are transformers' own random initialization (seeded), with the norms' scales
and shifts moved away from 1 and 0 so that a norm loaded wrongly would show.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

CORPUS = [f"{q} {c} {s}" for q in ("which shape is", "find the", "a", "the")
          for c in ("red", "green", "blue") for s in ("circle", "square", "triangle")] + [
    "the tone names the colour of the shape", "what shape is the colour you hear"]
TEXT_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra")
HEADS = ("base", "masked_lm", "classifier")


def _seeded_norms(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm) and module.weight is not None:
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return model


def _save(model: nn.Module, folder: str | os.PathLike[str]) -> None:
    model.save_pretrained(folder)  # type: ignore[operator]


def _text_tokenizer(kind: str, vocab: int, max_length: int) -> Any:
    import transformers

    tok = getattr(transformers, kind)().train_new_from_iterator(CORPUS, vocab_size=vocab,
                                                                 show_progress=False)
    tok.model_max_length = max_length
    return tok


def tiny_clip(folder: str | os.PathLike[str], seed: int = 0, image_size: int = 32,
              patch: int = 8, width: int = 32, layers: int = 2, heads: int = 4,
              projection: int = 16) -> Path:
    """A ``CLIPModel`` with its ``CLIPProcessor`` (bicubic shortest-edge resize, center crop)
    and a CLIP tokenizer trained on a few captions. Returns the folder."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tok = _text_tokenizer("CLIPTokenizer", 600, 16)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
               "pad_token_id": tok.pad_token_id}
    shape = {"hidden_size": width, "intermediate_size": 2 * width,
             "num_hidden_layers": layers, "num_attention_heads": heads}
    config = CLIPConfig(
        text_config={**shape, **special, "vocab_size": len(tok), "max_position_embeddings": 16},
        vision_config={**shape, "image_size": image_size, "patch_size": patch},
        projection_dim=projection)
    torch.manual_seed(seed)
    _save(_seeded_norms(CLIPModel(config), seed), folder)
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return Path(folder)


def tiny_vit(folder: str | os.PathLike[str], seed: int = 0, image_size: int = 32,
             patch: int = 8, width: int = 32, layers: int = 2, heads: int = 4,
             classifier: bool = True) -> Path:
    """A ``ViTForImageClassification`` (or a bare ``ViTModel``) with its image processor
    (bilinear stretch to a square, no crop). Returns the folder."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

    config = ViTConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                       num_attention_heads=heads, image_size=image_size, patch_size=patch)
    config.num_labels = 3
    torch.manual_seed(seed)
    model = ViTForImageClassification(config) if classifier else ViTModel(config)
    _save(_seeded_norms(model, seed), folder)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return Path(folder)


def tiny_whisper(folder: str | os.PathLike[str], seed: int = 0, n_mels: int = 80,
                 seconds: int = 1, width: int = 32, layers: int = 2, heads: int = 4) -> Path:
    """A ``WhisperForConditionalGeneration`` whose encoder reads ``seconds`` of audio (the
    real ones read 30), with its ``WhisperFeatureExtractor``. Returns the folder."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    config = WhisperConfig(
        vocab_size=64, d_model=width, encoder_layers=layers, decoder_layers=1,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * width,
        decoder_ffn_dim=2 * width, num_mel_bins=n_mels, max_source_positions=50 * seconds,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=3, suppress_tokens=[], begin_suppress_tokens=[])
    torch.manual_seed(seed)
    _save(_seeded_norms(WhisperForConditionalGeneration(config), seed), folder)
    WhisperFeatureExtractor(feature_size=n_mels, chunk_length=seconds).save_pretrained(folder)
    return Path(folder)


def tiny_text(folder: str | os.PathLike[str], model_type: str = "bert", head: str = "base",
              seed: int = 0, width: int = 32, layers: int = 2, heads: int = 4) -> Path:
    """A BERT-family encoder (``model_type`` one of ``TEXT_TYPES``) saved bare, with a
    masked-LM head or with a classifier (``head``), and a WordPiece tokenizer."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )

    tok = _text_tokenizer("BertTokenizer", 120, 32)
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), hidden_size=width,
                                  num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=2 * width, max_position_embeddings=64,
                                  pad_token_id=tok.pad_token_id, num_labels=3)
    builder = {"base": AutoModel, "masked_lm": AutoModelForMaskedLM,
               "classifier": AutoModelForSequenceClassification}[head]
    torch.manual_seed(seed)
    _save(_seeded_norms(builder.from_config(config), seed), folder)
    tok.save_pretrained(folder)
    return Path(folder)


__all__ = ["CORPUS", "HEADS", "TEXT_TYPES", "tiny_clip", "tiny_text", "tiny_vit", "tiny_whisper"]
