"""Preprocessing throughput per modality: mlmf_lab's pipelines against straightforward
baselines, in the same run.

- image: JPEG bytes (640x480) -> 224x224 normalized ViT patches. Ours: OpenCV decode +
  area resize + crop + numpy normalize + torch patchify, batched. Baseline: PIL decode +
  bilinear resize + crop + numpy normalize + numpy patchify, one image at a time.
- audio: 44.1 kHz stereo WAV files -> 16 kHz mono log-mel (64 bands, 25 ms / 10 ms).
  Ours: librosa load with soxr resampling, then torch framing + FFT + mel on the padded
  batch. Baseline: soundfile + scipy ``resample_poly`` + numpy framing/``rfft`` + the same
  mel matrix, one clip at a time.
- video: a 30 fps MJPG AVI (640x480) sampled at 5 fps into 224x224 patches. Ours: OpenCV
  grabs every frame and decodes only the sampled ones. Baseline: ``cap.read()`` decodes
  every frame, keeps every 6th, PIL resize as above.

Run: ``.venv/bin/python benchmarks/bench_multimodal.py [--quick]``. Medians of repeated
runs after a warm-up, 2 threads for torch and OpenCV.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, publish, table  # noqa: E402

from mlmf_lab.multimodal.preprocess import (  # noqa: E402
    preprocess_audio,
    preprocess_images,
    preprocess_video,
    write_video,
)
from mlmf_lab.multimodal.preprocess.audio import mel_filters  # noqa: E402
from mlmf_lab.multimodal.preprocess.config import (  # noqa: E402
    AudioPreprocessing,
    ImagePreprocessing,
    VideoPreprocessing,
)

IMG = ImagePreprocessing(224, 16)


def scene(rng: np.random.Generator, h: int = 480, w: int = 640) -> np.ndarray:
    """A photo-like frame: smooth gradient, some shapes, sensor noise."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    img = img + rng.normal(0, 8, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(6):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(20, 90)),
                   c, -1)
    return img


# ---------------------------------------------------------------- image baseline (PIL)


def pil_pipeline(data: bytes) -> np.ndarray:
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    s = IMG.size / min(w, h)
    im = im.resize((max(IMG.size, round(w * s)), max(IMG.size, round(h * s))),
                   Image.Resampling.BILINEAR)
    w, h = im.size
    left, top = (w - IMG.size) // 2, (h - IMG.size) // 2
    im = im.crop((left, top, left + IMG.size, top + IMG.size))
    x = (np.asarray(im, np.float32) / 255 - np.array(IMG.mean, np.float32)) / np.array(
        IMG.std, np.float32)
    p, g = IMG.patch, IMG.size // IMG.patch
    return x.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, p * p * 3)


def bench_images(quick: bool) -> list[list[str]]:
    rng = np.random.default_rng(0)
    n = 8 if quick else 64
    jpegs = [cv2.imencode(".jpg", scene(rng)[:, :, ::-1])[1].tobytes() for _ in range(n)]
    ours = median_time(lambda: preprocess_images(jpegs, IMG), 2 if quick else 5)
    base = median_time(lambda: np.stack([pil_pipeline(j) for j in jpegs]), 2 if quick else 5)
    check = preprocess_images(jpegs[:1], IMG).patches[0].numpy()
    diff = float(np.abs(check - pil_pipeline(jpegs[0])).mean())
    return [["image (640x480 JPEG -> 224² patches)", f"{n / ours:.0f} images/s",
             f"{n / base:.0f} images/s (PIL)", f"{base / ours:.2f}x",
             f"mean |ours - PIL| = {diff:.3f} (normalized units)"]]


# ---------------------------------------------------------------- audio baseline (numpy)


