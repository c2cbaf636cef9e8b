"""``preprocessing_for(folder)`` against the processors transformers itself runs: images vs
``CLIPImageProcessor`` / ``ViTImageProcessor`` (their PIL backend, the one transformers uses
without torchvision) over a table of sizes and settings, audio vs ``WhisperFeatureExtractor``
(80 and 128 mels), text vs the folder's tokenizer; and the settings it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # noqa: E402  (a dev dependency: missing fails, never skips)

from mlmf_lab.errors import ConfigError, FormatError, MLMFError
from mlmf_lab.multimodal import (
    preprocess_audio,
    preprocess_images,
    preprocessing_for,
    tiny,
    tokenize,
)
from mlmf_lab.multimodal.processors import audio_preprocessing, image_preprocessing

CLIP, VIT = transformers.CLIPImageProcessorPil, transformers.ViTImageProcessorPil

# (height, width): square, down- and up-scaled, portrait and landscape, odd sizes where
# rounding the long side instead of truncating it would shift the crop, a sliver
SIZES = [(32, 32), (100, 60), (61, 97), (17, 29), (480, 640), (223, 224), (333, 500), (8, 8),
         (7, 300), (97, 33)]
SQ = {"height": 32, "width": 32}
PROCESSORS = {
    "clip (bicubic, shortest edge, crop)": CLIP(size={"shortest_edge": 32}, crop_size=SQ),
    "clip, resize larger than the crop": CLIP(size={"shortest_edge": 40}, crop_size=SQ),
    "clip, lanczos": CLIP(size={"shortest_edge": 32}, crop_size=SQ, resample=1),
    "clip, no resize (crop or pad)": CLIP(do_resize=False, crop_size=SQ),
    "clip, stretch then crop": CLIP(size={"height": 48, "width": 48}, crop_size=SQ),
    "vit (bilinear stretch)": VIT(size=SQ),
    "vit, bicubic, no normalize": VIT(size=SQ, resample=3, do_normalize=False),
    "vit, no rescale, nearest": VIT(size=SQ, do_rescale=False, resample=0),
}


def _images(seed: int = 0) -> list[np.ndarray]:
    """Noise (the hardest case for a resampler) and smooth gradients, for every size."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        out.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        y, x = np.mgrid[0:h, 0:w]
        grad = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1),
                         (x + y) * 127 / max(h + w, 1)], -1)
        out.append(grad.astype(np.uint8))
    return out


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_images_equal_the_hf_image_processors(name: str) -> None:
    processor = PROCESSORS[name]
    cfg = image_preprocessing(processor.to_dict(), 8, Path("preprocessor_config.json"))
    images = _images()
    ours = torch.cat([preprocess_images([im], cfg).pixels for im in images])
    ref = torch.cat([processor(im, return_tensors="pt")["pixel_values"] for im in images])
    assert ours.shape == ref.shape == (len(images), 3, 32, 32)
    diff = (ours - ref).abs()
    assert float(diff.max()) < 0.1 and float(diff.mean()) < 1e-3, name
    assert float(diff.max()) < 1e-5  # in fact: the same PIL filter on the same bytes


@pytest.mark.parametrize("n_mels", [80, 128])
def test_audio_equals_whisper_feature_extractor(n_mels: int) -> None:
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels, chunk_length=2)
    cfg = audio_preprocessing(extractor.to_dict(), Path("preprocessor_config.json"))
    assert (cfg.features, cfg.n_mels, cfg.chunk_seconds) == ("whisper", n_mels, 2.0)
    rng = np.random.default_rng(n_mels)
    # shorter than the chunk (padded with silence), one long clip (cut), a very short one
    waves = [(0.3 * np.sin(np.arange(n) * f) * rng.uniform(0.5, 1, n)).astype(np.float32)
             for n, f in [(16000, 0.05), (8001, 0.2), (40000, 0.11), (300, 0.3)]]
    ref = extractor(waves, sampling_rate=16000, return_tensors="pt",
                    return_attention_mask=True)
    ours = preprocess_audio([(w, 16000) for w in waves], cfg)
    assert ours.mel.shape == ref["input_features"].shape == (4, n_mels, 200)
    diff = (ours.mel - ref["input_features"]).abs()
    assert float(diff.mean()) < 1e-4 and float(diff.max()) < 1e-4
    assert torch.equal(ours.mask, ref["attention_mask"].bool())


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prep")
    return {"clip": tiny.tiny_clip(root / "clip"), "vit": tiny.tiny_vit(root / "vit"),
            "whisper": tiny.tiny_whisper(root / "whisper", n_mels=128),
            "bert": tiny.tiny_text(root / "bert")}


TEXTS = ["a red circle", "Which shape is BLUE?",
         " and ".join(["the tone names the colour of the shape"] * 4)]  # too long for both


