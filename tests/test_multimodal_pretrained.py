"""The real pretrained text encoder (MiniLM) inside a multi-modal model, and GGUF files."""

from __future__ import annotations

from pathlib import Path

import torch

import mlmf_lab as ml
from mlmf_lab.models import minilm
from mlmf_lab.multimodal.config import (
    CrossModalAttentionConfig,
    ImagePreprocessing,
    Modality,
    ModalityConfig,
    MultiModalConfig,
    TextPreprocessing,
)
from mlmf_lab.multimodal.io import load_multimodal, load_parts, save_multimodal, save_parts
from mlmf_lab.multimodal.model import MultiModalModel
from mlmf_lab.multimodal.preprocess import tokenize


def minilm_config(fusion: str = "middle") -> MultiModalConfig:
    folder = str(ml.examples.minilm_dir())
    return MultiModalConfig(
        (ModalityConfig("caption", Modality.TEXT, "minilm", 32, 1, 2, max_tokens=32,
                        preprocessing=TextPreprocessing(tokenizer=folder, max_length=16),
                        pretrained=folder),
         ModalityConfig("image", Modality.IMAGE, "patch_transformer", 32, 1, 2,
                        preprocessing=ImagePreprocessing(16, 8))),
        fusion=fusion, num_classes=3, attention=CrossModalAttentionConfig(32, 2))


def test_minilm_text_path_uses_the_pretrained_weights(tmp_path: Path) -> None:
    cfg = minilm_config()
    torch.manual_seed(0)
    model = MultiModalModel(cfg).eval()
    backbone = model.encoder("caption").backbone  # type: ignore[union-attr]
    with ml.open_weights(ml.examples.minilm_path()) as wf:
        assert torch.equal(backbone.embeddings.word_embeddings.weight,
                           wf.tensor("embeddings.word_embeddings.weight"))
    text = tokenize(["a red circle", "which shape is blue"], ml.examples.minilm_dir(),
                    cfg.modality("caption").preprocessing)  # type: ignore[arg-type]
    reference = minilm.MiniLM.from_pretrained(ml.examples.minilm_dir())
    states, _ = reference(text.input_ids, text.attention_mask.long())
    ours, _ = backbone(text.input_ids, text.attention_mask.long())
    assert torch.allclose(ours, states)
    out = model({"caption": text, "image": torch.randn(2, 4, 192)}, need_weights=True)
    assert out.logits.shape == (2, 3)
    w = next(m for m in out.cross if m.query == "caption").span("image")
    assert w.shape == (2, 2, text.input_ids.shape[1], 4)

    # one file: the backbone comes back from the saved file, not from the MiniLM folder
    path = save_multimodal(model, tmp_path / "mm.safetensors")
    back = load_multimodal(path)
    assert torch.equal(back({"caption": text}).logits, model({"caption": text}).logits)

    # parts: the backbone straight from the MiniLM package's own model.safetensors
    parts = save_parts(model, tmp_path / "parts")
    caption = ml.load_state_dict(parts["caption"])
    ml.save_state_dict({k: v for k, v in caption.items() if not k.startswith("backbone.")},
                       tmp_path / "caption_head.safetensors")
    mixed = load_parts({"fusion": parts["fusion"], "image": parts["image"],
                        "caption": tmp_path / "caption_head.safetensors",
                        "caption.backbone": ml.examples.minilm_path()})
    assert torch.equal(mixed({"caption": text}).logits, model({"caption": text}).logits)


def test_gguf_round_trip(tmp_path: Path) -> None:
    from test_multimodal_model import tiny_config, tiny_inputs

    torch.manual_seed(4)
    model = MultiModalModel(tiny_config("middle")).eval()
    path = save_multimodal(model, tmp_path / "mm.gguf")
    with ml.open_weights(path) as wf:
        assert wf.format == "gguf"
    back = load_multimodal(path)
    assert back.config == model.config
    inputs = tiny_inputs()
    assert torch.equal(back(inputs).logits, model(inputs).logits)
