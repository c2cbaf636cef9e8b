"""Per-tensor statistics, computed in bounded memory (chunks of a flattened tensor)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

CHUNK_ELEMENTS = 1 << 22  # 4 Mi values -> 16 MiB of float32 at a time


class TensorStats(NamedTuple):
    """Summary of one tensor's values (dequantized for quantized storage).

    ``std`` is the population standard deviation; ``zero_fraction`` counts exact zeros;
    ``nonfinite`` counts NaN and ±inf, which are left out of the other figures.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    mean: float
    std: float
    min: float
    max: float
    abs_max: float
    zero_fraction: float
    nonfinite: int


def stats_of(name: str, t: torch.Tensor, dtype: str | None = None) -> TensorStats:
    """Statistics of ``t``, accumulated in float64 over chunks (pure function)."""
    flat = t.detach().reshape(-1)
    n = total = sq = 0.0
    lo, hi = math.inf, -math.inf
    zeros = bad = 0
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        c = flat[start : start + CHUNK_ELEMENTS].to(torch.float64)
        finite = torch.isfinite(c)
        bad += int((~finite).sum())
        c = c[finite]
        if c.numel():
            n += c.numel()
            total += float(c.sum())
            sq += float((c * c).sum())
            lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
            zeros += int((c == 0).sum())
    mean = total / n if n else math.nan
    var = max(sq / n - mean * mean, 0.0) if n else math.nan
    return TensorStats(name, tuple(t.shape), dtype or str(t.dtype).removeprefix("torch."),
                       mean, math.sqrt(var), lo if n else math.nan, hi if n else math.nan,
                       max(abs(lo), abs(hi)) if n else math.nan,
                       zeros / flat.numel() if flat.numel() else 0.0, bad)


def _tensors(x: str | os.PathLike[str] | nn.Module) -> Iterator[tuple[str, torch.Tensor, str]]:
    if isinstance(x, nn.Module):
        for name, t in x.state_dict().items():
            yield name, t, str(t.dtype).removeprefix("torch.")
        return
    from .formats import open_weights

    with open_weights(x) as wf:
        for name in wf:
            info = wf.info(name)
            yield name, wf.tensor(name), info.quant or info.dtype


def tensor_stats(x: str | os.PathLike[str] | nn.Module, progress: bool = False
                 ) -> list[TensorStats]:
    """Statistics of every tensor of a weight file or model, one tensor in memory at a time.

    Args:
        x: a path ``ml.open_weights`` reads, or an ``nn.Module``.
        progress: show a progress bar.

    Returns:
        One ``TensorStats`` per tensor, in file order.

    Raises:
        MLMFError: the file cannot be read.
    """
    items = _tensors(x)
    return [stats_of(name, t, kind) for name, t, kind in tqdm(items, disable=not progress,
                                                               desc="tensor stats")]
