"""Image preprocessing: decode (OpenCV), resize (PIL, as Hugging Face's image processors),
center crop, rescale and normalize, cut into ViT patches.

The steps are pure functions on numpy arrays (HWC, RGB, uint8 in, float32 out) so each can
be tested alone; ``preprocess_images`` chains them for a batch. Resizing goes through PIL
on 8-bit RGB because that is what ``CLIPImageProcessor`` and ``ViTImageProcessor`` run: the
same filter with the same support and the same 8-bit rounding, so a pretrained encoder sees
the pixels it was trained on. Patches are flattened in (row, column, channel) order and
listed row by row, so patch ``i`` sits at grid cell ``divmod(i, grid[1])``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch

from ...errors import ConfigError, MLMFError
from .config import ImagePreprocessing

T = TypeVar("T")
R = TypeVar("R")
ImageInput = str | os.PathLike[str] | bytes | np.ndarray


class ImageBatch(NamedTuple):
    """A preprocessed batch.

    pixels: (B, 3, S, S) float32, normalized.
    patches: (B, N, P*P*3) float32, N = (S/P)^2, patch i at grid cell divmod(i, grid[1]).
    grid: (rows, columns) of the patch grid.
    """

    pixels: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]


def decode_image(source: ImageInput) -> np.ndarray:
    """Read an image file (or its bytes) into an RGB uint8 array (H, W, 3).

    Args:
        source: a path, the encoded bytes (PNG, JPEG, ...), or an array already decoded
            (H, W, 3) RGB or (H, W) grey, returned as RGB uint8.

    Raises:
        MLMFError: missing file, bytes OpenCV cannot decode, or an array of the wrong shape.
    """
    import cv2

    if isinstance(source, np.ndarray):
        return _as_rgb(source, "<array>")
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise MLMFError(f"cannot read the image: {exc.strerror or exc}", name) from None
    if not data:
        raise MLMFError("expected an encoded image (PNG, JPEG, ...), found an empty file", name)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise MLMFError(
            f"expected an image OpenCV can decode (PNG, JPEG, BMP, ...), found {len(data)} "
            f"bytes starting {data[:8]!r}", name)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _as_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise MLMFError(f"expected an image array (H, W, 3) or (H, W), found shape {arr.shape}",
                        name)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MLMFError(f"expected a non-empty image, found shape {arr.shape}", name)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def resize_size(height: int, width: int, cfg: ImagePreprocessing) -> tuple[int, int]:
    """(height, width) after ``cfg``'s resize, with Hugging Face's rounding.

    "shortest_edge": the short side becomes ``resize_size`` (default ``size``) and the long
    side ``int(resize_size * long / short)``, truncated as ``get_resize_output_image_size``
    does (rounding it would shift the center crop by a pixel). "stretch": both sides
    ``resize_size`` (default ``size``). "none": as they are.

    Example:
        >>> resize_size(333, 500, ImagePreprocessing(224, 16))  # 224 * 500 / 333 = 336.3
        (224, 336)
        >>> resize_size(333, 500, ImagePreprocessing(224, 16, resize="stretch"))
        (224, 224)
    """
    target = cfg.resize_size or cfg.size
    if cfg.resize == "stretch":
        return target, target
    if cfg.resize == "none":
        return height, width
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(target * long / short)
    return (new_long, target) if width <= height else (target, new_long)


def resize(image: np.ndarray, cfg: ImagePreprocessing) -> np.ndarray:
    """Resize an RGB uint8 image (H, W, 3) as ``cfg`` says, with PIL's ``cfg.resample`` filter.

    Raises:
        MLMFError: an empty image.
    """
    from PIL import Image

    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise MLMFError(f"cannot resize an empty image of shape {image.shape}")
    new_h, new_w = resize_size(h, w, cfg)
    if (new_h, new_w) == (h, w):
        return image
    if min(new_h, new_w) < 1:
        raise MLMFError(f"a {h}x{w} image would be resized to {new_h}x{new_w}; its aspect "
                        "ratio is too extreme for this size")
    filt = Image.Resampling[cfg.resample.upper()]
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=filt))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` square, as Hugging Face's ``center_crop``.

    Offsets are rounded down; where the image is smaller than ``size`` it is first padded
    with zeros, centred (the extra row or column of an odd margin goes before).
    """
    h, w = image.shape[:2]
    if h < size or w < size:
        big_h, big_w = max(h, size), max(w, size)
        padded = np.zeros((big_h, big_w, *image.shape[2:]), image.dtype)
        top, left = -(-(big_h - h) // 2), -(-(big_w - w) // 2)  # ceil, as transformers
        padded[top:top + h, left:left + w] = image
        image, h, w = padded, big_h, big_w
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
              rescale: float = 1 / 255) -> np.ndarray:
    """uint8 RGB -> float32 ``(x * rescale - mean) / std`` per channel."""
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    return ((image.astype(np.float64) * rescale).astype(np.float32) - m) / s


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, P*P*C): non-overlapping patches, row by row.

    Each patch is flattened in (row, column, channel) order.

    Raises:
        ConfigError: ``patch`` does not divide H and W.
    """
    b, c, h, w = pixels.shape
    if patch < 1 or h % patch or w % patch:
        raise ConfigError(f"patch {patch} must divide the image size {h}x{w}")
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch)  # (B, C, gh, P, gw, P)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, P, P, C)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``patchify``: (B, N, P*P*C) -> (B, C, H, W)."""
    b, n, d = patches.shape
    gh, gw = grid
    c = d // (patch * patch)
    if n != gh * gw or c * patch * patch != d:
        raise ConfigError(f"{n} patches of size {d} do not fit a {gh}x{gw} grid of {patch}px")
    x = patches.reshape(b, gh, gw, patch, patch, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, gh * patch, gw * patch)


