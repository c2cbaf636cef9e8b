"""Sharding plans and counted reads: single-process checks.

Also holds the tiny-model builders the multi-rank tests import.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hf_tiny import llama_state  # the multi-rank tests import it from here
from safetensors import safe_open
from torch import nn

import mlmf_lab as ml
from mlmf_lab.distributed import plans as P
from mlmf_lab.distributed.load import place
from mlmf_lab.errors import ConfigError, FormatError, MLMFError

D = ml.distributed


# -- tiny real models ------------------------------------------------------------------------
def make_llama(path: Path, layers: int = 16) -> Path:
    ml.save_state_dict(llama_state(layers), path, metadata={"model_type": "llama"})
    return path


def gpt2_state(layers: int = 2, vocab: int = 64, n: int = 32) -> dict[str, torch.Tensor]:
    """Tensors named and shaped as transformers' GPT2LMHeadModel (Conv1D weights [in, out])."""
    g = torch.Generator().manual_seed(3)
    t = {"transformer.wte.weight": torch.randn(vocab, n, generator=g),
         "transformer.wpe.weight": torch.randn(16, n, generator=g)}
    for i in range(layers):
        pre = f"transformer.h.{i}."
        t[pre + "attn.c_attn.weight"] = torch.randn(n, 3 * n, generator=g)
        t[pre + "attn.c_attn.bias"] = torch.randn(3 * n, generator=g)
        t[pre + "attn.c_proj.weight"] = torch.randn(n, n, generator=g)
        t[pre + "attn.c_proj.bias"] = torch.randn(n, generator=g)
        t[pre + "mlp.c_fc.weight"] = torch.randn(n, 4 * n, generator=g)
        t[pre + "mlp.c_fc.bias"] = torch.randn(4 * n, generator=g)
        t[pre + "mlp.c_proj.weight"] = torch.randn(4 * n, n, generator=g)
        t[pre + "mlp.c_proj.bias"] = torch.randn(n, generator=g)
        t[pre + "ln_1.weight"] = torch.ones(n)
    t["transformer.ln_f.weight"] = torch.ones(n)
    return t


def make_stack(path: Path) -> tuple[Path, nn.Sequential]:
    """A stack of linears (column, row, column, row, column) for the tensor-parallel forward."""
    torch.manual_seed(1)
    dims = [24, 40, 24, 36, 24, 10]
    stack = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False)])
    ml.save_state_dict({f"stack.{k}": v for k, v in stack.state_dict().items()}, path)
    return path, stack


STACK_RULES = [(r"stack\.[024]\.", "column"), (r"stack\.[13]\.weight$", "row")]
STACK_LAYERS = [f"stack.{i}" for i in range(5)]


def make_multimodal(path: Path) -> Path:
    """Vision and text towers plus a shared head, modalities declared in the metadata."""
    torch.manual_seed(2)
    t = {}
    for i in range(4):
        t[f"vision.blocks.{i}.weight"] = torch.randn(48, 48)
    for i in range(3):
        t[f"text.layers.{i}.weight"] = torch.randn(32, 32)
    t["head.weight"] = torch.randn(4, 8)
    ml.save_state_dict(t, path, metadata={"modalities": {"vision": ["vision."], "text": ["text."]}})
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama(tmp_path_factory.mktemp("llama") / "llama.safetensors")


def rebuild(path: Path, plan: D.ShardPlan,
            mode: str = "direct") -> tuple[dict[str, torch.Tensor], list[int]]:
    """Load every rank's shard in this process and put the primary pieces back together."""
    full = {i.name: torch.empty(i.shape, dtype=getattr(torch, i.dtype)) for i in plan.tensors}
    counts = []
    for r in range(plan.world_size):
        shard = D.load_shard(path, plan, rank=r, world_size=plan.world_size, mode=mode)
        counts.append(shard.bytes_read)
        for p in plan.for_rank(r):
            assert tuple(shard[p.name].shape) == P.local_shape(plan.info(p.name), p)
            if p.primary:
                place(full[p.name], p, shard[p.name])
    return full, counts


