"""Encoders from Hugging Face folders (``load_encoder``), table-driven against transformers'
own ``from_pretrained`` on tiny seeded folders that transformers writes; the CLIP-style
``DualEncoder`` against ``CLIPModel``; checkpoints saved by current transformers (no
``position_ids``); refusals that name what would work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers  # noqa: E402  (a dev dependency: missing fails, never skips)

import mlmf_lab as ml
from mlmf_lab.errors import ConfigError, MLMFError, StateDictError
from mlmf_lab.models.minilm import MiniLM
from mlmf_lab.multimodal import hf, tiny
from mlmf_lab.multimodal.config import Modality, ModalityConfig
from mlmf_lab.multimodal.preprocess.config import ImagePreprocessing


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    out = {"clip": tiny.tiny_clip(root / "clip"), "whisper": tiny.tiny_whisper(root / "whisper"),
           "vit": tiny.tiny_vit(root / "vit"),
           "vit_bare": tiny.tiny_vit(root / "vit_bare", classifier=False)}
    for kind, head in zip(tiny.TEXT_TYPES, ["base", "masked_lm", "classifier", "masked_lm",
                                            "base"], strict=True):
        out[kind] = tiny.tiny_text(root / kind, kind, head)
    vision = transformers.CLIPVisionModel.from_pretrained(out["clip"])  # its own model_type
    vision.save_pretrained(root / "clip_vision")
    out["clip_vision"] = root / "clip_vision"
    return out


def _pixels(side: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))


def _ids(vocab: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def _clip_features(part: str):
    """CLIPModel's own projected features (its towers alone do not learn the folder's
    projection width: transformers re-initializes theirs)."""
    def reference(folder: Path):
        model = transformers.CLIPModel.from_pretrained(folder).eval()
        get = getattr(model, f"get_{part}_features")
        return lambda **inputs: get(**inputs).pooler_output
    return reference


def _field(load, field: str):
    def reference(folder: Path):
        model = load(folder).eval()
        return lambda **inputs: getattr(model(**inputs), field)
    return reference


# (folder, modality, reference: folder -> (inputs -> tensor), our output field, inputs)
CASES = [
    ("clip", "text", _clip_features("text"), "text_embeds", "text"),
    ("clip", "image", _clip_features("image"), "image_embeds", "image"),
    ("clip_vision", None, _field(transformers.CLIPVisionModel.from_pretrained,
                                 "last_hidden_state"), "last_hidden_state", "image"),
    ("vit", None, _field(lambda f: transformers.ViTModel.from_pretrained(
        f, add_pooling_layer=False), "last_hidden_state"), "last_hidden_state", "image"),
    ("vit_bare", None, _field(lambda f: transformers.ViTModel.from_pretrained(
        f, add_pooling_layer=False), "last_hidden_state"), "last_hidden_state", "image"),
    ("whisper", None, _field(lambda f: transformers.WhisperForConditionalGeneration
                             .from_pretrained(f).model.encoder, "last_hidden_state"),
     "last_hidden_state", "audio"),
] + [(kind, None, _field(transformers.AutoModel.from_pretrained, "last_hidden_state"),
      "last_hidden_state", "text") for kind in tiny.TEXT_TYPES]


@pytest.mark.parametrize(("name", "modality", "reference", "field", "kind"), CASES,
                         ids=[f"{c[0]}-{c[1] or 'only'}" for c in CASES])
@torch.no_grad()
def test_load_encoder_equals_transformers(folders: dict[str, Path], name: str,
                                          modality: str | None, reference, field: str,
                                          kind: str) -> None:
    ours = hf.load_encoder(folders[name], modality)
    theirs = reference(folders[name])
    if kind == "image":
        inputs = {"pixel_values": _pixels()}
    elif kind == "audio":
        inputs = {"input_features": torch.randn(2, 80, 100,
                                                generator=torch.Generator().manual_seed(2))}
    else:
        ids, mask = _ids()
        inputs = {"input_ids": ids, "attention_mask": mask}
    assert torch.equal(getattr(ours(**inputs), field), theirs(**inputs))
    assert not any(t.is_meta for t in [*ours.parameters(), *ours.buffers()])
    assert not ours.training


def _mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """True when the tensor's bytes lie in a memory map of ``path`` (/proc/self/maps)."""
    ptr, real = tensor.data_ptr(), str(path.resolve())
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return len(parts) >= 6 and parts[5] == real
    return False


def test_weights_are_mapped_not_copied(folders: dict[str, Path]) -> None:
    vit = hf.load_encoder(folders["vit"])  # renamed keys: transformers 5 saves the old names
    assert _mapped_from(vit.embeddings.patch_embeddings.projection.weight,
                        folders["vit"] / "model.safetensors")
    text = hf.load_encoder(folders["clip"], "text")  # through ml.load_into
    assert _mapped_from(text.text_projection.weight, folders["clip"] / "model.safetensors")


