"""How one tensor differs from another: the maths of the weights level, as pure functions.

``moments(a, b)`` walks two same-shape tensors in flat chunks of float64 and keeps only
sums (Σa², Σb², Σab, ΣΔ², Σ|a|, Σ|b|, Σ|Δ|, max|Δ|, how many elements differ), so a tensor
of any size costs a chunk of memory beyond its own. Every metric the lab reports for a
pair of tensors is a function of those sums (``TensorChange.of``), and a layer's metrics are
the same functions of its tensors' summed moments (``Moments.__add__``), so per-tensor and
per-layer numbers agree by construction. ``spectrum(delta, k)`` gives the leading singular
values of a 2-D ΔW and how many of them hold 99% of its energy (what an adapter changed).
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import torch

from ..tables import fields_dict, fields_row

CHUNK = 1 << 20  # elements per float64 chunk: 8 MiB for each side
ENERGY = 0.99  # the share of ‖ΔW‖²_F that the "energy rank" must reach
_BLOCK = re.compile(r"(?:^|\.)(?:layers?|h|blk|blocks?)\.(\d+)\.")


class Moments(NamedTuple):
    """Sums over the elements of two tensors a (reference) and b; they add up over tensors."""

    numel: int = 0
    sq_a: float = 0.0  # Σa²
    sq_b: float = 0.0  # Σb²
    dot: float = 0.0  # Σab
    sq_d: float = 0.0  # Σ(b - a)², summed from the differences themselves (no cancellation)
    abs_a: float = 0.0  # Σ|a|
    abs_b: float = 0.0  # Σ|b|
    abs_d: float = 0.0  # Σ|b - a|
    max_d: float = 0.0  # max |b - a|
    changed: int = 0  # elements with b != a

    def __add__(self, other: object) -> Moments:  # type: ignore[override]
        if not isinstance(other, Moments):
            return NotImplemented
        merged: list[Any] = [max(x, y) if k == "max_d" else x + y
                             for k, x, y in zip(Moments._fields, self, other, strict=True)]
        return Moments(*merged)


def moments(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> Moments:
    """The ``Moments`` of two same-shape tensors, in float64, ``chunk`` elements at a time.

    Raises:
        ValueError: the shapes differ (an internal misuse: callers list reshaped tensors apart).
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x_all, y_all = a.detach().reshape(-1), b.detach().reshape(-1)
    acc = [0.0] * 7
    max_d, changed = 0.0, 0
    norm = torch.linalg.vector_norm
    for start in range(0, x_all.numel(), chunk):
        x = x_all[start:start + chunk].to("cpu", torch.float64)
        y = y_all[start:start + chunk].to("cpu", torch.float64)
        d = y - x
        for i, v in enumerate((torch.dot(x, x), torch.dot(y, y), torch.dot(x, y),
                               torch.dot(d, d), norm(x, 1), norm(y, 1), norm(d, 1))):
            acc[i] += float(v)
        max_d = max(max_d, float(norm(d, math.inf)))
        changed += int(torch.count_nonzero(d))
    sq_a, sq_b, dot, sq_d, abs_a, abs_b, abs_d = acc
    return Moments(x_all.numel(), sq_a, sq_b, dot, sq_d, abs_a, abs_b, abs_d, max_d, changed)


class TensorChange(NamedTuple):
    """How tensor b differs from tensor a (or a layer's tensors from the other's)."""

    rel_change: float  # ‖b - a‖ / ‖a‖; inf when a is all zeros and b is not
    cosine: float  # <a, b> / (‖a‖ ‖b‖); 1.0 when both are zero, nan when only one is
    max_abs: float  # max |b - a|
    sigma: float  # Σ|b - a| / (Σ|a| + Σ|b|): 0 for equal tensors, 1 for b = -a
    changed: float  # share of elements that differ at all

    @classmethod
    def of(cls, m: Moments) -> TensorChange:
        """The metrics of summed ``Moments`` (one tensor, or all of a layer's)."""
        if m.numel == 0:
            return cls(0.0, 1.0, 0.0, 0.0, 0.0)
        na, nb, nd = math.sqrt(m.sq_a), math.sqrt(m.sq_b), math.sqrt(m.sq_d)
        rel = nd / na if na else (0.0 if nd == 0 else math.inf)
        if na and nb:
            cos = max(-1.0, min(1.0, m.dot / (na * nb)))
        else:
            cos = 1.0 if na == nb else math.nan
        total = m.abs_a + m.abs_b
        sigma = m.abs_d / total if total else 0.0
        return cls(rel, cos, m.max_d, sigma, m.changed / m.numel)

    def as_dict(self) -> dict[str, Any]:
        """JSON data; NaN and inf are None."""
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


