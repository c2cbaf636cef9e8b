"""Per-tensor statistics, computed in bounded memory (chunks of a flattened tensor)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import MLMFError
from ..formats.base import dtype_name
from ..progress import Progress, bar
from ..tables import Column, fields_dict, fields_row

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

    def as_dict(self) -> dict[str, Any]:
        """JSON data; the figures of a tensor with no finite value are None."""
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


STATS_COLUMNS = (Column("name", "tensor", code=True), Column("mean", fmt=".4g"),
                 Column("std", fmt=".4g"), Column("min", fmt=".4g"), Column("max", fmt=".4g"),
                 Column("zero_fraction", "zeros", ".1%"))


def stats_of(name: str, t: torch.Tensor, dtype: str | None = None) -> TensorStats:
    """Statistics of ``t``, accumulated in float64 over chunks (pure function)."""
    flat = t.detach().reshape(-1)
    n = total = sq = 0.0
    lo, hi = math.inf, -math.inf
    zeros = bad = 0
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        c = flat[start : start + CHUNK_ELEMENTS].to(torch.float64)
        finite = torch.isfinite(c)
        if not bool(finite.all()):  # rare: only then pay for a masked copy
            bad += int((~finite).sum())
            c = c[finite]
        if c.numel():
            n += c.numel()
            total += float(c.sum())
            sq += float(c.dot(c))
            c_lo, c_hi = c.aminmax()
            lo, hi = min(lo, float(c_lo)), max(hi, float(c_hi))
            zeros += int((c == 0).sum())
    mean = total / n if n else math.nan
    var = max(sq / n - mean * mean, 0.0) if n else math.nan
    return TensorStats(name, tuple(t.shape), dtype or dtype_name(t.dtype),
                       mean, math.sqrt(var), lo if n else math.nan, hi if n else math.nan,
                       max(abs(lo), abs(hi)) if n else math.nan,
                       zeros / flat.numel() if flat.numel() else 0.0, bad)


def _tensors(x: str | os.PathLike[str] | nn.Module, names: Sequence[str] | None,
             progress: Progress) -> Iterator[tuple[str, torch.Tensor, str]]:
    if isinstance(x, nn.Module):
        state = x.state_dict()
        for name in bar(names if names is not None else list(state), progress=progress,
                        desc="tensor stats"):
            if name not in state:
                raise MLMFError(f"the model has no tensor {name!r}")
            yield name, state[name], dtype_name(state[name].dtype)
        return
    from ..formats import open_weights

    with open_weights(x) as wf:
        for name in bar(names if names is not None else list(wf), progress=progress,
                        desc="tensor stats"):
            info = wf.info(name)  # names the file when the tensor is missing
            yield name, wf.tensor(name), info.quant or info.dtype


def tensor_stats(x: str | os.PathLike[str] | nn.Module, names: Sequence[str] | None = None,
                 progress: Progress = False) -> list[TensorStats]:
    """Statistics of the tensors of a weight file or model, one tensor in memory at a time.

    Args:
        x: a path ``ml.open_weights`` reads, or an ``nn.Module``.
        names: only these tensors (default: all, in file order).
        progress: a progress bar, or a function told ``(tensors done, tensors)``.

    Returns:
        One ``TensorStats`` per tensor.

    Raises:
        MLMFError: the file cannot be read, or a name is not in it.
    """
    return [stats_of(name, t, kind) for name, t, kind in _tensors(x, names, progress)]
