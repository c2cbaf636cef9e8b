"""Distributed loading against hostile tries: blame, hung ranks, 0-dim tensors, GGUF names.

Multi-process cases run gloo ranks on 127.0.0.1 through ``ml.distributed.launch``, each
bounded in time; the assertions are made in the parent.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from test_distributed_plan import make_llama

import mlmf_lab as ml
from mlmf_lab.errors import ConfigError, DistributedError

D = ml.distributed
RUN_TIMEOUT = 60.0
PG_TIMEOUT = 45.0  # a hung rank must be noticed long before this


def make_clip_like(path: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    state = {"logit_scale": torch.tensor(2.6593)}  # 0-dim, as in CLIP
    for i in range(4):
        state[f"text_model.encoder.layers.{i}.mlp.fc1.weight"] = torch.randn(8, 4, generator=g)
    state["visual_projection.weight"] = torch.randn(4, 8, generator=g)
    ml.save_state_dict(state, path)
    return path


@pytest.mark.parametrize("strategy", ["layers", "replicate", "tensor"])
@pytest.mark.parametrize("mode", ["direct", "mmap"])
def test_zero_dim_tensors_load_in_every_mode(tmp_path: Path, strategy: str, mode: str) -> None:
    path = make_clip_like(tmp_path / "clip.safetensors")
    ref = ml.load_state_dict(path)
    options: dict[str, Any] = {"rules": [("fc1", "column")], "arch": None} \
        if strategy == "tensor" else {}
    for n in (1, 2):
        plan = D.plan(path, strategy, world_size=n, **options)
        held = [D.load_shard(path, plan, rank=r, world_size=n, mode=mode, progress=False)
                for r in range(n)]
        owner = next(s for s in held if "logit_scale" in s)
        assert owner["logit_scale"].shape == () and torch.equal(owner["logit_scale"],
                                                                ref["logit_scale"])
        assert owner.bytes_read >= 4
    from mlmf_lab.distributed.load import pack, unpack

    pieces = plan.for_rank(owner.rank)
    buf = pack([owner[p.name] for p in pieces])  # what broadcast and gather send
    assert torch.equal(unpack(buf, plan, pieces)["logit_scale"], ref["logit_scale"])


def zero_dim_ranks(path: str) -> dict[str, Any]:
    plan = D.plan(path, "layers")
    cast = D.load_shard(path, plan, mode="broadcast", progress=False)
    full = D.gather_state_dict(D.load_shard(path, plan, progress=False))
    return {"cast": {k: v.clone() for k, v in cast.items()}, "full": full}


def test_zero_dim_tensors_through_broadcast_and_gather(tmp_path: Path) -> None:
    path = make_clip_like(tmp_path / "clip.safetensors")
    ref = ml.load_state_dict(path)
    out = [r.value for r in D.launch(zero_dim_ranks, 2, str(path), timeout=RUN_TIMEOUT)]
    assert any("logit_scale" in o["cast"] for o in out)
    for o in out:
        for k, v in o["cast"].items():
            assert torch.equal(v, ref[k])
    full = out[0]["full"]
    assert full is not None and torch.equal(full["logit_scale"], ref["logit_scale"])
    assert list(full) == list(ref)


def make_gguf_llama(path: Path, layers: int = 2, hidden: int = 64, vocab: int = 96) -> Path:
    """A llama GGUF as llama.cpp names it (blk.N.attn_q ...), F32 and Q8_0 tensors."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)

    def add(name: str, shape: tuple[int, ...], q8: bool = False) -> None:
        data = rng.standard_normal(shape).astype(np.float32)
        if q8:
            w.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, data)

    add("token_embd.weight", (vocab, hidden))
    for i in range(layers):
        for kind in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add(f"blk.{i}.{kind}.weight", (hidden, hidden), q8=kind == "attn_q")
        add(f"blk.{i}.ffn_gate.weight", (128, hidden))
        add(f"blk.{i}.ffn_up.weight", (128, hidden))
        add(f"blk.{i}.ffn_down.weight", (hidden, 128))
        add(f"blk.{i}.attn_norm.weight", (hidden,))
    add("output_norm.weight", (hidden,))
    add("output.weight", (vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tensor_plan_knows_gguf_names(tmp_path: Path) -> None:
    path = make_gguf_llama(tmp_path / "llama.gguf")
    plan = D.plan(path, "tensor", world_size=2)  # no rules=: gguf's own names are known
    assert "rules: gguf" in plan.detail
    roles = {p.name: (p.role, p.dim) for p in plan.pieces if p.rank == 0}
    assert roles["blk.0.attn_q.weight"] == ("column", 0)
    assert roles["blk.1.ffn_down.weight"] == ("row", 1)
    assert roles["token_embd.weight"] == ("vocab", 0)
    assert roles["output.weight"] == ("column", 0)
    assert roles["blk.0.attn_norm.weight"][0] == "replicate"
    full = ml.load_state_dict(path)
    shards = [D.load_shard(path, plan, rank=r, world_size=2, progress=False) for r in (0, 1)]
    for name in ("blk.0.attn_q.weight", "blk.0.attn_output.weight", "token_embd.weight"):
        dim = roles[name][1]
        assert dim is not None
        torch.testing.assert_close(torch.cat([s[name] for s in shards], dim=dim), full[name])
    assert all(s.bytes_read <= plan.total_bytes * 0.6 for s in shards)
    with pytest.raises(ConfigError, match="unknown architecture 'falcon'"):
        D.plan(path, "tensor", world_size=2, arch="falcon")


def _storage_read(fn: Any) -> int:
    """Bytes the disk delivered to this process while ``fn()`` ran (readahead included)."""
    def read_bytes() -> int:
        line = next(x for x in Path("/proc/self/io").read_text().splitlines()
                    if x.startswith("read_bytes:"))
        return int(line.split()[1])

    before = read_bytes()
    fn()
    return read_bytes() - before


def _cold(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def test_node_local_reads_stay_near_the_share(tmp_path: Path) -> None:
    """Each rank on its own cold copy (separate machines): the layers plan reads at most
    1.2x its share; the tensor plan reads exactly the pages its slices touch."""
    from mlmf_lab.distributed.spans import pages_touched

    g = torch.Generator().manual_seed(0)
    state = {"lm_head.weight": torch.randn(2048, 512, generator=g)}  # 4 MiB, stored first
    for i in range(6):
        state[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(512, 512, generator=g)
        state[f"model.layers.{i}.self_attn.o_proj.weight"] = torch.randn(512, 512, generator=g)
        state[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(1024, 512, generator=g)
    state["model.embed_tokens.weight"] = torch.randn(2048, 512, generator=g)
    src = tmp_path / "model.safetensors"
    ml.save_state_dict(state, src, metadata={"model_type": "llama"})
    probe = tmp_path / "probe.safetensors"
    probe.write_bytes(src.read_bytes())
    _cold(probe)
    if _storage_read(lambda: probe.read_bytes()) < probe.stat().st_size // 2:
        pytest.skip("this file system does not report reads from storage (tmpfs?)")
    for strategy in ("layers", "tensor"):
        plan = D.plan(src, strategy, world_size=4)
        for mode in ("direct", "mmap"):
            for rank in range(4):
                copy = tmp_path / f"node{rank}.safetensors"
                copy.write_bytes(src.read_bytes())
                _cold(copy)
                got = _storage_read(lambda c=copy, p=plan, r=rank, m=mode: [
                    t.sum() for t in D.load_shard(c, p, rank=r, world_size=4, mode=m,
                                                  progress=False).values()])
                share, pages = plan.bytes_per_rank()[rank], pages_touched(plan, rank)
                assert got <= pages + 64 * 1024, (strategy, mode, rank, got / share)
                if strategy == "layers":
                    assert got <= 1.2 * share, (mode, rank, got / share)


def _blame(message: str) -> str:
    """The part of a DistributedError that blames ranks (before what this rank saw)."""
    return message.split(" [rank ")[0]


def dies_before_gather(path: str) -> tuple[str, float]:
    rank, _ = D.world()
    shard = D.load_shard(path, D.plan(path, "layers"), progress=False)
    if rank == 1:
        os._exit(5)  # gone before the gather, without a word
    start = time.monotonic()
    try:
        D.gather_state_dict(shard)
    except DistributedError as e:
        return str(e), time.monotonic() - start
    return "no error", time.monotonic() - start


def test_a_rank_that_dies_is_blamed_and_no_survivor_is(tmp_path: Path) -> None:
    path = str(make_llama(tmp_path / "llama.safetensors", layers=4))
    results = D.launch(dies_before_gather, 4, path, timeout=RUN_TIMEOUT, pg_timeout=PG_TIMEOUT,
                       heartbeat=2.0, check=False)
    assert results[1].exitcode == 5
    for r in (0, 2, 3):
        assert results[r].ok, results[r].error
        message, seconds = results[r].value
        assert re.fullmatch(rf"{re.escape(path)}: rank 1 died or stopped responding before "
                            r"this step \(no heartbeat for \d+ s\)", _blame(message)), message
        assert seconds < 10


def stops_while_reading(path: str, pidfile: str) -> tuple[str, float]:
    rank, _ = D.world()
    plan = D.plan(path, "layers")
    if rank == 1:
        import mlmf_lab.distributed.load as load_module

        def hang(*args: Any) -> Any:
            Path(pidfile).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)

        load_module.read_piece = hang  # type: ignore[assignment]
    start = time.monotonic()
    try:
        D.load_shard(path, plan, progress=False)
    except DistributedError as e:
        seconds = time.monotonic() - start
        if rank == 0:
            os.kill(int(Path(pidfile).read_text()), signal.SIGKILL)  # end the run quickly
        return str(e), seconds
    return "no error", time.monotonic() - start


def test_a_hung_rank_is_noticed_within_ten_seconds(tmp_path: Path) -> None:
    path = str(make_llama(tmp_path / "llama.safetensors", layers=4))
    start = time.monotonic()
    results = D.launch(stops_while_reading, 3, path, str(tmp_path / "pid"),
                       timeout=RUN_TIMEOUT, pg_timeout=PG_TIMEOUT, check=False)
    assert time.monotonic() - start < PG_TIMEOUT  # nobody waited for the group's timeout
    assert results[1].exitcode == -signal.SIGKILL
    for r in (0, 2):
        message, seconds = results[r].value
        assert re.fullmatch(rf"{re.escape(path)}: rank 1 died or stopped responding while "
                            rf"reading {re.escape(path)} \(no heartbeat for [5-9] s\)",
                            _blame(message)), message
        assert seconds < 10, seconds  # the default heartbeat (5 s), not the 45 s timeout


def test_heartbeat_is_configurable_and_checked() -> None:
    assert D.DEFAULT_HEARTBEAT == 5.0
    with pytest.raises(ConfigError, match="heartbeat must be a positive number of seconds, "
                       "found -1"):
        D.launch(time.sleep, 2, 0, heartbeat=-1, timeout=RUN_TIMEOUT)