def tensor_change(a: torch.Tensor, b: torch.Tensor) -> TensorChange:
    """Relative L2 change, cosine, max |Δ|, σ and share changed of two same-shape tensors.

    Args:
        a: the reference tensor.
        b: the other tensor, same shape (any float/int dtype; computed in float64).

    Returns:
        A ``TensorChange``.

    Raises:
        ValueError: the shapes differ.

    Example:
        >>> tensor_change(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 5.0])).rel_change
        0.2
    """
    return TensorChange.of(moments(a, b))


class Spectrum(NamedTuple):
    """The leading singular values of a 2-D ΔW and the rank that holds most of its energy."""

    values: tuple[float, ...]  # σ1 >= σ2 >= ... (at most k of them)
    top_share: float  # Σ σᵢ² over those values / ‖ΔW‖²_F
    energy_rank: int | None  # fewest σᵢ holding ENERGY of ‖ΔW‖²_F; None: more than k


def spectrum(delta: torch.Tensor, k: int = 16, frobenius_sq: float | None = None,
             seed: int = 0) -> Spectrum:
    """Leading singular values of a 2-D ``delta`` (exact for small matrices, else a
    randomized range finder with two power iterations, which is exact for low-rank ΔW such
    as a merged LoRA adapter).

    Args:
        delta: the difference b - a, 2-D.
        k: how many singular values to keep.
        frobenius_sq: ‖ΔW‖²_F if already known (from ``Moments.sq_d``).
        seed: for the random range finder (results do not depend on the global RNG).

    Example:
        >>> spectrum(torch.outer(torch.ones(4), torch.arange(3.0))).energy_rank
        1
    """
    d = delta.detach().to("cpu", torch.float32)
    total = float(d.double().square().sum()) if frobenius_sq is None else frobenius_sq
    if d.ndim != 2 or total == 0.0:
        return Spectrum((), 1.0 if total == 0.0 else 0.0, 0 if total == 0.0 else None)
    k = max(1, min(k, *d.shape))
    if min(d.shape) <= 4 * k + 8:
        s = torch.linalg.svdvals(d.double())[:k]
    else:
        gen = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(d @ torch.randn(d.shape[1], k + 8, generator=gen)).Q
        for _ in range(2):  # power iterations sharpen a slowly decaying spectrum
            q = torch.linalg.qr(d @ (d.T @ q)).Q
        s = torch.linalg.svdvals((q.T @ d).double())[:k]
    energy = s.square().cumsum(0) / total
    reached = torch.nonzero(energy >= ENERGY - 1e-12)
    rank = int(reached[0]) + 1 if reached.numel() else None
    return Spectrum(tuple(float(v) for v in s), min(1.0, float(energy[-1])), rank)


def histogram(t: torch.Tensor, bins: int = 48,
              chunk: int = CHUNK) -> tuple[list[int], float, float]:
    """Counts of ``t``'s values in ``bins`` equal bins between its min and max (both included).

    Returns:
        (counts, low, high); all counts in the first bin when every value is the same.
    """
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return [0] * bins, 0.0, 0.0
    lo = min(float(flat[i:i + chunk].min()) for i in range(0, flat.numel(), chunk))
    hi = max(float(flat[i:i + chunk].max()) for i in range(0, flat.numel(), chunk))
    counts = torch.zeros(bins, dtype=torch.float64)
    top = hi if hi > lo else lo + 1.0
    for i in range(0, flat.numel(), chunk):
        # histc's last bin includes its upper edge, as numpy.histogram's does
        counts += torch.histc(flat[i:i + chunk].to(torch.float32), bins, lo, top).double()
    return [int(c) for c in counts], lo, hi


def layer_of(name: str) -> str:
    """The block a tensor belongs to: ``"layer 3"`` for ``encoder.layer.3.…``,
    ``model.layers.3.…``, ``blk.3.…`` or ``transformer.h.3.…``; else ``"other"``.

    Example:
        >>> layer_of("model.layers.11.mlp.up_proj.weight"), layer_of("lm_head.weight")
        ('layer 11', 'other')
    """
    m = _BLOCK.search(name)
    return f"layer {int(m.group(1))}" if m else "other"


__all__ = ["Moments", "Spectrum", "TensorChange", "histogram", "layer_of", "moments",
           "spectrum", "tensor_change"]