@pytest.mark.parametrize("name", ["clip", "bert"])
def test_text_equals_the_folders_tokenizer(folders: dict[str, Path], name: str) -> None:
    prep = preprocessing_for(folders[name]).text
    assert prep is not None
    ref = transformers.AutoTokenizer.from_pretrained(folders[name])
    want = ref(TEXTS, padding=True, truncation=True, max_length=prep.max_length,
               return_tensors="pt")
    ours = tokenize(TEXTS, prep.tokenizer, prep)
    assert torch.equal(ours.input_ids, want["input_ids"])
    assert torch.equal(ours.attention_mask, want["attention_mask"].bool())
    assert ours.input_ids.shape[1] == prep.max_length  # the long text was truncated
    assert prep.pad_token == ref.pad_token


@pytest.mark.parametrize(("kind", "settings"), [
    (CLIP, {"size": 40, "crop_size": 32, "do_center_crop": True, "resample": 3}),
    (VIT, {"size": 32, "resample": 2}),
])
def test_sizes_written_as_one_int(tmp_path: Path, kind, settings: dict) -> None:
    """Older preprocessor configs (many checkpoints on the Hub) give sizes as one int."""
    doc = {**kind().to_dict(), **settings}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(doc))
    processor = kind.from_pretrained(tmp_path)
    cfg = image_preprocessing(doc, 8, tmp_path / "preprocessor_config.json")
    images = _images(1)[:6]
    ours = torch.cat([preprocess_images([im], cfg).pixels for im in images])
    ref = torch.cat([processor(im, return_tensors="pt")["pixel_values"] for im in images])
    assert float((ours - ref).abs().max()) < 1e-5


def test_preprocessing_for_reads_each_kind_of_folder(folders: dict[str, Path]) -> None:
    clip = preprocessing_for(folders["clip"])  # processor_config.json: image + tokenizer
    assert clip.image is not None and clip.audio is None and clip.text is not None
    assert (clip.image.resize, clip.image.resample, clip.image.size, clip.image.patch) == (
        "shortest_edge", "bicubic", 32, 8)
    vit = preprocessing_for(folders["vit"])  # preprocessor_config.json, no tokenizer
    assert vit.image is not None and (vit.image.resize, vit.image.resample) == ("stretch",
                                                                              "bilinear")
    assert vit.text is None
    whisper = preprocessing_for(folders["whisper"])
    assert whisper.audio is not None and whisper.audio.n_mels == 128
    assert whisper.for_modality("audio") is whisper.audio
    with pytest.raises(ConfigError, match="no image preprocessing in this folder; it has: "
                                          "audio"):
        whisper.for_modality("image")
    assert [r["modality"] for r in clip.rows()] == ["text", "image"]
    json.dumps(clip.as_dict())


def test_settings_that_cannot_be_reproduced_are_refused(tmp_path: Path) -> None:
    where = Path("preprocessor_config.json")
    base = CLIP(size={"shortest_edge": 32}, crop_size=SQ).to_dict()
    cases = [
        ({**base, "image_processor_type": "SiglipImageProcessor"},
         "no reproduction of image processor 'SiglipImageProcessor'; supported: "
         "CLIPImageProcessor, ViTImageProcessor"),
        ({**base, "do_center_crop": False}, "without do_center_crop keeps the aspect ratio"),
        ({**base, "crop_size": {"height": 32, "width": 24}}, "crop_size must be a square"),
        ({**base, "do_pad": True}, "do_pad is not supported"),
    ]
    for doc, message in cases:
        with pytest.raises(ConfigError, match=message):
            image_preprocessing(doc, 8, where)
    whisper = transformers.WhisperFeatureExtractor(chunk_length=1).to_dict()
    with pytest.raises(ConfigError, match="dither and a non-zero padding_value are not "
                                          "reproduced; found dither=0.1"):
        audio_preprocessing({**whisper, "dither": 0.1}, where)
    with pytest.raises(ConfigError, match="no reproduction of feature extractor "
                                          "'ClapFeatureExtractor'"):
        audio_preprocessing({**whisper, "feature_extractor_type": "ClapFeatureExtractor"},
                            where)
    with pytest.raises(MLMFError, match="expected a Hugging Face model folder, found no folder"):
        preprocessing_for(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="nothing to preprocess with"):
        preprocessing_for(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{broken")
    with pytest.raises(FormatError,
                       match="preprocessor_config.json: the preprocessor config is not valid JSON"):
        preprocessing_for(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="preprocessor_config.json: the preprocessor config "
                                          "must be a JSON object, found list"):
        preprocessing_for(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("[" * 100_000)
    with pytest.raises(FormatError, match="preprocessor_config.json: the preprocessor config "
                                          "nests deeper"):
        preprocessing_for(tmp_path)
