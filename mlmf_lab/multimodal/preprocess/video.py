"""Video preprocessing with OpenCV: frames read at a target fps, clips of T frames every
``stride`` frames, each frame through the image pipeline.

A video shorter than one clip gives one clip padded by repeating its last frame; the
frame mask says which frames are real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from ...errors import ConfigError, MLMFError
from ..config import VideoPreprocessing
from .image import patchify, prepare_image


class VideoInfo(NamedTuple):
    """What the container says: frames, rate, size."""

    frames: int
    fps: float
    width: int
    height: int


class VideoBatch(NamedTuple):
    """The clips of one video.

    pixels: (C, T, 3, S, S) float32 normalized frames. patches: (C, T, N, P*P*3).
    frame_mask: (C, T) bool, False on padding frames. times: (C, T) seconds of each frame.
    grid: patch grid (rows, columns).
    """

    pixels: torch.Tensor
    patches: torch.Tensor
    frame_mask: torch.Tensor
    times: torch.Tensor
    grid: tuple[int, int]


def _open(path: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    import cv2

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise MLMFError("cannot read the video: no such file", name)
    cap = cv2.VideoCapture(name)
    if not cap.isOpened():
        cap.release()
        raise MLMFError("expected a video OpenCV can open (AVI/MJPG, MP4/mp4v, ...), "
                        "found a file it cannot read", name)
    return cap


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, frame rate and size from the container header."""
    import cv2

    cap = _open(path)
    try:
        return VideoInfo(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS)),
                         int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()


def sample_indices(n_frames: int, src_fps: float, fps: float) -> np.ndarray:
    """Source frame indices that sample a video of ``n_frames`` at ``fps``.

    Frame k of the output is the source frame shown at time k / fps (nearest earlier
    frame). When ``fps`` >= ``src_fps`` every source frame is kept once.
    """
    if n_frames <= 0:
        return np.zeros(0, np.int64)
    if src_fps <= 0 or fps <= 0:
        raise ConfigError(f"frame rates must be > 0, found source {src_fps}, target {fps}")
    if fps >= src_fps:
        return np.arange(n_frames)
    duration = n_frames / src_fps
    times = np.arange(0.0, duration - 1e-9, 1.0 / fps)
    return np.unique(np.minimum(np.floor(times * src_fps + 1e-6).astype(np.int64), n_frames - 1))


def clip_starts(n: int, clip_frames: int, stride: int) -> list[int]:
    """Start indices of clips of ``clip_frames`` every ``stride`` frames (at least one clip).

    The last partial window is kept only when no full clip fits.
    """
    if clip_frames < 1 or stride < 1:
        raise ConfigError(f"clip_frames and stride must be >= 1, found {clip_frames}, {stride}")
    if n <= clip_frames:
        return [0]
    return list(range(0, n - clip_frames + 1, stride))


def read_frames(path: str | os.PathLike[str], fps: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode the frames that sample the video at ``fps``: (RGB frames, times in seconds).

    Only the chosen frames are decoded (the others are grabbed and skipped).

    Raises:
        MLMFError: the file cannot be opened or holds no decodable frame.
    """
    frames, times = [], []
    for frame, t in _iter_frames(path, fps):
        frames.append(frame)
        times.append(t)
    if not frames:
        raise MLMFError("expected at least one decodable frame, found none", path)
    return frames, np.asarray(times)


def _iter_frames(path: str | os.PathLike[str], fps: float) -> Iterator[tuple[np.ndarray, float]]:
    import cv2

    cap = _open(path)
    try:
        src_fps = float(cap.get(cv2.CAP_PROP_FPS))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if src_fps <= 0 or not np.isfinite(src_fps):
            raise MLMFError(f"the container gives no frame rate (found {src_fps})", path)
        wanted = set(sample_indices(count, src_fps, fps).tolist()) if count > 0 else None
        step = max(1.0, src_fps / fps)
        i, next_t = 0, 0.0
        while cap.grab():
            take = (i in wanted) if wanted is not None else (i + 1e-6 >= next_t)
            if take:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    yield np.ascontiguousarray(bgr[:, :, ::-1]), i / src_fps
                next_t += step
            i += 1
    finally:
        cap.release()


def preprocess_video(path: str | os.PathLike[str], cfg: VideoPreprocessing) -> VideoBatch:
    """One video -> its clips, every frame through the image pipeline.

    Args:
        path: a video file OpenCV reads (AVI with MJPG, MP4 with mp4v, ...).
        cfg: target fps, frames per clip, stride between clips, image settings.

    Returns:
        ``VideoBatch`` with (clips, T, ...) tensors and a frame mask.

    Raises:
        MLMFError: unreadable or empty video.

    Example:
        >>> cfg = VideoPreprocessing(fps=4, clip_frames=8)
        >>> clips = preprocess_video("walk.avi", cfg)  # doctest: +SKIP
    """
    # decoding stays on this thread; the image pipeline runs beside it on the others
    with ThreadPoolExecutor(max(1, (os.cpu_count() or 1) - 1)) as pool:
        pending, stamps = [], []
        for frame, stamp in _iter_frames(path, cfg.fps):
            pending.append(pool.submit(prepare_image, frame, cfg.image))
            stamps.append(stamp)
        if not pending:
            raise MLMFError("expected at least one decodable frame, found none", path)
        prepared = np.stack([f.result() for f in pending])  # (F, S, S, 3)
    frames, times = prepared, np.asarray(stamps)
    starts = clip_starts(len(frames), cfg.clip_frames, cfg.stride)
    idx = np.asarray(starts)[:, None] + np.arange(cfg.clip_frames)[None, :]  # (C, T)
    mask = idx < len(frames)
    idx = np.minimum(idx, len(frames) - 1)
    pixels = torch.from_numpy(prepared[idx]).permute(0, 1, 4, 2, 3).contiguous()  # (C,T,3,S,S)
    c, t = idx.shape
    patches = patchify(pixels.flatten(0, 1), cfg.image.patch).unflatten(0, (c, t))
    return VideoBatch(pixels, patches, torch.from_numpy(mask),
                      torch.from_numpy(times[idx]).float(), cfg.image.grid)


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float) -> None:
    """Write RGB uint8 frames (F, H, W, 3) as MJPG (.avi) or mp4v (.mp4), for tests and demos.

    Raises:
        MLMFError: another suffix, or OpenCV could not open a writer.
    """
    import cv2

    name = os.fspath(path)
    codecs = {".avi": "MJPG", ".mp4": "mp4v"}
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in codecs:
        raise MLMFError(f"expected a .avi or .mp4 target, found {suffix!r}", name)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise MLMFError(f"expected uint8 frames (F, H, W, 3), found {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    out = cv2.VideoWriter(name, cv2.VideoWriter.fourcc(*codecs[suffix]), fps, (w, h))
    if not out.isOpened():
        raise MLMFError(f"OpenCV cannot write {codecs[suffix]} video here", name)
    try:
        for f in frames:
            out.write(np.ascontiguousarray(f[:, :, ::-1]))
    finally:
        out.release()
