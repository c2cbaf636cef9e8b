"""Pretrained encoders inside a multi-modal model: the real MiniLM as the text branch, a model
assembled from CLIP and Whisper folders (preprocessed as their processors do), saving and
loading (one file, parts, GGUF), and preprocessing that does not fit a backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # noqa: E402  (a dev dependency: missing fails, never skips)

import mlmf_lab as ml
from mlmf_lab.errors import ConfigError
from mlmf_lab.models import minilm
from mlmf_lab.multimodal import preprocessing_for, tiny
from mlmf_lab.multimodal.config import (
    CrossModalAttentionConfig,
    Modality,
    ModalityConfig,
    MultiModalConfig,
)
from mlmf_lab.multimodal.io import load_multimodal, load_parts, save_multimodal, save_parts
from mlmf_lab.multimodal.model import MultiModalModel
from mlmf_lab.multimodal.preprocess import preprocess_audio, preprocess_images, tokenize
from mlmf_lab.multimodal.preprocess.config import ImagePreprocessing, TextPreprocessing


def minilm_config(fusion: str = "middle") -> MultiModalConfig:
    folder = str(ml.examples.minilm_dir())
    return MultiModalConfig(
        (ModalityConfig("caption", Modality.TEXT, "pretrained", 32, 1, 2,
                        preprocessing=TextPreprocessing(tokenizer=folder, max_length=16),
                        pretrained=folder),
         ModalityConfig("image", Modality.IMAGE, "patch_transformer", 32, 1, 2,
                        preprocessing=ImagePreprocessing(16, 8))),
        fusion=fusion, num_classes=3, attention=CrossModalAttentionConfig(32, 2))


def test_minilm_text_path_uses_the_pretrained_weights(tmp_path: Path) -> None:
    cfg = minilm_config()
    torch.manual_seed(0)
    model = MultiModalModel(cfg).eval()
    backbone = model.encoder("caption").backbone
    assert type(backbone).__name__ == "BertModel"  # transformers' own class
    with ml.open_weights(ml.examples.minilm_path()) as wf:
        assert torch.equal(backbone.embeddings.word_embeddings.weight,
                           wf.tensor("embeddings.word_embeddings.weight"))
    text = tokenize(["a red circle", "which shape is blue"], ml.examples.minilm_dir(),
                    cfg.modality("caption").preprocessing)  # type: ignore[arg-type]
    reference = minilm.MiniLM.from_pretrained(ml.examples.minilm_dir())
    with torch.no_grad():
        states, _ = reference(text.input_ids, text.attention_mask.long())
        ours = backbone(input_ids=text.input_ids,
                        attention_mask=text.attention_mask.long()).last_hidden_state
        assert torch.allclose(ours, states, atol=1e-5)
        out = model({"caption": text, "image": torch.randn(2, 4, 192)}, output_attentions=True)
    assert out.logits.shape == (2, 3)
    w = out.attentions["fusion.caption"].span("image")
    assert w.shape == (2, 1, 2, text.input_ids.shape[1], 4)
    assert out.attentions["caption.backbone"].shape == (2, 6, 12, text.input_ids.shape[1],
                                                        text.input_ids.shape[1])
    assert out.attentions["caption"].tokens[0][:3] == ("[CLS]", "a", "red")

    # one file: the backbone comes back from the saved file, not from the MiniLM folder
    path = save_multimodal(model, tmp_path / "mm.safetensors")
    back = load_multimodal(path)
    with torch.no_grad():
        assert torch.equal(back({"caption": text}).logits, model({"caption": text}).logits)

    # parts: the backbone straight from the MiniLM package's own model.safetensors (an old
    # file: its position_ids buffer is skipped, as transformers does)
    parts = save_parts(model, tmp_path / "parts")
    caption = ml.load_state_dict(parts["caption"])
    ml.save_state_dict({k: v for k, v in caption.items() if not k.startswith("backbone.")},
                       tmp_path / "caption_head.safetensors")
    mixed = load_parts({"fusion": parts["fusion"], "image": parts["image"],
                        "caption": tmp_path / "caption_head.safetensors",
                        "caption.backbone": ml.examples.minilm_path()})
    with torch.no_grad():
        assert torch.equal(mixed({"caption": text}).logits, model({"caption": text}).logits)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mm")
    return {"clip": tiny.tiny_clip(root / "clip"), "whisper": tiny.tiny_whisper(root / "whisper")}


def clip_whisper_config(folders: dict[str, Path], fusion: str = "middle") -> MultiModalConfig:
    clip, whisper = preprocessing_for(folders["clip"]), preprocessing_for(folders["whisper"])
    return MultiModalConfig(
        (ModalityConfig("caption", "text", "pretrained", 16, 1, 2, pretrained=str(folders["clip"]),
                        preprocessing=clip.text),
         ModalityConfig("image", "image", "pretrained", 16, 1, 2, pretrained=str(folders["clip"]),
                        preprocessing=clip.image),
         ModalityConfig("tone", "audio", "pretrained", 16, 1, 2,
                        pretrained=str(folders["whisper"]), preprocessing=whisper.audio)),
        fusion=fusion, num_classes=3, attention=CrossModalAttentionConfig(16, 2))


def clip_whisper_inputs(cfg: MultiModalConfig) -> dict[str, object]:
    rng = np.random.default_rng(0)
    text = cfg.modality("caption").preprocessing
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8),
              rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)]
    tones = [(0.3 * np.sin(np.arange(n) * f)).astype(np.float32) for n, f in [(8000, .2),
                                                                               (16000, .1)]]
    return {"caption": tokenize(["a red circle", "which shape is blue"], text.tokenizer, text),
            "image": preprocess_images(images, cfg.modality("image").preprocessing),
            "tone": preprocess_audio([(t, 16000) for t in tones],
                                     cfg.modality("tone").preprocessing)}


@torch.no_grad()
def test_a_model_from_clip_and_whisper_folders(folders: dict[str, Path], tmp_path: Path) -> None:
    cfg = clip_whisper_config(folders)
    torch.manual_seed(0)
    model = MultiModalModel(cfg).eval()
    inputs = clip_whisper_inputs(cfg)
    out = model(inputs, output_attentions=True)
    assert out.logits.shape == (2, 3)
    vision = transformers.CLIPModel.from_pretrained(
        folders["clip"], attn_implementation="eager").eval().vision_model
    want = vision(pixel_values=inputs["image"].pixels, output_attentions=True).attentions
    got = out.attentions["image.backbone"]
    assert torch.allclose(got.weights, torch.stack(want, 1), atol=1e-6)
    assert (got.grid, got.patch_offset, got.tokens[0][:2]) == ((4, 4), 1, ("[CLS]", "r0c0"))
    encoder = transformers.WhisperForConditionalGeneration.from_pretrained(
        folders["whisper"], attn_implementation="eager").model.encoder.eval()
    heard = encoder(inputs["tone"].mel, output_attentions=True).attentions
    assert torch.allclose(out.attentions["tone.backbone"].weights, torch.stack(heard, 1),
                          atol=1e-6)
    assert out.attentions["tone"].tokens[0][:3] == ("0.00s", "0.02s", "0.04s")
    # the first tone is half a second: its second half is padding, masked in the fusion
    assert out.attentions["fusion.caption"].span("tone").key_tokens[0][-1] == "0.98s"
    tone_keys = out.attentions["fusion.caption"].span("tone").weights
    assert float(tone_keys[0, ..., 25:].abs().max()) == 0.0
    assert float(tone_keys[1, ..., 25:].sum()) > 0

    back = load_multimodal(save_multimodal(model, tmp_path / "mm.safetensors"))
    assert torch.equal(back(inputs).logits, model(inputs).logits)


def test_preprocessing_that_does_not_fit_the_backbone(folders: dict[str, Path]) -> None:
    clip = str(folders["clip"])
    with pytest.raises(ConfigError, match="image: the backbone reads 32px images, the "
                                          "preprocessing makes 48px"):
        MultiModalModel(MultiModalConfig((ModalityConfig(
            "image", "image", "pretrained", 16, 1, 2, pretrained=clip,
            preprocessing=ImagePreprocessing(48, 8)),)))
    wrong = ml.multimodal.AudioPreprocessing(n_mels=80)  # no 1 s chunk: frames vary
    with pytest.raises(ConfigError, match="tone: the backbone reads 80 mel bands x 100 frames"):
        MultiModalModel(MultiModalConfig((ModalityConfig(
            "tone", "audio", "pretrained", 16, 1, 2, pretrained=str(folders["whisper"]),
            preprocessing=wrong),)))
    cfg = clip_whisper_config(folders, "late")
    model = MultiModalModel(cfg)
    with pytest.raises(ml.MLMFError, match=r"image: expected pixels \(B, 3, 32, 32\), found "
                                           r"\(2, 16, 192\)"):
        model({"image": torch.zeros(2, 16, 192)})


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
