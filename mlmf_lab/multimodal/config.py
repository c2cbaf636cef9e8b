"""Configuration records of a multi-modal model, with a JSON round trip.

Every record is a frozen dataclass validated in ``__post_init__``; ``MultiModalConfig``
is what a saved model carries in its file metadata (``to_json`` / ``from_json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any

from ..errors import ConfigError, FormatError
from ..files import loads_json
from ..tables import fields_dict
from .preprocess.config import (
    AudioPreprocessing,
    ImagePreprocessing,
    Preprocessing,
    TextPreprocessing,
    VideoPreprocessing,
    positive,
)


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


PREPROCESSING: dict[Modality, type] = {
    Modality.TEXT: TextPreprocessing,
    Modality.IMAGE: ImagePreprocessing,
    Modality.AUDIO: AudioPreprocessing,
    Modality.VIDEO: VideoPreprocessing,
}

# encoder kinds each modality supports (see encoders.py)
PRETRAINED = "pretrained"  # the kind whose backbone comes from a Hugging Face folder
ENCODERS: dict[Modality, tuple[str, ...]] = {
    Modality.TEXT: ("transformer", PRETRAINED),
    Modality.IMAGE: ("patch_transformer", PRETRAINED),
    Modality.AUDIO: ("mel_transformer", PRETRAINED),
    Modality.VIDEO: ("frame_temporal", "frame_pool"),
    Modality.CUSTOM: ("linear",),
}


def pretrained_kinds() -> str:
    """The (modality/kind) pairs that take ``pretrained=``, for error messages."""
    return ", ".join(f"{m.value}/{PRETRAINED}" for m, kinds in ENCODERS.items()
                     if PRETRAINED in kinds)


@dataclass(frozen=True)
class ModalityConfig:
    """One input branch: its encoder and how its raw input is prepared.

    ``input_dim`` is the vocabulary size for text, ``n_mels`` for audio, the feature
    size for custom inputs, and is ignored for images, video and pretrained encoders (the
    patch size or the folder's config says). Encoder ``"pretrained"`` is a Hugging Face
    model (``ml.multimodal.load_encoder(pretrained)``: BERT and its relatives, CLIP, ViT,
    Whisper) under ``layers`` blocks of its own; every other kind starts from random
    weights and refuses ``pretrained=``.
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
    pretrained: str | None = None  # a Hugging Face folder (encoder "pretrained" only)

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
            positive(f"{self.name}.{key}", getattr(self, key))
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
        if self.encoder == PRETRAINED and not self.pretrained:
            raise ConfigError(f"{self.name}: encoder {PRETRAINED!r} needs pretrained=<a Hugging "
                              "Face folder> (bert, clip, vit, whisper, ...)")
        if self.encoder != PRETRAINED and self.pretrained is not None:
            raise ConfigError(
                f"{self.name}: the {modality.value} encoder {self.encoder!r} starts from random "
                f"weights and cannot take pretrained={self.pretrained!r}; the kinds that can: "
                f"{pretrained_kinds()}")
        needs_input = modality in (Modality.TEXT, Modality.AUDIO, Modality.CUSTOM)
        if needs_input and self.encoder != PRETRAINED and self.input_dim <= 0:
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
        positive("attention dim", self.dim)
        positive("attention heads", self.heads)
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
        positive("num_classes", self.num_classes)
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
            data = loads_json(text, None, "the multi-modal config")
        except FormatError as exc:
            raise ConfigError(exc.message) from None
        return cls.from_dict(data)


def _tuples(prep: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples the preprocessing records hold."""
    out = {k: tuple(v) if isinstance(v, list) else v for k, v in prep.items()}
    image = out.get("image")
    if isinstance(image, dict):
        out["image"] = ImagePreprocessing(**_tuples(image))
    return out