def numpy_log_mel(path: Path, cfg: AudioPreprocessing, fb: np.ndarray) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    g = np.gcd(sr, cfg.sample_rate)
    y = resample_poly(y, cfg.sample_rate // g, sr // g).astype(np.float32)
    y = np.pad(y, cfg.n_fft // 2)
    n = 1 + (len(y) - cfg.n_fft) // cfg.hop
    frames = np.lib.stride_tricks.as_strided(
        y, (n, cfg.n_fft), (y.strides[0] * cfg.hop, y.strides[0]))
    window = np.hanning(cfg.n_fft + 1)[:-1].astype(np.float32)
    spec = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = fb @ spec.T
    return 10 * np.log10(np.maximum(mel, 1e-10))


def bench_audio(quick: bool, tmp: Path) -> list[list[str]]:
    import soundfile as sf

    rng = np.random.default_rng(1)
    n, seconds, sr = (4, 2.0, 44100) if quick else (16, 10.0, 44100)
    paths = []
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        y = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t * (1 + 0.1 * t))
        stereo = np.stack([y, y * 0.8], 1) + rng.normal(0, 0.01, (len(t), 2))
        p = tmp / f"clip{i}.wav"
        sf.write(p, stereo, sr)
        paths.append(p)
    cfg = AudioPreprocessing(sample_rate=16000, n_fft=400, hop=160, n_mels=64, normalize=False)
    fb = mel_filters(cfg).numpy()
    ours = median_time(lambda: preprocess_audio(paths, cfg), 2 if quick else 5)
    base = median_time(lambda: [numpy_log_mel(p, cfg, fb) for p in paths], 2 if quick else 5)
    a = preprocess_audio(paths[:1], cfg).mel[0].numpy()
    b = numpy_log_mel(paths[0], cfg, fb)
    m = min(a.shape[1], b.shape[1])
    diff = float(np.abs(a[:, :m] - b[:, :m]).mean())
    total = n * seconds
    return [["audio (44.1 kHz stereo WAV -> 16 kHz log-mel)", f"{total / ours:.0f} s audio/s",
             f"{total / base:.0f} s audio/s (numpy STFT)", f"{base / ours:.2f}x",
             f"mean |ours - numpy| = {diff:.3f} dB"]]


# ---------------------------------------------------------------- video baseline


def baseline_video(path: Path, keep_every: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    out, i = [], 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % keep_every == 0:
            out.append(pil_pipeline(cv2.imencode(".bmp", bgr)[1].tobytes()))
        i += 1
    cap.release()
    return np.stack(out)


def bench_video(quick: bool, tmp: Path) -> list[list[str]]:
    rng = np.random.default_rng(2)
    seconds = 2 if quick else 10
    base_frame = scene(rng)
    frames = np.stack([np.roll(base_frame, 8 * i, axis=1) for i in range(30 * seconds)])
    path = tmp / "clip.avi"
    write_video(path, frames, fps=30)
    cfg = VideoPreprocessing(fps=5, clip_frames=8, stride=8, image=IMG)
    ours = median_time(lambda: preprocess_video(path, cfg), 2 if quick else 3)
    base = median_time(lambda: baseline_video(path, 6), 2 if quick else 3)
    kept = 5 * seconds
    return [["video (30 fps MJPG 640x480 -> 5 fps 224² patches)",
             f"{kept / ours:.0f} frames/s ({seconds / ours:.1f} s video/s)",
             f"{kept / base:.0f} frames/s ({seconds / base:.1f} s video/s)",
             f"{base / ours:.2f}x", "baseline decodes every frame, keeps every 6th"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = bench_images(args.quick) + bench_audio(args.quick, tmp) + bench_video(
            args.quick, tmp)
    body = table(["modality", "mlmf_lab", "baseline", "speed-up", "note"], rows)
    how = ("Preprocessing throughput on 2 threads (torch and OpenCV); medians of repeated "
           "runs after a warm-up; both sides measured in the same process, one after the "
           "other. Other processes shared the 2 cores during the run.")
    publish("multimodal", "Multi-modal preprocessing throughput", how, body, args.quick)


if __name__ == "__main__":
    main()
