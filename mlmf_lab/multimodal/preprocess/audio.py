"""Audio preprocessing: load and resample with librosa (soxr), mono, Hann-windowed frames,
(log-)mel spectrogram, scaled as the config's ``features`` say.

The spectrogram maths are pure torch functions (``frame_signal``, ``power_spectrum``,
``log_mel``, ``whisper_scale``) that run on a whole padded batch at once: ``"log_mel"``
matches ``librosa.feature.melspectrogram`` (centered frames, zero padding, periodic Hann
window, Slaney mel filters), ``"whisper"`` matches ``WhisperFeatureExtractor`` (the same
with reflect padding, the last frame dropped, log10 floored 8 below the clip's maximum).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import MLMFError
from .config import AudioPreprocessing
from .image import thread_map

# a path, or a waveform with its sample rate: (samples,) or (channels, samples)
AudioInput = str | os.PathLike[str] | tuple[np.ndarray, int]


class AudioBatch(NamedTuple):
    """A batch of (log-)mel spectrograms.

    mel: (B, n_mels, T) float32; "log_mel" features are zero on padding frames, "whisper"
        features hold the padded silence there (as Whisper's encoder expects).
    mask: (B, T) bool, True on frames inside the clip.
    seconds: (B,) duration of each clip after resampling (and cutting).
    """

    mel: torch.Tensor
    mask: torch.Tensor
    seconds: torch.Tensor


def load_audio(source: AudioInput, cfg: AudioPreprocessing) -> np.ndarray:
    """Decode, mix to mono and resample to ``cfg.sample_rate`` (soxr) -> float32 (samples,).

    Raises:
        MLMFError: a file librosa cannot decode, an empty or non-finite signal.
    """
    import librosa

    if isinstance(source, tuple):
        y, sr = source
        name = "<array>"
        y = np.asarray(y, dtype=np.float32)
        if y.ndim not in (1, 2):
            raise MLMFError(f"expected a waveform (samples,) or (channels, samples), "
                            f"found shape {y.shape}", name)
        if int(sr) <= 0:
            raise MLMFError(f"expected a positive sample rate, found {sr}", name)
        y = librosa.to_mono(y) if y.ndim == 2 else y
        if y.size and int(sr) != cfg.sample_rate:
            y = librosa.resample(y, orig_sr=int(sr), target_sr=cfg.sample_rate,
                                 res_type="soxr_hq")
    else:
        name = os.fspath(source)
        if not os.path.isfile(name):
            raise MLMFError("cannot read the audio: no such file", name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # librosa's audioread fallback warns first
                y, _ = librosa.load(name, sr=cfg.sample_rate, mono=True, res_type="soxr_hq",
                                    duration=cfg.max_seconds)
        except Exception as exc:  # soundfile, audioread and soxr each raise their own types
            raise MLMFError(f"expected an audio file librosa can decode (WAV, FLAC, OGG, ...), "
                            f"found something it cannot read ({type(exc).__name__})",
                            name) from None
    if cfg.max_seconds is not None:
        y = y[: int(round(cfg.max_seconds * cfg.sample_rate))]
    if y.size == 0:
        raise MLMFError("expected some audio samples, found an empty signal", name)
    if not np.isfinite(y).all():
        raise MLMFError("the signal holds NaN or infinite samples", name)
    return np.ascontiguousarray(y, dtype=np.float32)


def frame_signal(y: torch.Tensor, n_fft: int, hop: int, pad_mode: str = "constant"
                 ) -> torch.Tensor:
    """(B, S) -> (B, T, n_fft) frames centred on ``t * hop``, T = 1 + S // hop.

    ``pad_mode``: "constant" (zeros, librosa's default) or "reflect" (``torch.stft``'s, which
    Whisper uses) for the half frame before the first sample and after the last.
    """
    if pad_mode == "reflect" and y.shape[-1] <= n_fft // 2:
        raise MLMFError(f"reflect padding needs more than {n_fft // 2} samples, "
                        f"found {y.shape[-1]}")
    padded = F.pad(y[:, None], (n_fft // 2, n_fft // 2), mode=pad_mode)[:, 0]
    return padded.unfold(-1, n_fft, hop)


def hann(n: int) -> torch.Tensor:
    """Periodic Hann window (the one STFTs use, as ``scipy.signal.get_window('hann', n)``)."""
    return torch.hann_window(n, periodic=True, dtype=torch.float32)


def power_spectrum(y: torch.Tensor, n_fft: int, hop: int,
                   pad_mode: str = "constant") -> torch.Tensor:
    """(B, S) -> (B, n_fft // 2 + 1, T): |rfft(window * frame)|^2."""
    frames = frame_signal(y, n_fft, hop, pad_mode) * hann(n_fft)  # (B, T, n_fft)
    return torch.fft.rfft(frames, dim=-1).abs().pow(2).transpose(1, 2)


def mel_filters(cfg: AudioPreprocessing) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) Slaney-normalised mel filterbank (librosa's default, and
    the one ``WhisperFeatureExtractor`` builds)."""
    import librosa

    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                             fmin=cfg.fmin, fmax=cfg.fmax)
    return torch.from_numpy(fb.astype(np.float32))


def log_mel(y: torch.Tensor, cfg: AudioPreprocessing,
            filters: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S) waveforms -> (B, n_mels, T) mel power, log-scaled when ``cfg.log``.

    ``"log_mel"`` features: ``10 log10`` (dB, floor -100 dB), T = 1 + S // hop.
    ``"whisper"`` features: ``log10`` (floor -10), reflect padding, T = S // hop.
    """
    fb = mel_filters(cfg) if filters is None else filters
    whisper = cfg.features == "whisper"
    spec = power_spectrum(y, cfg.n_fft, cfg.hop, "reflect" if whisper else "constant")
    if whisper:
        spec = spec[..., :-1]  # WhisperFeatureExtractor drops the last frame
    mel = torch.matmul(fb, spec)
    if not cfg.log:
        return mel
    logged = torch.log10(mel.clamp_min(1e-10))
    return logged if whisper else 10.0 * logged


def normalize_frames(mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per clip over its valid frames; padding frames set to 0."""
    m = mask[:, None, :].to(mel.dtype)  # (B, 1, T)
    count = m.sum(dim=(1, 2), keepdim=True) * mel.shape[1]
    mean = (mel * m).sum(dim=(1, 2), keepdim=True) / count
    var = (((mel - mean) * m) ** 2).sum(dim=(1, 2), keepdim=True) / count
    return (mel - mean) / var.clamp_min(1e-10).sqrt() * m


def whisper_scale(log10_mel: torch.Tensor) -> torch.Tensor:
    """Whisper's normalization of a (B, n_mels, T) log10 mel: floor each clip at its maximum
    minus 8 (80 dB of range), then ``(x + 4) / 4``. Padding frames are part of the clip, as
    in ``WhisperFeatureExtractor`` (they hold the silence it pads with)."""
    top = log10_mel.amax(dim=(1, 2), keepdim=True)
    return (torch.maximum(log10_mel, top - 8.0) + 4.0) / 4.0


def preprocess_audio(sources: Sequence[AudioInput] | AudioInput,
                     cfg: AudioPreprocessing) -> AudioBatch:
    """A batch of clips through the whole pipeline, padded to the longest (or to
    ``cfg.chunk_seconds``) with a frame mask.

    Args:
        sources: paths, or ``(waveform, sample_rate)`` tuples.
        cfg: sample rate, frame length and hop, mel bands, log, normalization.

    Returns:
        ``AudioBatch`` (mel (B, n_mels, T), mask (B, T), seconds (B,)).

    Raises:
        MLMFError: an empty batch, an unreadable file, a clip shorter than one frame.

    Example:
        >>> batch = preprocess_audio(["speech.wav"], AudioPreprocessing())  # doctest: +SKIP
    """
    if isinstance(sources, (str, os.PathLike, tuple)):
        sources = [sources]
    if len(sources) == 0:
        raise MLMFError("expected at least one audio clip, found an empty batch")
    waves = thread_map(lambda s: load_audio(s, cfg), sources)
    for s, w in zip(sources, waves, strict=True):
        if w.size < cfg.n_fft // 2 + 1:
            raise MLMFError(
                f"expected at least {cfg.n_fft // 2 + 1} samples (half a frame at "
                f"{cfg.sample_rate} Hz), found {w.size}",
                None if isinstance(s, tuple) else s)
    chunk = cfg.chunk_samples
    if chunk is not None:
        waves = [w[:chunk] for w in waves]
    longest = chunk if chunk is not None else max(w.size for w in waves)
    y = torch.zeros(len(waves), longest)
    for i, w in enumerate(waves):
        y[i, : w.size] = torch.from_numpy(w)
    mel = log_mel(y, cfg)
    mask = torch.arange(mel.shape[-1])[None, :] < frame_counts(waves, cfg)[:, None]
    if cfg.features == "whisper":
        mel = whisper_scale(mel) if cfg.normalize and cfg.log else mel
    else:
        mel = normalize_frames(mel, mask) if cfg.normalize else mel * mask[:, None, :]
    seconds = torch.tensor([w.size / cfg.sample_rate for w in waves])
    return AudioBatch(mel, mask, seconds)


def frame_counts(waves: Sequence[np.ndarray], cfg: AudioPreprocessing) -> torch.Tensor:
    """(B,) frames of each clip that hold its audio.

    "log_mel": 1 + samples // hop (the frames librosa centres inside the clip).
    "whisper": ceil(samples / hop), the attention mask ``WhisperFeatureExtractor`` returns
    (one frame per hop that starts inside the clip).
    """
    if cfg.features == "whisper":
        return torch.tensor([-(-w.size // cfg.hop) for w in waves])
    return torch.tensor([1 + w.size // cfg.hop for w in waves])
