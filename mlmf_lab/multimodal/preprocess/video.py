"""Video preprocessing with OpenCV: frames read at a target fps, clips of T frames every
``stride`` frames, each frame through the image pipeline.

Sampling follows the frames' decoded timestamps (``FramePicker``), so a variable-rate video
is sampled at the times it shows, and the frame-count arithmetic (``sample_indices``) is the
same rule run on a constant rate. Every sampled frame lands in a clip: the last clip is
padded by repeating its last frame when fewer than T frames are left; the frame mask says
which frames are real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from ...errors import ConfigError, MLMFError
from .config import VideoPreprocessing
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


EPS = 1e-4  # seconds: containers round timestamps to the millisecond


class FramePicker:
    """Online choice of the frames that sample a stream at ``fps``.

    For each time ``t0 + k / fps`` (``t0``: the first frame's time) the frame shown then is
    chosen: the last frame whose timestamp is at or before it; a frame is chosen at most
    once (when ``fps`` >= the source rate every frame is kept once). Frames arrive in order
    through ``offer(t)``, which returns the earlier frames now known to be chosen; the last
    frame counts as shown for one nominal frame interval. A timestamp that does not increase
    (a container without times) is replaced by the previous one plus the nominal interval.

    Example:
        >>> picker, chosen = FramePicker(src_fps=30.0, fps=10.0), []
        >>> for i in range(8):
        ...     chosen += picker.offer(i / 30)
        >>> chosen + picker.finish()
        [0, 3, 6]
    """

    def __init__(self, src_fps: float, fps: float) -> None:
        if not (src_fps > 0 and fps > 0 and np.isfinite(src_fps)):
            raise ConfigError(f"frame rates must be > 0, found source {src_fps}, target {fps}")
        self.step, self.fps = 1.0 / src_fps, fps
        self.k, self.count = 0, 0
        self.t0: float | None = None
        self.last_t = 0.0
        self.candidate: int | None = None  # the last frame at or before the next time
        self.times: dict[int, float] = {}  # timestamp of each frame offered

    def target(self) -> float:
        return (self.t0 or 0.0) + self.k / self.fps

    def offer(self, t: float) -> list[int]:
        """Frame number ``count`` is shown from time ``t`` (seconds); returns the frames
        chosen now, in order."""
        i = self.count
        self.count += 1
        if self.t0 is None:
            self.t0 = t
        elif not t > self.last_t:
            t = self.last_t + self.step
        self.last_t = self.times[i] = t
        emit: list[int] = []
        if t > self.target() + EPS:
            if self.candidate is not None:  # it was the last frame at or before the target
                emit.append(self.candidate)
            while self.target() < t - EPS:  # later times before t would repeat that frame
                self.k += 1
        self.candidate = i
        return emit

    def finish(self) -> list[int]:
        """The last frame, if it is still shown at the next sampling time."""
        last, self.candidate = self.candidate, None
        shown = last is not None and self.target() < self.last_t + self.step - EPS
        return [last] if shown and last is not None else []


def sample_indices(n_frames: int, src_fps: float, fps: float) -> np.ndarray:
    """Frame indices that sample a constant-rate video of ``n_frames`` at ``fps``: frame k of
    the output is the frame shown at time k / fps (``FramePicker`` on times i / src_fps).

    Example:
        >>> sample_indices(10, 30.0, 12.0).tolist()  # 30 -> 12 fps: times 0, 1/12, 2/12, ...
        [0, 2, 5, 7]
    """
    if n_frames <= 0:
        return np.zeros(0, np.int64)
    picker, chosen = FramePicker(src_fps, fps), []
    for i in range(n_frames):
        chosen += picker.offer(i / src_fps)
    return np.asarray(chosen + picker.finish(), np.int64)


def clip_starts(n: int, clip_frames: int, stride: int) -> list[int]:
    """Start indices of clips of ``clip_frames`` every ``stride`` frames, until a clip
    reaches the last frame (that clip may run past the end: it is padded).

    Example:
        >>> clip_starts(12, 4, 3), clip_starts(10, 4, 3), clip_starts(3, 4, 2)
        ([0, 3, 6, 9], [0, 3, 6], [0])
    """
    if clip_frames < 1 or stride < 1:
        raise ConfigError(f"clip_frames and stride must be >= 1, found {clip_frames}, {stride}")
    if stride > clip_frames:
        raise ConfigError(f"stride {stride} > clip_frames {clip_frames} would leave frames "
                          "between clips out of every clip")
    starts = [0]
    while starts[-1] + clip_frames < n:
        starts.append(starts[-1] + stride)
    return starts


def read_frames(path: str | os.PathLike[str], fps: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Decode the frames that sample the video at ``fps``: (RGB frames, times in seconds).

    Times are the container's decoded timestamps, and the frames are chosen by them
    (``FramePicker``), so a variable-rate video is sampled at the times it shows.

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
    """The chosen frames as they become known. Every frame is retrieved (whether it is
    chosen is known only once the next one's time is read, and by then OpenCV can no longer
    return it: ``grab`` has decoded it already, ``retrieve`` only converts), but only the
    chosen ones are turned into RGB arrays."""
    import cv2

    cap = _open(path)
    try:
        src_fps = float(cap.get(cv2.CAP_PROP_FPS))
        if src_fps <= 0 or not np.isfinite(src_fps):
            raise MLMFError(f"the container gives no frame rate (found {src_fps})", path)
        picker = FramePicker(src_fps, fps)
        last: tuple[int, np.ndarray] | None = None
        while cap.grab():
            for j in picker.offer(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0):
                if last is not None and last[0] == j:
                    yield np.ascontiguousarray(last[1][:, :, ::-1]), picker.times[j]
            ok, bgr = cap.retrieve()
            last = (picker.count - 1, bgr) if ok and bgr is not None else None
        for j in picker.finish():
            if last is not None and last[0] == j:
                yield np.ascontiguousarray(last[1][:, :, ::-1]), picker.times[j]
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
    starts = clip_starts(len(frames), cfg.clip_frames, cfg.stride or cfg.clip_frames)
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
