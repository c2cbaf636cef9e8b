"""Preprocessing throughput per modality: mlmf_lab's pipelines against transformers'
processors (the reference they reproduce), in the same run.

- image: JPEG bytes (640x480) -> CLIP's 224x224 input (bicubic shortest-edge resize, center
  crop, CLIP's mean/std). Ours: ``preprocess_images`` with the settings that
  ``image_preprocessing`` reads from ``CLIPImageProcessor().to_dict()``, decoding and
  resizing on 2 threads, patchified. Peer: PIL decode + ``CLIPImageProcessor`` on the batch.
- audio: 10 s 44.1 kHz stereo WAV files -> Whisper's 80-mel log features (30 s windows).
  Ours: ``preprocess_audio`` with the settings read from ``WhisperFeatureExtractor``'s
  dict (soxr resampling, torch STFT on the batch). Peer: ``librosa.load(sr=16000)`` (soxr)
  + ``WhisperFeatureExtractor`` (its numpy STFT) on the batch.
- video: a 30 fps MJPG AVI (640x480) sampled at 5 fps into CLIP's 224x224 input. Ours:
  ``preprocess_video`` decodes every frame too (OpenCV's ``grab`` decodes), converts only
  the sampled ones and runs the image pipeline beside decoding on the other core. Peer:
  OpenCV ``cap.read()`` on every frame, keeps every 6th, ``CLIPImageProcessor`` on them.

Each row also gives the largest difference between the two outputs. Run:
``.venv/bin/python benchmarks/bench_multimodal.py [--quick]``; medians of repeated runs after
a warm-up, 2 threads for torch and OpenCV.
"""

from __future__ import annotations

import argparse
import io
import os
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
from mlmf_lab.multimodal.preprocess.config import VideoPreprocessing  # noqa: E402
from mlmf_lab.multimodal.processors import (  # noqa: E402
    audio_preprocessing,
    image_preprocessing,
)


def clip_processor():  # type: ignore[no-untyped-def]
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor()


IMG = image_preprocessing(clip_processor().to_dict(), 16, Path("CLIPImageProcessor"))


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


def peer_images(proc, jpegs: list[bytes]) -> np.ndarray:  # type: ignore[no-untyped-def]
    from PIL import Image

    images = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs]
    return proc(images=images, return_tensors="np")["pixel_values"]


def bench_images(quick: bool) -> list[list[str]]:
    rng = np.random.default_rng(0)
    n = 8 if quick else 64
    jpegs = [cv2.imencode(".jpg", scene(rng)[:, :, ::-1])[1].tobytes() for _ in range(n)]
    proc = clip_processor()
    ours = median_time(lambda: preprocess_images(jpegs, IMG), 2 if quick else 5)
    base = median_time(lambda: peer_images(proc, jpegs), 2 if quick else 5)
    diff = float(np.abs(preprocess_images(jpegs, IMG).pixels.numpy()
                        - peer_images(proc, jpegs)).max())
    return [["image (640x480 JPEG -> CLIP 224² input)", f"{n / ours:.0f} images/s",
             f"{n / base:.0f} images/s (CLIPImageProcessor)", f"{base / ours:.2f}x",
             f"max |ours - peer| = {diff:.2g} (normalized units)"]]


def peer_audio(fe, paths: list[Path]) -> np.ndarray:  # type: ignore[no-untyped-def]
    import librosa

    waves = [librosa.load(p, sr=fe.sampling_rate, mono=True)[0] for p in paths]
    return fe(waves, sampling_rate=fe.sampling_rate, return_tensors="np")["input_features"]


def bench_audio(quick: bool, tmp: Path) -> list[list[str]]:
    import soundfile as sf
    from transformers import WhisperFeatureExtractor

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
    fe = WhisperFeatureExtractor()
    cfg = audio_preprocessing(fe.to_dict(), Path("WhisperFeatureExtractor"))
    ours = median_time(lambda: preprocess_audio(paths, cfg), 2 if quick else 5)
    base = median_time(lambda: peer_audio(fe, paths), 2 if quick else 5)
    diff = float(np.abs(preprocess_audio(paths, cfg).mel.numpy() - peer_audio(fe, paths)).max())
    total = n * seconds
    return [["audio (44.1 kHz stereo WAV -> Whisper 80-mel features)",
             f"{total / ours:.0f} s audio/s",
             f"{total / base:.0f} s audio/s (librosa + WhisperFeatureExtractor)",
             f"{base / ours:.2f}x", f"max |ours - peer| = {diff:.2g}"]]


def peer_video(proc, path: Path, keep_every: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    cap = cv2.VideoCapture(str(path))
    kept, i = [], 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % keep_every == 0:
            kept.append(np.ascontiguousarray(bgr[:, :, ::-1]))
        i += 1
    cap.release()
    return proc(images=kept, return_tensors="np")["pixel_values"]


def bench_video(quick: bool, tmp: Path) -> list[list[str]]:
    rng = np.random.default_rng(2)
    seconds = 2 if quick else 10
    base_frame = scene(rng)
    frames = np.stack([np.roll(base_frame, 8 * i, axis=1) for i in range(30 * seconds)])
    path = tmp / "clip.avi"
    write_video(path, frames, fps=30)
    cfg = VideoPreprocessing(fps=5, clip_frames=8, stride=8, image=IMG)
    proc = clip_processor()
    ours = median_time(lambda: preprocess_video(path, cfg), 2 if quick else 3)
    base = median_time(lambda: peer_video(proc, path, 6), 2 if quick else 3)
    kept = 5 * seconds
    return [["video (30 fps MJPG 640x480 -> 5 fps CLIP 224² input)",
             f"{kept / ours:.0f} frames/s ({seconds / ours:.1f} s video/s)",
             f"{kept / base:.0f} frames/s ({seconds / base:.1f} s video/s)",
             f"{base / ours:.2f}x", "both decode every frame; the peer keeps every 6th"]]


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
    body = table(["modality", "mlmf_lab", "transformers (peer)", "speed-up", "agreement"],
                 rows)
    how = ("Preprocessing throughput against transformers' processors (CLIPImageProcessor, "
           "WhisperFeatureExtractor) on the same inputs, 2 threads for torch and OpenCV; "
           "medians of repeated runs after a warm-up, both sides in the same process, one "
           "after the other. The agreement column is the largest difference between the "
           f"two outputs. Load average (1 min) at the start: {LOAD_AT_START:.2f}.")
    publish("multimodal", "Multi-modal preprocessing against transformers' processors", how,
            body, args.quick)


LOAD_AT_START = os.getloadavg()[0]

if __name__ == "__main__":
    main()
