"""A plan's byte ranges (``distributed/spans.py``) against naive references: the element
indices each piece holds, counted on an ``arange`` of the tensor, and the data offsets in
the safetensors header. Plain data only: no figure is drawn here."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from test_distributed_plan import gpt2_state, llama_state

import mlmf_lab as ml
from mlmf_lab.distributed.plans import Piece, ShardPlan
from mlmf_lab.distributed.spans import ByteSpan, byte_spans, tensor_offsets
from mlmf_lab.formats import TensorInfo


def held(info: TensorInfo, piece: Piece) -> list[torch.Tensor]:
    """Element indices (row-major) of each span of ``piece``, from an arange of the tensor."""
    idx = torch.arange(info.numel).view(info.shape)
    if piece.dim is None:
        return [idx.flatten()]
    return [idx.narrow(piece.dim, a, b - a).flatten() for a, b in piece.spans]


def check(plan: ShardPlan) -> list[ByteSpan]:
    spans = byte_spans(plan)
    offsets = tensor_offsets(plan)
    infos = {i.name: i for i in plan.tensors}
    it = iter(spans)
    for piece in plan.pieces:  # one span per piece span, in piece order
        info = infos[piece.name]
        size = info.nbytes // max(info.numel, 1)
        for elems in held(info, piece):
            sp = next(it)
            assert (sp.rank, sp.name, sp.role, sp.primary) == (
                piece.rank, piece.name, piece.role, piece.primary)
            assert sp.stop - sp.start == elems.numel() * size  # the share of the bytes held
            if piece.dim in (None, 0):  # contiguous bytes: the range is exact
                assert sp.start == offsets[info.name] + int(elems.min()) * size
                assert sp.stop == offsets[info.name] + (int(elems.max()) + 1) * size
    assert next(it, None) is None
    for info in plan.tensors:  # the primary copies tile each tensor exactly once
        mine = sorted((s.start, s.stop) for s in spans if s.name == info.name and s.primary)
        assert mine[0][0] == offsets[info.name] and mine[-1][1] == offsets[info.name] + info.nbytes
        assert all(a[1] == b[0] for a, b in zip(mine, mine[1:], strict=False))
    per_rank = [sum(s.stop - s.start for s in spans if s.rank == r)
                for r in range(plan.world_size)]
    assert per_rank == plan.bytes_per_rank()
    return spans


def header_offsets(path: Path) -> dict[str, int]:
    """Where each tensor's data starts in a safetensors file, read from its JSON header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def test_hand_made_plan_rows_columns_fused_and_replicas() -> None:
    w = TensorInfo("w", (6, 4), "float32", 96, "b.safetensors", offset=0)
    qkv = TensorInfo("qkv", (4, 6), "float32", 96, "a.safetensors", offset=500)
    norm = TensorInfo("norm", (4,), "float32", 16, "a.safetensors", offset=100)
    pieces = (
        Piece("w", 0, 0, ((0, 2),), 32, "row", True), Piece("w", 1, 0, ((2, 6),), 64, "row", True),
        # a fused projection: each rank takes a slice of q, of k and of v (dim 1)
        Piece("qkv", 0, 1, ((0, 1), (2, 3), (4, 5)), 48, "column", True),
        Piece("qkv", 1, 1, ((1, 2), (3, 4), (5, 6)), 48, "column", True),
        Piece("norm", 0, None, (), 16, "replicate", True),
        Piece("norm", 1, None, (), 16, "replicate", False))
    plan = ShardPlan("a.safetensors", "tensor", 2, (w, qkv, norm), pieces)
    # disk order: a.safetensors (norm at 100, qkv at 500), then b.safetensors (w)
    assert tensor_offsets(plan) == {"norm": 0, "qkv": 16, "w": 112}
    spans = check(plan)
    assert [(s.rank, s.name, s.start, s.stop) for s in spans] == [
        (0, "w", 112, 144), (1, "w", 144, 208),
        (0, "qkv", 16, 32), (0, "qkv", 48, 64), (0, "qkv", 80, 96),
        (1, "qkv", 32, 48), (1, "qkv", 64, 80), (1, "qkv", 96, 112),
        (0, "norm", 0, 16), (1, "norm", 0, 16)]
    assert json.loads(json.dumps([s.as_dict() for s in spans]))[-1] == {
        "rank": 1, "name": "norm", "role": "replicate", "primary": False, "start": 0, "stop": 16}


@pytest.mark.parametrize(("state", "strategy", "world"), [
    (gpt2_state, "tensor", 2), (llama_state, "tensor", 4), (llama_state, "layers", 3),
    (gpt2_state, "replicate", 2)])
def test_real_plans(tmp_path: Path, state, strategy: str, world: int) -> None:
    path = tmp_path / "m.safetensors"
    arch = "gpt2" if state is gpt2_state else "llama"
    ml.save_state_dict(state(), path, metadata={"model_type": arch})
    plan = ml.distributed.plan(path, strategy, world_size=world)
    data_start = min(header_offsets(path).values())
    assert tensor_offsets(plan) == {k: v - data_start for k, v in header_offsets(path).items()}
    spans = check(plan)
    assert spans == ml.distributed.byte_spans(plan)
    if strategy == "tensor":
        assert {s.role for s in spans} >= {"column", "row"}
    if strategy == "tensor" and arch == "gpt2":  # c_attn: q, k and v cut apart, 3 spans each
        assert max(len(p.spans) for p in plan.pieces) == 3
