"""Tensor-parallel forward of a stack of linears, on the slices a ``tensor`` plan loaded.

Megatron's pairing: a column-parallel linear leaves each rank with a slice of the
features (no communication); the row-parallel linear after it turns slices into partial
sums that one all-reduce adds up. A column layer with no row layer after it ends with
an all-gather. Inference only (the collectives are not differentiated).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .load import Shard
from .plans import Span

Activation = Callable[[torch.Tensor], torch.Tensor]


def take_spans(x: torch.Tensor, spans: Sequence[Span], dim: int = -1) -> torch.Tensor:
    """The concatenation of ``x``'s ``[a, b)`` ranges along ``dim``."""
    return torch.cat([x.narrow(dim, a, b - a) for a, b in spans], dim=dim)


def gather_features(local: torch.Tensor, spans_per_rank: Sequence[Sequence[Span]],
                    size: int) -> torch.Tensor:
    """All-gather feature slices (last dim) from every rank into the full ``size`` features."""
    width = max(sum(b - a for a, b in s) for s in spans_per_rank)
    padded = F.pad(local, (0, width - local.shape[-1])).contiguous()
    parts = [torch.empty_like(padded) for _ in spans_per_rank]
    dist.all_gather(parts, padded)
    full = local.new_empty(*local.shape[:-1], size)
    for part, spans in zip(parts, spans_per_rank, strict=True):
        at = 0
        for a, b in spans:
            full[..., a:b] = part[..., at:at + b - a]
            at += b - a
    return full


def column_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Column-parallel: full input, this rank's output features.   x (*, in) -> (*, out/N)"""
    return F.linear(x, w, b)


def row_linear(x_local: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Row-parallel: this rank's input features -> partial sums, all-reduced, bias added once."""
    y = F.linear(x_local, w)  # (*, out), a partial sum over this rank's input features
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(y)
    return y if b is None else y + b


def tp_linear_stack(
    x: torch.Tensor, shard: Shard, layers: Sequence[str], activation: Activation = torch.relu
) -> torch.Tensor:
    """Run ``x`` through the ``nn.Linear`` layers named ``layers`` (``name.weight``,
    optional ``name.bias``), each split as the shard's plan says; every rank gets the
    full output, equal to the unsharded stack's. Collective: all ranks call it.

    Args:
        x: input (*, in_features of the first layer), the same on every rank.
        shard: from ``load_shard`` with a ``tensor`` (or ``replicate``) plan.
        layers: module names in order, e.g. ``["mlp.up_proj", "mlp.down_proj"]``.
        activation: applied between layers (not after the last).

    Raises:
        ConfigError: a layer this rank holds no part of, or a split that is not by rows
            or columns of ``[out, in]`` weights.
    """
    h = x
    # while h is a column slice: (this rank's spans, every rank's spans, full feature count)
    sliced: tuple[tuple[Span, ...], list[tuple[Span, ...]], int] | None = None
    for k, name in enumerate(layers):
        wname = f"{name}.weight"
        w, piece = shard[wname], shard.piece(wname)
        bias = shard.tensors.get(f"{name}.bias")
        if piece.dim == 1:  # row-parallel: needs this rank's input features
            if sliced is None:
                h = take_spans(h, piece.spans)
            elif sliced[0] != piece.spans:
                h = take_spans(gather_features(h, sliced[1], sliced[2]), piece.spans)
            h, sliced = row_linear(h, w, bias), None
        elif piece.dim in (None, 0):
            if sliced is not None:  # a whole or column layer needs the full input
                h, sliced = gather_features(h, sliced[1], sliced[2]), None
            if piece.dim is None:
                h = F.linear(h, w, bias)
            else:
                if bias is not None and shard.piece(f"{name}.bias").dim is None:
                    bias = take_spans(bias, piece.spans, 0)
                h = column_linear(h, w, bias)
                every = [plan_piece_spans(shard, wname, r) for r in range(shard.world_size)]
                sliced = (piece.spans, every, shard.plan.info(wname).shape[0])
        else:
            raise ConfigError(f"{wname} is split along dim {piece.dim}; tp_linear_stack handles "
                              "nn.Linear weights [out, in] split by rows (0) or columns (1)")
        if k < len(layers) - 1:
            h = activation(h)
    if sliced is not None:
        h = gather_features(h, sliced[1], sliced[2])
    return h


def plan_piece_spans(shard: Shard, name: str, rank: int) -> tuple[Span, ...]:
    p = shard.plan.piece(name, rank)
    if p is None or p.dim is None:
        raise ConfigError(f"rank {rank} holds no column slice of {name!r}", shard.plan.source)
    return p.spans


class TensorParallelStack(nn.Module):
    """``nn.Module`` shell over ``tp_linear_stack`` (inference)."""

    def __init__(self, shard: Shard, layers: Sequence[str], activation: Activation = torch.relu):
        super().__init__()
        self.shard, self.layers, self.activation = shard, list(layers), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tp_linear_stack(x, self.shard, self.layers, self.activation)