# -- plans -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["direct", "mmap"])
@pytest.mark.parametrize("strategy", ["replicate", "layers", "tensor"])
@pytest.mark.parametrize("n", [2, 4])
def test_every_plan_rebuilds_the_file_and_reads_only_its_share(llama: Path, strategy: str,
                                                               n: int, mode: str) -> None:
    plan = D.plan(llama, strategy, world_size=n)
    full, counts = rebuild(llama, plan, mode)
    ref = ml.load_state_dict(llama)
    assert list(full) == list(ref)
    assert all(torch.equal(full[k], ref[k]) for k in ref)
    assert counts == plan.bytes_per_rank()  # the counting reader read exactly the plan's bytes
    if strategy == "replicate":
        assert counts == [plan.total_bytes] * n
    else:
        assert max(counts) <= plan.total_bytes / n * 1.05, (counts, plan.total_bytes)


def test_plan_reads_no_tensor_data(llama: Path) -> None:
    before = _rchar()
    D.plan(llama, "tensor", world_size=4)
    assert _rchar() - before < 64 * 1024 < os.path.getsize(llama) / 4  # headers only


def test_asking_a_plan_for_a_tensor_it_lacks_names_the_closest(llama: Path) -> None:
    plan = D.plan(llama, "layers", world_size=2)
    assert plan.info("model.norm.weight").shape == (64,)
    with pytest.raises(MLMFError, match=r"llama.safetensors: no tensor named 'model.norm.weigth'; "
                                        r"the plan has 147 tensors \(closest: 'model.norm.weight'"):
        plan.info("model.norm.weigth")


def _rchar() -> int:
    text = Path("/proc/self/io").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("rchar")))


def test_layers_plan_is_contiguous_and_labelled(llama: Path) -> None:
    plan = D.plan(llama, "layers", world_size=4)
    owner = {p.name: p.rank for p in plan.pieces}
    layer_rank = [owner[f"model.layers.{i}.mlp.up_proj.weight"] for i in range(16)]
    assert layer_rank == sorted(layer_rank) and set(layer_rank) == {0, 1, 2, 3}
    assert owner["model.embed_tokens.weight"] == 0 and owner["lm_head.weight"] == 3
    assert plan.labels[0].startswith("model.embed_tokens, model.layers.0-")
    text = str(plan)
    assert "imbalance" in text and text.count("\n") >= 5 and "rank" in plan._repr_html_()


def test_balanced_partition_minimises_the_largest_block() -> None:
    sizes = [5, 1, 1, 1, 1, 1, 5]
    runs = P.balanced_partition(sizes, 3)
    sums = [sum(sizes[a:b]) for a, b in runs]
    assert runs[0][0] == 0 and runs[-1][1] == len(sizes) and max(sums) == 5
    # brute force over every pair of cut points agrees on the optimum
    best = min(max(sum(sizes[:i]), sum(sizes[i:j]), sum(sizes[j:]))
               for i in range(1, 6) for j in range(i + 1, 7))
    assert max(sums) == best
    assert P.balanced_partition([3], 2) == [(0, 1), (1, 1)]


def test_llama_tensor_rules(llama: Path) -> None:
    plan = D.plan(llama, "tensor", world_size=2)
    role = {p.name: (p.role, p.dim) for p in plan.pieces if p.rank == 1}
    assert role["model.layers.0.self_attn.q_proj.weight"] == ("column", 0)
    assert role["model.layers.0.self_attn.o_proj.weight"] == ("row", 1)
    assert role["model.layers.0.mlp.down_proj.weight"] == ("row", 1)
    assert role["model.embed_tokens.weight"] == ("vocab", 0)
    assert role["model.norm.weight"] == ("replicate", None)
    assert "rules: llama" in plan.detail


