"""``load_shard(mode="mmap")``: pieces are views of the file's mapping, never copies.

A slice along dim 0 is one byte range (a contiguous view); a slice along dim 1 of a
row-major weight is one range per row (a strided view, as ``narrow`` gives). Checked
against safetensors' own slices and against /proc/self/maps: the bytes a piece shows
are the file's bytes at the piece's offsets, seen through the mapping.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_distributed_plan import STACK_RULES, gpt2_state, make_llama, make_stack
from torch import nn

import mlmf_lab as ml
from mlmf_lab.distributed.read import RangeReader, page_ranges
from mlmf_lab.errors import FormatError

D = ml.distributed
PAGE = 4096


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama(tmp_path_factory.mktemp("llama") / "llama.safetensors")


def _file_at(address: int) -> tuple[str, int]:
    """(mapped file, offset in it) of ``address``, from /proc/self/maps; ('', -1) if none."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return (fields[5] if len(fields) > 5 else ""), int(fields[2], 16) + address - lo
    return "", -1


def _last_byte(t: torch.Tensor) -> int:
    """Address of the last byte of ``t``'s extent (for a strided view: its last row's end)."""
    reach = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return t.data_ptr() + (reach + 1) * t.element_size() - 1


def _file_slice(f: object, name: str, dim: int | None, spans: tuple[tuple[int, int], ...]
                ) -> torch.Tensor:
    """safetensors' own slice of ``name`` (``get_slice``), for one span along ``dim``."""
    sl = f.get_slice(name)  # type: ignore[attr-defined]
    if dim is None:
        return sl[:]
    (a, b), index = spans[0], [slice(None)] * len(sl.get_shape())
    index[dim] = slice(a, b)
    return sl[tuple(index)]


@pytest.mark.parametrize("n", [2, 4])
def test_tensor_plan_mmap_pieces_are_the_file_slices_without_a_copy(llama: Path, n: int) -> None:
    plan = D.plan(llama, "tensor", world_size=n)
    strided = 0
    with safe_open(llama, "pt") as f:
        for rank in range(n):
            shard = D.load_shard(llama, plan, rank=rank, world_size=n, mode="mmap")
            assert shard.bytes_read == plan.bytes_per_rank()[rank]  # counted: the share
            for p in plan.for_rank(rank):
                t, info = shard[p.name], plan.info(p.name)
                expect = _file_slice(f, p.name, p.dim, p.spans)
                assert t.dtype == expect.dtype and torch.equal(t, expect), p.name
                # no copy: the first and last byte are the file's, through one mapping
                start = info.offset
                if p.dim is not None:
                    start += p.spans[0][0] * math.prod(info.shape[p.dim + 1:]) * t.element_size()
                assert _file_at(t.data_ptr()) == (str(llama), start), p.name
                end_file, end = _file_at(_last_byte(t))
                assert end_file == str(llama) and end < info.offset + info.nbytes
                # the storage is the piece's extent in the file, nothing more
                assert t.untyped_storage().nbytes() == end - start + 1
                if p.dim == 1:  # a column slice of [out, in]: rows of the full tensor apart
                    assert not t.is_contiguous() and t.stride() == (info.shape[1], 1)
                    strided += 1
                else:
                    assert t.is_contiguous()
    assert strided == 32 * n  # o_proj and down_proj of 16 layers, on every rank


def test_mmap_pieces_are_private_copy_on_write(llama: Path, tmp_path: Path) -> None:
    plan = D.plan(llama, "tensor", world_size=2)
    mapped = D.load_shard(llama, plan, rank=1, world_size=2, mode="mmap")
    again = D.load_shard(llama, plan, rank=1, world_size=2, mode="mmap")
    vocab, row = "model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"
    before = llama.read_bytes()
    mapped[vocab].zero_()  # copy-on-write: the file never changes
    mapped[row].zero_()  # the strided view writes its own columns, no neighbour's
    assert llama.read_bytes() == before
    assert torch.equal(again[row], ml.load_state_dict(llama)[row][:, 80:])
    gpt2 = tmp_path / "gpt2.safetensors"
    ml.save_state_dict(gpt2_state(), gpt2)
    fused = D.load_shard(gpt2, D.plan(gpt2, "tensor", world_size=2), rank=1, world_size=2,
                         mode="mmap")
    qkv = fused["transformer.h.0.attn.c_attn.weight"]  # 3 spans: no single view, read
    assert _file_at(qkv.data_ptr())[0] != str(gpt2) and qkv.is_contiguous()


def test_strided_pieces_load_into_modules_and_run(tmp_path: Path) -> None:
    path, stack = make_stack(tmp_path / "stack.safetensors")
    plan = D.plan(path, "tensor", world_size=2, rules=STACK_RULES, arch=None)
    for rank in range(2):
        mapped = D.load_shard(path, plan, rank=rank, world_size=2, mode="mmap")
        direct = D.load_shard(path, plan, rank=rank, world_size=2)
        w = mapped["stack.1.weight"]  # row-parallel: this rank's input features
        assert not w.is_contiguous() and torch.equal(w, direct["stack.1.weight"])
        local = nn.Linear(w.shape[1], w.shape[0])
        local.load_state_dict({"weight": w, "bias": mapped["stack.1.bias"]})  # copy_
        assert torch.equal(local.weight, direct["stack.1.weight"])
        x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(rank))
        torch.testing.assert_close(nn.functional.linear(x, w), local(x) - local.bias)
    # every rank's strided column slices rebuild the layer's output (the all-reduce, by hand)
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(5))
    partial = []
    for rank in range(2):
        shard = D.load_shard(path, plan, rank=rank, world_size=2, mode="mmap")
        (a, b), = shard.piece("stack.1.weight").spans
        partial.append(x[:, a:b] @ shard["stack.1.weight"].T)
    layer = stack[1]
    assert isinstance(layer, nn.Linear)
    torch.testing.assert_close(partial[0] + partial[1] + layer.bias, layer(x).detach())


def test_page_ranges_cover_exactly_the_pages_of_every_run() -> None:
    rng = random.Random(0)
    for _ in range(300):
        length = rng.randint(1, 3 * PAGE)
        stride = length + rng.choice([0, rng.randint(1, 3 * PAGE)])
        runs, offset = rng.randint(1, 40), rng.randint(0, 5 * PAGE)
        got = page_ranges(offset, length, runs, stride, PAGE)
        pages = {k for r in range(runs) for k in range((offset + r * stride) // PAGE,
                                                       (offset + r * stride + length - 1)
                                                       // PAGE + 1)}
        covered = {k for a, b in got for k in range(a // PAGE, b // PAGE)}
        assert covered == pages, (offset, length, runs, stride)
        assert all(a % PAGE == 0 == b % PAGE and a < b for a, b in got)
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(got, got[1:], strict=False))  # merged
    assert page_ranges(0, 0, 5, 10, PAGE) == []


def test_a_strided_view_past_the_end_names_the_file(llama: Path) -> None:
    size = llama.stat().st_size
    with RangeReader(mapped=True) as reader:
        rows = reader.view(str(llama), 8, 16, runs=3, stride=64)
        assert rows.numel() == 2 * 64 + 16 and reader.bytes_read == 3 * 16
        with pytest.raises(FormatError, match=rf"llama.safetensors: truncated: expected "
                                              rf"{math.prod((2, 1000)) + 16} bytes at offset "
                                              rf"{size - 100}, the file holds {size}"):
            reader.view(str(llama), size - 100, 16, runs=3, stride=1000)