def thread_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]`` on up to one thread per core (OpenCV, soxr and soundfile
    release the GIL while they work); errors propagate unchanged, in order."""
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def prepare_image(source: ImageInput, cfg: ImagePreprocessing) -> np.ndarray:
    """One image: decode, resize, center crop, rescale, normalize -> (S, S, 3) float32."""
    image = decode_image(source)
    image = center_crop(resize(image, cfg), cfg.size)
    return normalize(image, cfg.mean, cfg.std, cfg.rescale)


def preprocess_images(sources: Sequence[ImageInput], cfg: ImagePreprocessing) -> ImageBatch:
    """A batch of images through the whole pipeline.

    Args:
        sources: paths, encoded bytes or RGB arrays (sizes may differ).
        cfg: output size, patch size, mean and std.

    Returns:
        ``ImageBatch`` with pixels (B, 3, S, S), patches (B, N, P*P*3) and the grid.

    Raises:
        MLMFError: an empty batch or an unreadable image (the message names it).

    Example:
        >>> batch = preprocess_images(["cat.jpg"], ImagePreprocessing(224, 16))  # doctest: +SKIP
        >>> batch.patches.shape  # doctest: +SKIP
        torch.Size([1, 196, 768])
    """
    if isinstance(sources, (str, bytes, os.PathLike, np.ndarray)):
        sources = [sources]
    if len(sources) == 0:
        raise MLMFError("expected at least one image, found an empty batch")
    arrays = np.stack(thread_map(lambda s: prepare_image(s, cfg), sources))  # (B, S, S, 3)
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    return ImageBatch(pixels, patchify(pixels, cfg.patch), cfg.grid)


def denormalize(pixels: torch.Tensor, cfg: ImagePreprocessing) -> np.ndarray:
    """(3, S, S) normalized -> (S, S, 3) floats in [0, 1], for showing."""
    m = torch.tensor(cfg.mean).view(3, 1, 1)
    s = torch.tensor(cfg.std).view(3, 1, 1)
    return ((pixels * s + m) / (255 * cfg.rescale)).clamp(0, 1).permute(1, 2, 0).numpy()
