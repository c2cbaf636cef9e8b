"""``preprocessing_for(folder)``: the preprocessing a Hugging Face folder's processors do, as
the lab's records, so ``preprocess_images`` / ``preprocess_audio`` / ``tokenize`` give what
the pretrained model was trained on.

Read from the folder: ``preprocessor_config.json`` (an image processor or a feature
extractor) or ``processor_config.json`` (a processor holding both kinds), the tokenizer
(``tokenizer.json``, its ``tokenizer_config.json`` for the padding token and length) and
``config.json`` (the patch size, the text length). Supported: ``CLIPImageProcessor`` and
``ViTImageProcessor`` (their fast and PIL variants), ``WhisperFeatureExtractor``, any
``tokenizers`` tokenizer. A setting the lab cannot reproduce is refused, never ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MLMFError
from ..files import read_json
from ..tables import Table, fields_dict
from .config import Modality
from .preprocess.config import (
    RESAMPLE,
    AudioPreprocessing,
    ImagePreprocessing,
    Preprocessing,
    TextPreprocessing,
)

IMAGE_PROCESSORS = ("CLIPImageProcessor", "ViTImageProcessor")
FEATURE_EXTRACTORS = ("WhisperFeatureExtractor",)
WHISPER_FMAX = 8000.0  # WhisperFeatureExtractor's mel filters stop there at any rate
NO_LIMIT = 1_000_000  # tokenizers save model_max_length=1e30 when they have none


@dataclass(frozen=True)
class FolderPreprocessing:
    """The preprocessing of one folder, per modality (None where the folder has none)."""

    folder: str
    text: TextPreprocessing | None = None
    image: ImagePreprocessing | None = None
    audio: AudioPreprocessing | None = None

    def for_modality(self, modality: Modality | str) -> Preprocessing:
        """The record for ``modality``; ConfigError naming the ones the folder has."""
        m = Modality(modality)
        found = getattr(self, m.value, None) if m.value in ("text", "image", "audio") else None
        if found is None:
            have = [k for k in ("text", "image", "audio") if getattr(self, k) is not None]
            raise ConfigError(f"no {m.value} preprocessing in this folder; it has: "
                              f"{', '.join(have) or 'none'}", self.folder)
        return found

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        """One row per modality the folder preprocesses: its settings as ``key=value``."""
        return [{"modality": k, "settings": ", ".join(
                    f"{f}={v}" for f, v in fields_dict(getattr(self, k)).items()
                    if f != "tokenizer")}
                for k in ("text", "image", "audio") if getattr(self, k) is not None]

    def table(self) -> Table:
        return Table(["modality", "settings"], self.rows(),
                     title=f"preprocessing of {Path(self.folder).name}")

    def _repr_html_(self) -> str:
        return self.table().html()


def _processors(folder: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, Path]:
    """(image processor settings, feature extractor settings, the file they came from)."""
    path = folder / "processor_config.json"
    if path.is_file():
        doc = read_json(path, "the processor config", expect=dict)
        return doc.get("image_processor"), doc.get("feature_extractor"), path
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None, None, path
    doc = read_json(path, "the preprocessor config", expect=dict)
    if "image_processor_type" in doc:
        return doc, None, path
    if "feature_extractor_type" in doc:
        return None, doc, path
    raise ConfigError("expected an image_processor_type or a feature_extractor_type, "
                      "found neither", path)


def _base_type(name: Any) -> str:
    name = str(name)
    for suffix in ("Fast", "Pil"):
        name = name.removesuffix(suffix)
    return name


def _size_dict(size: Any, square: bool) -> Any:
    """Older configs give sizes as one int: a square for ViT, the short side for CLIP
    (transformers' ``get_size_dict`` with the class's ``default_to_square``)."""
    if isinstance(size, int) and not isinstance(size, bool):
        return {"height": size, "width": size} if square else {"shortest_edge": size}
    return size


def _square(size: Any, what: str, path: Path) -> int:
    if not isinstance(size, dict) or set(size) != {"height", "width"} \
            or size["height"] != size["width"]:
        raise ConfigError(f"{what} must be a square {{height, width}}, found {size!r}: the "
                          "patch grid needs square images", path)
    return int(size["height"])


def image_preprocessing(doc: dict[str, Any], patch: int, path: Path) -> ImagePreprocessing:
    """An ``ImagePreprocessing`` equal to the processor described by ``doc``.

    Raises:
        ConfigError: another processor type, or settings that give no square image.
    """
    kind = _base_type(doc.get("image_processor_type"))
    if kind not in IMAGE_PROCESSORS:
        raise ConfigError(f"no reproduction of image processor {kind!r}; supported: "
                          f"{', '.join(IMAGE_PROCESSORS)}", path)
    if doc.get("do_pad"):
        raise ConfigError("do_pad is not supported (the images would not be square)", path)
    size = _size_dict(doc.get("size"), square=kind == "ViTImageProcessor")
    crop = bool(doc.get("do_center_crop", False))
    resize, resize_size = "none", None
    if doc.get("do_resize", True):
        if isinstance(size, dict) and set(size) == {"shortest_edge"}:
            if not crop:
                raise ConfigError("a shortest_edge resize without do_center_crop keeps the "
                                  "aspect ratio: the images would not be square", path)
            resize, resize_size = "shortest_edge", int(size["shortest_edge"])
        else:
            resize, resize_size = "stretch", _square(size, "size", path)
    if crop:
        out = _square(_size_dict(doc.get("crop_size"), square=True), "crop_size", path)
    elif resize_size is not None:
        out = resize_size
    else:
        raise ConfigError("neither do_resize nor do_center_crop: the output size is the "
                          "input's, not a fixed square", path)
    resample = int(doc.get("resample", 2))
    if not 0 <= resample < len(RESAMPLE):
        raise ConfigError(f"unknown PIL resample filter {resample}", path)
    normalize = doc.get("do_normalize", True)
    return ImagePreprocessing(
        size=out, patch=patch,
        mean=tuple(doc.get("image_mean", (0.5,) * 3)) if normalize else (0.0, 0.0, 0.0),
        std=tuple(doc.get("image_std", (0.5,) * 3)) if normalize else (1.0, 1.0, 1.0),
        resize=resize, resize_size=resize_size if resize_size != out else None,
        resample=RESAMPLE[resample],
        rescale=float(doc.get("rescale_factor", 1 / 255)) if doc.get("do_rescale", True)
        else 1.0)


def audio_preprocessing(doc: dict[str, Any], path: Path) -> AudioPreprocessing:
    """An ``AudioPreprocessing`` equal to the feature extractor described by ``doc``.

    Raises:
        ConfigError: another extractor, dithering (random), or non-silent padding.
    """
    kind = _base_type(doc.get("feature_extractor_type"))
    if kind not in FEATURE_EXTRACTORS:
        raise ConfigError(f"no reproduction of feature extractor {kind!r}; supported: "
                          f"{', '.join(FEATURE_EXTRACTORS)}", path)
    if float(doc.get("dither", 0.0)) != 0.0 or float(doc.get("padding_value", 0.0)) != 0.0:
        raise ConfigError("dither and a non-zero padding_value are not reproduced; found "
                          f"dither={doc.get('dither')}, padding_value={doc.get('padding_value')}",
                          path)
    rate = int(doc.get("sampling_rate", 16000))
    return AudioPreprocessing(
        sample_rate=rate, n_fft=int(doc.get("n_fft", 400)), hop=int(doc.get("hop_length", 160)),
        n_mels=int(doc.get("feature_size", 80)), fmax=min(WHISPER_FMAX, rate / 2),
        features="whisper", chunk_seconds=float(doc.get("chunk_length", 30)))


def _token(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<pad>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def text_preprocessing(folder: Path, config: dict[str, Any]) -> TextPreprocessing | None:
    """The tokenizer's padding token and length, or None without a ``tokenizer.json``."""
    if not (folder / "tokenizer.json").is_file():
        return None
    settings = folder / "tokenizer_config.json"
    doc = read_json(settings, "the tokenizer config", expect=dict) if settings.is_file() else {}
    side = doc.get("padding_side", "right")
    if side != "right":
        raise ConfigError(f"padding_side {side!r} is not supported (texts are padded on the "
                          "right)", settings)
    pad = _token(doc.get("pad_token"))
    special_map = folder / "special_tokens_map.json"
    if pad is None and special_map.is_file():
        special = read_json(special_map, "the special tokens map", expect=dict)
        pad = _token(special.get("pad_token"))
    length = doc.get("model_max_length")
    if not isinstance(length, (int, float)) or length >= NO_LIMIT:
        text_cfg = config.get("text_config", config)
        length = text_cfg.get("max_position_embeddings", 512)
    return TextPreprocessing(tokenizer=str(folder / "tokenizer.json"), max_length=int(length),
                             pad_token=pad)