def test_gpt2_fused_qkv_is_split_per_projection(tmp_path: Path) -> None:
    path = tmp_path / "gpt2.safetensors"
    ml.save_state_dict(gpt2_state(), path)
    plan = D.plan(path, "tensor", world_size=2)
    qkv = plan.piece("transformer.h.0.attn.c_attn.weight", 1)
    assert qkv is not None and qkv.dim == 1 and qkv.spans == ((16, 32), (48, 64), (80, 96))
    proj = plan.piece("transformer.h.0.mlp.c_proj.weight", 0)
    assert proj is not None and (proj.role, proj.dim) == ("row", 0)
    full, _ = rebuild(path, plan)
    ref = ml.load_state_dict(path)
    assert all(torch.equal(full[k], ref[k]) for k in full)
    with safe_open(path, "pt") as f:  # rank 1's q, k and v slices, read independently
        w = f.get_slice("transformer.h.0.attn.c_attn.weight")
        expect = torch.cat([w[:, 16:32], w[:, 48:64], w[:, 80:96]], dim=1)
    shard = D.load_shard(path, plan, rank=1, world_size=2)
    assert torch.equal(shard["transformer.h.0.attn.c_attn.weight"], expect)


def test_gguf_q8_0_reads_only_its_blocks(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = tmp_path / "llama.gguf"
    ml.save_state_dict(llama_state(4, hidden=128, inter=256), path,
                       metadata={"model_type": "llama"}, quant="q8_0")
    ref = ml.load_state_dict(path)
    for strategy, n in (("layers", 2), ("tensor", 2), ("tensor", 4)):
        plan = D.plan(path, strategy, world_size=n)
        full, counts = rebuild(path, plan)
        assert all(torch.equal(full[k], ref[k]) for k in ref)
        assert counts == plan.bytes_per_rank() and max(counts) <= plan.total_bytes / n * 1.05
    # rank 1's half of a row-parallel weight: its own blocks, dequantized by gguf-py itself
    name = "model.layers.2.mlp.down_proj.weight"
    piece = plan.piece(name, 1)
    assert piece is not None and piece.dim == 1 and plan.info(name).quant == "Q8_0"
    rt = next(t for t in GGUFReader(path).tensors if t.name == name)
    expect = torch.from_numpy(np.asarray(dequantize(rt.data, rt.tensor_type)))
    got = D.load_shard(path, plan, rank=1, world_size=4)[name]
    (a, b), = piece.spans
    assert torch.equal(got, expect.reshape(plan.info(name).shape)[:, a:b])


def test_real_minilm_splits_with_bert_rules() -> None:
    path = ml.examples.minilm_path()
    plan = D.plan(path, "tensor", world_size=2)
    assert "rules: bert" in plan.detail
    assert plan.piece("encoder.layer.0.output.dense.weight", 0).role == "row"  # type: ignore[union-attr]
    assert plan.imbalance <= 1.05
    shard = D.load_shard(path, plan, rank=1, world_size=2)
    with safe_open(path, "pt") as f:
        emb = f.get_slice("embeddings.word_embeddings.weight")
        n = emb.get_shape()[0]
        assert torch.equal(shard["embeddings.word_embeddings.weight"], emb[n // 2:])
        out = f.get_slice("encoder.layer.3.output.dense.weight")
        cols = out.get_shape()[1]
        assert torch.equal(shard["encoder.layer.3.output.dense.weight"], out[:, cols // 2:])


def test_user_rules_and_rule_errors(tmp_path: Path) -> None:
    path, _ = make_stack(tmp_path / "stack.safetensors")
    plan = D.plan(path, "tensor", world_size=2, rules=STACK_RULES, arch=None)
    assert plan.piece("stack.1.weight", 0).dim == 1  # type: ignore[union-attr]
    assert plan.piece("stack.1.bias", 0).role == "replicate"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="no tensor-parallel rule matches"):
        D.plan(path, "tensor", world_size=2)
    with pytest.raises(ConfigError, match="unknown role 'diagonal'; supported: column"):
        D.plan(path, "tensor", world_size=2, rules=[("stack", "diagonal")])
    with pytest.raises(ConfigError, match="cannot be cut into 1 part"):
        D.plan(path, "tensor", world_size=64, rules=STACK_RULES, arch=None)
    with pytest.raises(ConfigError, match="unknown strategy 'pipeline'; supported: replicate"):
        D.plan(path, "pipeline", world_size=2)
    with pytest.raises(ConfigError, match="unknown architecture 'bloom'"):
        D.plan(path, "tensor", world_size=2, arch="bloom")


def test_modality_plan_from_metadata(tmp_path: Path) -> None:
    path = make_multimodal(tmp_path / "mm.safetensors")
    plan = D.plan(path, "modality", world_size=2)
    owner = {p.name: p.rank for p in plan.pieces if p.primary}
    assert {owner[f"vision.blocks.{i}.weight"] for i in range(4)} == {0}  # the larger tower
    assert {owner[f"text.layers.{i}.weight"] for i in range(3)} == {1}
    assert [p.rank for p in plan.pieces if p.name == "head.weight"] == [0, 1]  # shared, replicated
    assert plan.labels == ("vision", "text")
    three = D.plan(path, "modality", world_size=3)  # the spare rank helps the heavier tower
    assert {p.rank for p in three.pieces if p.name.startswith("vision")} == {0, 1}
    mine = D.plan(path, "modality", world_size=2, assign={"text": [0], "vision": [1]})
    assert mine.piece("text.layers.0.weight", 0) is not None
    full, _ = rebuild(path, three)
    ref = ml.load_state_dict(path)
    assert all(torch.equal(full[k], ref[k]) for k in ref)
    with pytest.raises(ConfigError, match="assign names modality 'audio'"):
        D.plan(path, "modality", world_size=2, assign={"audio": [0], "text": [1], "vision": [0]})
    plain = tmp_path / "plain.safetensors"
    ml.save_state_dict({"w": torch.ones(2)}, plain)
    with pytest.raises(ConfigError, match="expected a metadata key 'modalities'") as e:
        D.plan(plain, "modality", world_size=2)
    assert str(plain) in str(e.value)


def test_modalities_as_a_list_match_name_parts(tmp_path: Path) -> None:
    path = tmp_path / "list.safetensors"
    ml.save_state_dict({"encoders.audio.w": torch.ones(8), "image_model.w": torch.ones(4),
                        "fuse.w": torch.ones(2)}, path, metadata={"modalities": ["audio", "image"]})
    plan = D.plan(path, "modality", world_size=2)
    assert plan.piece("encoders.audio.w", 0) is not None and plan.piece("image_model.w", 1)


def test_reader_errors_name_the_file(llama: Path, tmp_path: Path) -> None:
    plan = D.plan(llama, "layers", world_size=2)
    other = make_llama(tmp_path / "other.safetensors", layers=2)
    with pytest.raises(MLMFError, match="recompute the plan|no tensor named") as e:
        D.load_shard(other, plan, rank=1, world_size=2)
    assert "other.safetensors" in str(e.value)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(llama.read_bytes()[: os.path.getsize(llama) // 2])
    with pytest.raises(FormatError, match="cut.safetensors"):
        D.load_shard(cut, plan, rank=1, world_size=2)
    with pytest.raises(ConfigError, match="the plan is for 2 ranks, this run has 3"):
        D.load_shard(llama, plan, rank=0, world_size=3)
    with pytest.raises(ConfigError, match="unknown mode 'scatter'"):
        D.load_shard(llama, plan, rank=0, world_size=2, mode="scatter")


def test_plan_figure(llama: Path) -> None:
    plan = D.plan(llama, "tensor", world_size=4)
    fig = ml.plots.plot_shard_plan(plan, bytes_read=plan.bytes_per_rank())
    left, right = fig.axes[:2]
    boxes = sum(len(c.get_paths()) for c in left.collections)
    assert boxes == sum(len(p.spans) or 1 for p in plan.pieces)  # every piece is drawn
    assert len(left.collections) == len({(p.rank, p.role, p.primary) for p in plan.pieces})
    assert [t.get_text() for t in left.get_yticklabels()] == [f"rank {r}" for r in range(4)]
    assert "imbalance" in right.get_title()