def test_position_ids_rebuilt_as_transformers_does(folders: dict[str, Path],
                                                   tmp_path: Path) -> None:
    with ml.open_weights(folders["clip"]) as wf:
        assert not any(k.endswith("position_ids") for k in wf)  # transformers no longer saves it
    enc = hf.load_encoder(folders["bert"])
    assert torch.equal(enc.embeddings.position_ids, torch.arange(64)[None])
    assert torch.equal(enc.embeddings.token_type_ids, torch.zeros(1, 64, dtype=torch.long))
    # the real MiniLM (an old file: it holds position_ids) re-saved by today's transformers
    minilm = ml.examples.minilm_dir()
    saved = tmp_path / "minilm"
    transformers.BertModel.from_pretrained(minilm).save_pretrained(saved)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm / name, saved / name)
    with ml.open_weights(saved) as wf:
        assert "embeddings.position_ids" not in wf
    ours = MiniLM.from_pretrained(saved)  # was: StateDictError, position_ids missing
    old = MiniLM.from_pretrained(minilm)
    batch = old.tokenize(["a red circle", "the weights are files"])
    with torch.no_grad():
        assert torch.equal(ours(**batch)[0], old(**batch)[0])
        resaved = hf.load_encoder(saved)(**batch).last_hidden_state  # transformers' BertModel
        assert torch.equal(resaved, hf.load_encoder(minilm)(**batch).last_hidden_state)
        assert torch.allclose(resaved, old(**batch)[0], atol=1e-5)  # two implementations


@torch.no_grad()
def test_dual_encoder_equals_clip_model(folders: dict[str, Path]) -> None:
    clip = ml.multimodal.load_dual_encoder(folders["clip"])
    ref = transformers.CLIPModel.from_pretrained(folders["clip"]).eval()
    ids, mask = _ids(300)
    ids[:, -1] = ref.config.text_config.eos_token_id
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = clip((ids, mask), pixels)
    want = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    for field in ("text_embeds", "image_embeds", "logits_per_image", "logits_per_text"):
        assert (getattr(out, field) - getattr(want, field)).abs().max() < 1e-5, field
    assert out.logits_per_image.shape == (3, 2)
    assert float(clip.logit_scale) == pytest.approx(float(ref.logit_scale))
    with_maps = clip((ids, mask), pixels, output_attentions=True)  # eager attention: ~1e-7
    assert (with_maps.logits_per_image - want.logits_per_image).abs().max() < 1e-5
    assert with_maps.attentions["image"].shape == (3, 2, 4, 17, 17)
    assert with_maps.attentions["image"].grid == (4, 4)
    assert with_maps.attentions["image"].patch_offset == 1


def test_pretrained_kind_and_refusals(folders: dict[str, Path]) -> None:
    img = ImagePreprocessing(32, 8)
    with pytest.raises(ConfigError) as e:
        ModalityConfig("image", Modality.IMAGE, "patch_transformer", preprocessing=img,
                       pretrained=str(folders["vit"]))
    assert "starts from random weights and cannot take pretrained=" in str(e.value)
    assert "the kinds that can: text/pretrained, image/pretrained, audio/pretrained" in str(
        e.value)
    with pytest.raises(ConfigError, match="video encoder 'frame_temporal' starts from random"):
        ModalityConfig("clip", Modality.VIDEO, "frame_temporal",
                       preprocessing=ml.multimodal.VideoPreprocessing(image=img),
                       pretrained=str(folders["vit"]))
    with pytest.raises(ConfigError, match="encoder 'pretrained' needs pretrained=<a Hugging"):
        ModalityConfig("image", Modality.IMAGE, "pretrained", preprocessing=img)
    with pytest.raises(ConfigError, match="no encoder for model_type 'gpt2'; supported: bert, "
                                          "roberta"):
        bad = folders["bert"].parent / "gpt2"
        bad.mkdir(exist_ok=True)
        (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        hf.load_encoder(bad)
    with pytest.raises(ConfigError, match="a clip folder holds several encoders; pass "
                                          "modality= one of text, image"):
        hf.load_encoder(folders["clip"])
    with pytest.raises(ConfigError, match="a whisper folder has no image encoder; it encodes: "
                                          "audio"):
        hf.load_encoder(folders["whisper"], "image")
    with pytest.raises(MLMFError, match="expected a Hugging Face model folder with a "
                                        "config.json, found none"):
        hf.load_encoder(folders["bert"].parent)


def test_weights_that_disagree_with_the_config(folders: dict[str, Path],
                                               tmp_path: Path) -> None:
    deeper = tmp_path / "deeper"
    shutil.copytree(folders["bert"], deeper)
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(StateDictError, match=r"deeper: the BertModel built from config.json "
                                             r"and the weights disagree \(missing: "
                                             r"encoder.layer.2"):
        hf.load_encoder(deeper)
    (deeper / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(StateDictError, match=r"not in this config: encoder.layer.1"):
        hf.load_encoder(deeper)
    (deeper / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(StateDictError, match=r"model \[\d+, 48\], file \[\d+, 32\]"):
        hf.load_encoder(deeper)
