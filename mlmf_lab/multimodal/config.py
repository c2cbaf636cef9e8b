"""Configuration records of a multi-modal model, with a JSON round trip.

Every record is a frozen dataclass validated in ``__post_init__``; ``MultiModalConfig``
is what a saved model carries in its file metadata (``to_json`` / ``from_json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any

from ..errors import ConfigError
from ..tables import fields_dict


class Modality(StrEnum):
    """The kinds of input a multi-modal model reads."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    CUSTOM = "custom"


class FusionStrategy(StrEnum):
    """Where the modalities meet.

    EARLY: encoder outputs concatenated into one sequence before a shared encoder.
    MIDDLE: cross-attention blocks between the encoders at chosen layers.
    LATE: per-modality pooled outputs combined (mean, weighted or a learned gate).
    ATTENTION: learned softmax weights across modalities, one set per sample.
    """

    EARLY = "early"
    MIDDLE = "middle"
    LATE = "late"
    ATTENTION = "attention"


LATE_MODES = ("mean", "weighted", "gate")


def _enum(cls: type[Enum], value: Any, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(repr(m.value) for m in cls)  # type: ignore[attr-defined]
        raise ConfigError(f"unknown {what} {value!r}; supported: {known}") from None


def _positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, found {value!r}")


@dataclass(frozen=True)
class TextPreprocessing:
    """Tokenization: the model's own ``tokenizer.json`` through the ``tokenizers`` package."""

    tokenizer: str | None = None  # path of tokenizer.json (None: the caller passes a Tokenizer)
    max_length: int = 64  # longer texts are truncated (when truncation) to this many tokens
    padding: str = "longest"  # "longest" in the batch or "max_length"
    truncation: bool = True

    def __post_init__(self) -> None:
        _positive("text max_length", self.max_length)
        if self.padding not in ("longest", "max_length"):
            raise ConfigError(
                f"text padding must be 'longest' or 'max_length', found {self.padding!r}")


@dataclass(frozen=True)
class ImagePreprocessing:
    """Resize keeping the aspect ratio, center crop, normalize, cut into ViT patches."""

    size: int = 224  # output side (square) in pixels
    patch: int = 16  # patch side; must divide size
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per RGB channel, on [0, 1]
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        _positive("image size", self.size)
        _positive("image patch", self.patch)
        if self.size % self.patch:
            raise ConfigError(
                f"image patch {self.patch} must divide the image size {self.size}; "
                f"use a size that is a multiple of {self.patch}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("image mean and std need 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"image std must be > 0, found {self.std}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return (self.size // self.patch, self.size // self.patch)

    @property
    def num_patches(self) -> int:
        return (self.size // self.patch) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch * self.patch * 3


@dataclass(frozen=True)
class AudioPreprocessing:
    """Load + resample (soxr), mono, Hann-windowed frames, (log-)mel spectrogram, normalize."""

    sample_rate: int = 16000
    n_fft: int = 400  # frame length in samples
    hop: int = 160  # step between frames in samples
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    log: bool = True  # log-mel (dB) instead of power
    normalize: bool = True  # zero mean, unit variance per clip
    max_seconds: float | None = None  # longer clips are cut

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop", "n_mels"):
            _positive(f"audio {name}", getattr(self, name))
        if self.hop > self.n_fft:
            raise ConfigError(f"audio hop {self.hop} exceeds the frame length n_fft {self.n_fft}")
        top = self.fmax if self.fmax is not None else self.sample_rate / 2
        if not 0 <= self.fmin < top <= self.sample_rate / 2:
            raise ConfigError(
                f"audio needs 0 <= fmin < fmax <= sample_rate/2, found fmin={self.fmin}, "
                f"fmax={top}, sample_rate={self.sample_rate}")
        if self.max_seconds is not None:
            _positive("audio max_seconds", self.max_seconds)


@dataclass(frozen=True)
class VideoPreprocessing:
    """Frames read at ``fps``, clips of ``clip_frames`` every ``stride`` frames, image pipeline."""

    fps: float = 4.0
    clip_frames: int = 8
    stride: int = 8  # frames between clip starts (== clip_frames: no overlap)
    image: ImagePreprocessing = field(default_factory=ImagePreprocessing)

    def __post_init__(self) -> None:
        _positive("video fps", self.fps)
        _positive("video clip_frames", self.clip_frames)
        _positive("video stride", self.stride)
        if isinstance(self.image, dict):
            object.__setattr__(self, "image", ImagePreprocessing(**self.image))


Preprocessing = TextPreprocessing | ImagePreprocessing | AudioPreprocessing | VideoPreprocessing
PREPROCESSING: dict[Modality, type] = {
    Modality.TEXT: TextPreprocessing,
    Modality.IMAGE: ImagePreprocessing,
    Modality.AUDIO: AudioPreprocessing,
    Modality.VIDEO: VideoPreprocessing,
}

# encoder kinds each modality supports (see encoders.py)
ENCODERS: dict[Modality, tuple[str, ...]] = {
    Modality.TEXT: ("transformer", "minilm"),
    Modality.IMAGE: ("patch_transformer",),
    Modality.AUDIO: ("mel_transformer",),
    Modality.VIDEO: ("frame_temporal", "frame_pool"),
    Modality.CUSTOM: ("linear",),
}


@dataclass(frozen=True)
class ModalityConfig:
    """One input branch: its encoder and how its raw input is prepared.

    ``input_dim`` is the vocabulary size for text, ``n_mels`` for audio, the feature
    size for custom inputs, and is ignored for images and video (the patch size says).
    """

    name: str  # key of this input in the model's inputs dict, e.g. "caption"
    modality: Modality
    encoder: str = "transformer"
    dim: int = 64  # width of this encoder
    layers: int = 1  # transformer layers of this encoder
    heads: int = 2
    input_dim: int = 0
    max_tokens: int = 512  # size of the learned position table
    device: str = "cpu"
    preprocessing: Preprocessing | None = None
    pretrained: str | None = None  # weights for the encoder backbone (e.g. the MiniLM folder)

    def __post_init__(self) -> None:
        modality = _enum(Modality, self.modality, "modality")
        object.__setattr__(self, "modality", modality)
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"modality name must be a non-empty identifier, found {self.name!r}")
        if self.encoder not in ENCODERS[modality]:
            raise ConfigError(
                f"unknown {modality.value} encoder {self.encoder!r}; supported: "
                f"{', '.join(ENCODERS[modality])}")
        for key in ("dim", "heads", "max_tokens"):
            _positive(f"{self.name}.{key}", getattr(self, key))
        if self.layers < 0:
            raise ConfigError(f"{self.name}.layers must be >= 0, found {self.layers}")
        if self.dim % self.heads:
            raise ConfigError(f"{self.name}: dim {self.dim} is not divisible by heads {self.heads}")
        prep = self.preprocessing
        if isinstance(prep, dict):
            if modality not in PREPROCESSING:
                raise ConfigError(f"{modality.value} inputs take no preprocessing config")
            prep = PREPROCESSING[modality](**prep)
            object.__setattr__(self, "preprocessing", prep)
        if prep is not None and not isinstance(prep, PREPROCESSING.get(modality, type(None))):
            raise ConfigError(
                f"{self.name}: a {modality.value} input needs "
                f"{PREPROCESSING[modality].__name__}, found {type(prep).__name__}")
        needs_input = modality in (Modality.TEXT, Modality.AUDIO, Modality.CUSTOM)
        if needs_input and self.encoder != "minilm" and self.input_dim <= 0:
            what = {Modality.TEXT: "the vocabulary size", Modality.AUDIO: "n_mels"}.get(
                modality, "the feature size")
            raise ConfigError(
                f"{self.name}: input_dim must be {what} (> 0), found {self.input_dim}")
        if modality in (Modality.IMAGE, Modality.VIDEO) and prep is None:
            raise ConfigError(f"{self.name}: a {modality.value} input needs its preprocessing "
                              "config (the patch size fixes the encoder's input)")


@dataclass(frozen=True)
class CrossModalAttentionConfig:
    """Multi-head attention from one modality's tokens to another's."""

    dim: int = 64
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _positive("attention dim", self.dim)
        _positive("attention heads", self.heads)
        if self.dim % self.heads:
            raise ConfigError(f"attention dim {self.dim} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"attention dropout must be in [0, 1), found {self.dropout}")


@dataclass(frozen=True)
class MultiModalConfig:
    """A whole model: the inputs, how they are fused, and the output head."""

    modalities: tuple[ModalityConfig, ...]
    fusion: FusionStrategy = FusionStrategy.LATE
    num_classes: int = 2
    attention: CrossModalAttentionConfig = field(default_factory=CrossModalAttentionConfig)
    late_mode: str = "mean"  # for LATE: "mean", "weighted" or "gate"
    middle_layers: tuple[int, ...] = (0,)  # for MIDDLE: cross-attention after these layers
    fusion_layers: int = 1  # for EARLY: layers of the shared encoder

    def __post_init__(self) -> None:
        mods = tuple(m if isinstance(m, ModalityConfig) else ModalityConfig(**m)
                     for m in self.modalities)
        object.__setattr__(self, "modalities", mods)
        object.__setattr__(self, "fusion", _enum(FusionStrategy, self.fusion, "fusion strategy"))
        if isinstance(self.attention, dict):
            object.__setattr__(self, "attention", CrossModalAttentionConfig(**self.attention))
        object.__setattr__(self, "middle_layers", tuple(int(i) for i in self.middle_layers))
        if not mods:
            raise ConfigError("a multi-modal model needs at least one modality")
        names = [m.name for m in mods]
        if len(set(names)) != len(names):
            raise ConfigError(f"modality names must be unique, found {names}")
        _positive("num_classes", self.num_classes)
        if self.late_mode not in LATE_MODES:
            raise ConfigError(
                f"unknown late fusion mode {self.late_mode!r}; supported: {', '.join(LATE_MODES)}")
        if self.fusion is FusionStrategy.MIDDLE:
            depth = min(m.layers for m in mods)
            bad = [i for i in self.middle_layers if not 0 <= i < depth]
            if bad or not self.middle_layers:
                raise ConfigError(
                    f"middle_layers {list(self.middle_layers)} must name layers 0..{depth - 1} "
                    "(every encoder needs that many layers)")
            odd = [m.name for m in mods if m.dim != self.attention.dim]
            if odd:
                raise ConfigError(
                    f"middle fusion needs every encoder dim == attention dim "
                    f"{self.attention.dim}; differs: {odd}")
        if self.fusion_layers < 0:
            raise ConfigError(f"fusion_layers must be >= 0, found {self.fusion_layers}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def modality(self, name: str) -> ModalityConfig:
        """The branch called ``name``; ConfigError listing the known names otherwise."""
        for m in self.modalities:
            if m.name == name:
                return m
        raise ConfigError(f"no modality {name!r}; this model has: {', '.join(self.names)}")

    def as_dict(self) -> dict[str, Any]:
        """JSON data (enums as their values, tuples as lists); ``from_dict`` reads it back."""
        return fields_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiModalConfig:
        """Rebuild from ``as_dict`` output; ConfigError on unknown or bad fields."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"a multi-modal config must be a JSON object, found {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ConfigError(f"unknown config fields {sorted(extra)}; known: {sorted(known)}")
        rest = {k: v for k, v in data.items() if k != "modalities"}
        try:
            mods = []
            for m in data.get("modalities", ()):
                m = dict(m)
                prep = m.get("preprocessing")
                if isinstance(prep, dict):
                    kind = PREPROCESSING[_enum(Modality, m.get("modality"), "modality")]
                    m["preprocessing"] = kind(**_tuples(prep))
                mods.append(ModalityConfig(**m))
            return cls(modalities=tuple(mods), **rest)
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"bad multi-modal config: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> MultiModalConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the multi-modal config is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _tuples(prep: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples the preprocessing records hold."""
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in prep.items()}
    image = out.get("image")
    if isinstance(image, dict):
        out["image"] = ImagePreprocessing(**_tuples(image))
    return out
