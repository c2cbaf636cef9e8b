"""Preprocessing records, one per modality: what ``preprocess_*`` and ``tokenize`` do to a
raw input, validated in ``__post_init__`` and stored in a multi-modal model's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError


def positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, found {value!r}")


def choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; supported: {', '.join(choices)}")


@dataclass(frozen=True)
class TextPreprocessing:
    """Tokenization: the model's own ``tokenizer.json`` through the ``tokenizers`` package."""

    tokenizer: str | None = None  # path of tokenizer.json (None: the caller passes a Tokenizer)
    max_length: int = 64  # longer texts are truncated (when truncation) to this many tokens
    padding: str = "longest"  # "longest" in the batch or "max_length"
    truncation: bool = True
    pad_token: str | None = None  # None: the first of [PAD], <pad>, <PAD> in the vocabulary

    def __post_init__(self) -> None:
        positive("text max_length", self.max_length)
        if self.padding not in ("longest", "max_length"):
            raise ConfigError(
                f"text padding must be 'longest' or 'max_length', found {self.padding!r}")


RESIZE_MODES = ("shortest_edge", "stretch", "none")
# PIL's filters, by the names Hugging Face's ``PILImageResampling`` uses (lower case)
RESAMPLE = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")


@dataclass(frozen=True)
class ImagePreprocessing:
    """Resize, center crop to a square, rescale, normalize, cut into ViT patches.

    The steps and their rounding are those of Hugging Face's ``CLIPImageProcessor`` and
    ``ViTImageProcessor`` (``ml.multimodal.preprocessing_for(folder)`` reads them from a
    folder): ``resize="shortest_edge"`` scales the short side to ``resize_size`` and the
    long side to ``int(resize_size * long / short)`` (truncated, not rounded), ``"stretch"``
    scales both sides to ``resize_size`` (the aspect ratio is not kept), ``"none"`` keeps
    the pixels; then the central ``size`` x ``size`` square is cut (padded with zeros where
    the image is smaller, offsets rounded down). Resampling is PIL's, on 8-bit RGB.
    """

    size: int = 224  # output side (square) in pixels
    patch: int = 16  # patch side; must divide size
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per RGB channel, after rescale
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: str = "shortest_edge"  # one of RESIZE_MODES
    resize_size: int | None = None  # short side ("shortest_edge") or side ("stretch"); None: size
    resample: str = "bilinear"  # one of RESAMPLE (CLIP uses "bicubic")
    rescale: float = 1 / 255  # pixel values 0..255 are multiplied by this before normalizing

    def __post_init__(self) -> None:
        positive("image size", self.size)
        positive("image patch", self.patch)
        positive("image rescale", self.rescale)
        if self.size % self.patch:
            raise ConfigError(
                f"image patch {self.patch} must divide the image size {self.size}; "
                f"use a size that is a multiple of {self.patch}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("image mean and std need 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"image std must be > 0, found {self.std}")
        choice("image resize", self.resize, RESIZE_MODES)
        choice("image resample", self.resample, RESAMPLE)
        if self.resize_size is not None:
            positive("image resize_size", self.resize_size)
            if self.resize == "none":
                raise ConfigError("image resize_size needs resize='shortest_edge' or "
                                  "'stretch', found resize='none'; leave resize_size unset")
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


AUDIO_FEATURES = ("log_mel", "whisper")


@dataclass(frozen=True)
class AudioPreprocessing:
    """Load + resample (soxr), mono, Hann-windowed frames, mel spectrogram, scaled.

    ``features`` picks the scale: ``"log_mel"`` is librosa's (frames centred with zero
    padding, ``10 log10`` in dB when ``log``, zero mean and unit variance per clip when
    ``normalize``); ``"whisper"`` is ``WhisperFeatureExtractor``'s (frames centred with
    reflect padding, the last frame dropped, ``log10`` when ``log``, then when
    ``normalize`` floored at the clip's maximum - 8 and mapped by ``(x + 4) / 4``).
    ``chunk_seconds`` pads (with silence) or cuts every clip to that length, as Whisper's
    30 s windows; the frame mask still marks the real audio.
    """

    sample_rate: int = 16000
    n_fft: int = 400  # frame length in samples
    hop: int = 160  # step between frames in samples
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    log: bool = True  # log-mel instead of power
    normalize: bool = True  # the scale's normalization (see ``features``)
    max_seconds: float | None = None  # longer clips are cut
    features: str = "log_mel"  # one of AUDIO_FEATURES
    chunk_seconds: float | None = None  # every clip padded or cut to this length

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop", "n_mels"):
            positive(f"audio {name}", getattr(self, name))
        if self.hop > self.n_fft:
            raise ConfigError(f"audio hop {self.hop} exceeds the frame length n_fft {self.n_fft}")
        top = self.fmax if self.fmax is not None else self.sample_rate / 2
        if not 0 <= self.fmin < top <= self.sample_rate / 2:
            raise ConfigError(
                f"audio needs 0 <= fmin < fmax <= sample_rate/2, found fmin={self.fmin}, "
                f"fmax={top}, sample_rate={self.sample_rate}")
        if self.max_seconds is not None:
            positive("audio max_seconds", self.max_seconds)
        choice("audio features", self.features, AUDIO_FEATURES)
        if self.chunk_seconds is not None:
            positive("audio chunk_seconds", self.chunk_seconds)

    @property
    def chunk_samples(self) -> int | None:
        """Samples per clip after padding or cutting to ``chunk_seconds`` (None: as is)."""
        if self.chunk_seconds is None:
            return None
        return int(round(self.chunk_seconds * self.sample_rate))


@dataclass(frozen=True)
class VideoPreprocessing:
    """Frames read at ``fps``, clips of ``clip_frames`` every ``stride`` frames, image pipeline.

    Every sampled frame is in at least one clip: clips start every ``stride`` frames until
    one reaches the last frame, and that last clip is padded (frame mask False) when fewer
    than ``clip_frames`` frames are left.
    """

    fps: float = 4.0
    clip_frames: int = 8
    stride: int | None = None  # frames between clip starts; None: clip_frames (no overlap)
    image: ImagePreprocessing = field(default_factory=ImagePreprocessing)

    def __post_init__(self) -> None:
        positive("video fps", self.fps)
        positive("video clip_frames", self.clip_frames)
        stride = self.clip_frames if self.stride is None else self.stride
        object.__setattr__(self, "stride", stride)
        positive("video stride", stride)
        if stride > self.clip_frames:
            raise ConfigError(
                f"video stride {stride} exceeds clip_frames {self.clip_frames}: the frames "
                "between clips would belong to none; sample fewer frames with a lower fps instead")
        if isinstance(self.image, dict):
            object.__setattr__(self, "image", ImagePreprocessing(**self.image))


Preprocessing = TextPreprocessing | ImagePreprocessing | AudioPreprocessing | VideoPreprocessing