def _patch(config: dict[str, Any]) -> int | None:
    vision = config.get("vision_config", config)
    patch = vision.get("patch_size") if isinstance(vision, dict) else None
    return int(patch) if isinstance(patch, int) else None


def preprocessing_for(folder: str | os.PathLike[str]) -> FolderPreprocessing:
    """The text, image and audio preprocessing of a Hugging Face folder.

    Images come out as ``CLIPImageProcessor`` / ``ViTImageProcessor`` make them (resize
    with their filter and rounding, center crop, rescale, normalize), audio as
    ``WhisperFeatureExtractor`` (80 or 128 mels, padded to its chunk, Whisper's log scale),
    text with the folder's own tokenizer, its padding token and length.

    Raises:
        MLMFError: no folder or unreadable files. ConfigError: a processor or setting that
            cannot be reproduced (the message says which), or a folder with none.

    Example:
        >>> prep = preprocessing_for("clip-folder")  # doctest: +SKIP
        >>> batch = ml.multimodal.preprocess_images(["cat.jpg"], prep.image)  # doctest: +SKIP
    """
    root = Path(folder)
    if not root.is_dir():
        raise MLMFError("expected a Hugging Face model folder, found no folder", root)
    config_path = root / "config.json"
    config = (read_json(config_path, "the model config", expect=dict)
              if config_path.is_file() else {})
    image_doc, audio_doc, path = _processors(root)
    image = None
    if image_doc is not None:
        patch = _patch(config)
        if patch is None:
            raise ConfigError("the image preprocessing needs the patch size, found no "
                              "patch_size in config.json", root / "config.json")
        image = image_preprocessing(image_doc, patch, path)
    audio = None if audio_doc is None else audio_preprocessing(audio_doc, path)
    found = FolderPreprocessing(str(root), text_preprocessing(root, config), image, audio)
    if found.text is None and image is None and audio is None:
        raise ConfigError("no tokenizer.json, preprocessor_config.json or "
                          "processor_config.json here: nothing to preprocess with", root)
    return found
