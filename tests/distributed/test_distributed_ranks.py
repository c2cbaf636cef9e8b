"""Real multi-process runs: gloo ranks on 127.0.0.1 started by ``ml.distributed.launch``.

Process start is the main cost, so each launch runs several checks and returns plain
data; the assertions are made here in the parent, against single-process references.
Every launch is bounded (``timeout=``) and the launcher kills what is left.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_distributed_plan import (
    STACK_LAYERS,
    STACK_RULES,
    make_llama,
    make_multimodal,
    make_stack,
)

import mlmf_lab as ml
from mlmf_lab.errors import DistributedError

D = ml.distributed
PG_TIMEOUT = 30.0  # a fault must be reported well before this
RUN_TIMEOUT = 90.0


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _equal(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor]) -> bool:
    return a is not None and list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in b)


def _expect_failure(fn: Any) -> tuple[str, float]:
    start = time.monotonic()
    try:
        fn()
    except DistributedError as e:
        return str(e), time.monotonic() - start
    return "no error", time.monotonic() - start


def healthy_checks(paths: dict[str, str]) -> dict[str, Any]:
    """Runs on every rank: every strategy and mode, gather, tensor-parallel forward."""
    rank, n = D.world()
    out: dict[str, Any] = {"rank": rank}
    ref = ml.load_state_dict(paths["llama"])
    for strategy in ("layers", "tensor", "replicate"):
        plan = D.plan(paths["llama"], strategy)
        before = _rchar()
        shard = D.load_shard(paths["llama"], plan)
        out[f"{strategy}/rchar"] = _rchar() - before
        out[f"{strategy}/bytes"] = shard.bytes_read
        out[f"{strategy}/planned"] = plan.bytes_per_rank()[rank]
        out[f"{strategy}/total"] = plan.total_bytes
        gathered = D.gather_state_dict(shard)  # collective: every rank calls it
        out[f"{strategy}/gather"] = _equal(gathered, ref) if rank == 0 else gathered
        mapped = D.load_shard(paths["llama"], plan, mode="mmap")
        out[f"{strategy}/mmap"] = all(torch.equal(mapped[k], shard[k]) for k in shard)
        cast = D.load_shard(paths["llama"], plan, mode="broadcast")
        same = all(torch.equal(cast[k], shard[k]) for k in shard) and cast.keys() == shard.keys()
        out[f"{strategy}/broadcast"] = (same, cast.bytes_read, cast.bytes_received)
    mm = D.plan(paths["mm"], "modality")
    out["modality/gather"] = D.gather_state_dict(D.load_shard(paths["mm"], mm))
    stack_plan = D.plan(paths["stack"], "tensor", rules=STACK_RULES, arch=None)
    stack = D.load_shard(paths["stack"], stack_plan)
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(0))
    out["tp"] = D.tp_linear_stack(x, stack, STACK_LAYERS)
    mapped = D.load_shard(paths["stack"], stack_plan, mode="mmap")  # strided row weights
    out["tp/mmap"] = D.tp_linear_stack(x, mapped, STACK_LAYERS)
    return out


def fault_checks(paths: dict[str, str], dying_rank: int) -> dict[str, Any]:
    """Rank 1 gets a missing, then a truncated file; then ``dying_rank`` exits mid-read."""
    rank, n = D.world()
    plan = D.plan(paths["llama"], "layers")
    out: dict[str, Any] = {}
    for fault in ("missing", "truncated"):
        path = paths[fault] if rank == 1 else paths["llama"]
        out[fault] = _expect_failure(lambda p=path: D.load_shard(p, plan))
    out["after"] = D.load_shard(paths["llama"], plan).bytes_read > 0  # the group still works
    if rank == dying_rank:
        import mlmf_lab.distributed.load as load_module

        def die(*args: Any) -> Any:
            os._exit(7)

        load_module.read_piece = die  # this rank dies in the middle of load_shard
    out["died"] = _expect_failure(lambda: D.load_shard(paths["llama"], plan))
    return out


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ranks")
    llama = make_llama(root / "llama.safetensors")
    truncated = root / "truncated.safetensors"
    truncated.write_bytes(llama.read_bytes()[: os.path.getsize(llama) // 3])
    return {"llama": str(llama), "mm": str(make_multimodal(root / "mm.safetensors")),
            "stack": str(make_stack(root / "stack.safetensors")[0]),
            "missing": str(root / "node1" / "llama.safetensors"), "truncated": str(truncated)}


@pytest.mark.parametrize("n", [2, 4])
def test_healthy_run(paths: dict[str, str], n: int) -> None:
    results = D.launch(healthy_checks, n, paths, timeout=RUN_TIMEOUT, pg_timeout=PG_TIMEOUT)
    assert [r.exitcode for r in results] == [0] * n
    outs = [r.value for r in results]
    ref = ml.load_state_dict(paths["llama"])
    for strategy in ("layers", "tensor", "replicate"):
        total = outs[0][f"{strategy}/total"]
        for o in outs:
            assert o[f"{strategy}/bytes"] == o[f"{strategy}/planned"]
            # the kernel's own count of bytes read by the process: the counted reads + headers
            assert o[f"{strategy}/bytes"] <= o[f"{strategy}/rchar"] < o[f"{strategy}/bytes"] + 2**16
            if strategy != "replicate":
                assert o[f"{strategy}/rchar"] <= total / n * 1.05 + 2**16, (strategy, o["rank"])
                assert o[f"{strategy}/bytes"] <= total / n * 1.05
            assert o[f"{strategy}/mmap"] is True
            same, read, received = o[f"{strategy}/broadcast"]
            assert same and (read > 0) == (o["rank"] == 0) and (received > 0) == (o["rank"] > 0)
        assert outs[0][f"{strategy}/gather"] is True
        assert all(o[f"{strategy}/gather"] is None for o in outs[1:])
    assert _equal(outs[0]["modality/gather"], ml.load_state_dict(paths["mm"]))
    assert all(o["modality/gather"] is None for o in outs[1:])
    _, stack = make_stack(Path(paths["stack"]).with_name("again.safetensors"))
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the unsharded stack, relu between layers
        expected = x
        for i, layer in enumerate(stack):
            expected = layer(expected) if i == len(stack) - 1 else torch.relu(layer(expected))
    for o in outs:
        torch.testing.assert_close(o["tp"], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(o["tp/mmap"], o["tp"], rtol=1e-6, atol=1e-6)
    assert ref  # the file itself was readable in the parent too


@pytest.mark.parametrize(("n", "dying"), [(2, 1), (4, 2)])
def test_faults_fail_fast_naming_rank_and_file(paths: dict[str, str], n: int, dying: int) -> None:
    start = time.monotonic()
    results = D.launch(fault_checks, n, paths, dying, timeout=RUN_TIMEOUT,
                       pg_timeout=PG_TIMEOUT, check=False)
    assert time.monotonic() - start < PG_TIMEOUT  # nobody waited for a timeout
    assert all(r.exitcode is not None for r in results)  # every process is gone
    assert results[dying].exitcode == 7 and "without reporting" in (results[dying].error or "")
    for r in results:
        if r.rank == dying:
            continue
        assert r.ok, r.error
        out = r.value
        for fault, needle in (("missing", "no such file"), ("truncated", "out of range")):
            message, seconds = out[fault]
            assert "rank 1 failed" in message and needle in message, message
            assert paths[fault] in message and seconds < 5
        assert out["after"] is True
        message, seconds = out["died"]
        assert f"rank {dying} died or stopped responding while reading" in message, message
        assert paths["llama"] in message and seconds < 10


def stuck() -> None:
    time.sleep(600)


def test_launcher_stops_a_stuck_rank() -> None:
    start = time.monotonic()
    with pytest.raises(DistributedError, match="rank 0 did not finish within 3 s and was stopped"):
        D.launch(stuck, 1, timeout=3.0)
    assert time.monotonic() - start < 15
