"""Distributed loading: load time and peak memory per rank for N = 1, 2, 4 ranks.

    python benchmarks/bench_distributed.py [--quick]

One Llama-shaped float32 model (about 1 GiB; ``--quick``: about 64 MiB) is loaded by N
gloo ranks (``ml.distributed.launch``, 127.0.0.1) in one run, by:

- ``load_file (peer)``: every rank reads the whole file with ``safetensors.torch.load_file``
  and keeps its layers, the straightforward way;
- ``safe_open (peer)``: every rank opens the file with safetensors' ``safe_open`` and reads
  only its own tensors (memory-mapped);
- ``layers`` / ``tensor``: ``ml.distributed.load_shard`` with a pipeline / tensor plan,
  reading each rank's bytes into its own memory (``os.preadv``);
- ``... mmap``: the same plans in ``mode="mmap"`` (copy-free views of a private memory
  map for contiguous pieces; row-parallel slices are still read);
- ``broadcast``: rank 0 reads, the others receive their part over gloo.

Per configuration and repetition, each rank resets its peak-RSS counter
(``/proc/self/clear_refs``), loads, touches every page of what it loaded (so lazily
memory-mapped results count as loaded too), and reports that time, its ``VmHWM`` growth
and the bytes it read. The table gives the median over repetitions of the slowest rank's time
and of the largest rank's peak memory. The file is in the page cache (warm reads).

Node-local reads (second table): each rank reads its part from its own copy of the file,
as on separate machines, from storage (the copy's pages dropped from the page cache with
``POSIX_FADV_DONTNEED``). ``read_bytes`` of ``/proc/self/io`` counts what the disk delivered
to the rank, readahead included, against the rank's share of the plan and against the
pages its byte ranges touch (what an exact reader must read: storage works in pages).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import publish, table
from safetensors import safe_open
from safetensors.torch import load_file

import mlmf_lab as ml
from mlmf_lab.distributed.spans import pages_touched

D = ml.distributed
METHODS = ["load_file (peer)", "safe_open (peer)", "layers", "layers mmap", "tensor",
           "tensor mmap", "broadcast"]


def make_model(path: Path, quick: bool) -> Path:
    """Llama-shaped float32 tensors: ~1 GiB (16 layers, hidden 1024), quick ~64 MiB."""
    vocab, hidden, inter, layers = (8000, 256, 688, 16) if quick else (32000, 1024, 2816, 16)
    g = torch.Generator().manual_seed(0)
    t = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{name}.weight"] = torch.randn(hidden, hidden, generator=g)
        t[p + "mlp.gate_proj.weight"] = torch.randn(inter, hidden, generator=g)
        t[p + "mlp.up_proj.weight"] = torch.randn(inter, hidden, generator=g)
        t[p + "mlp.down_proj.weight"] = torch.randn(hidden, inter, generator=g)
        t[p + "input_layernorm.weight"] = torch.ones(hidden)
        t[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    t["model.norm.weight"] = torch.ones(hidden)
    t["lm_head.weight"] = torch.randn(vocab, hidden, generator=g)
    ml.save_state_dict(t, path, metadata={"model_type": "llama"})
    return path


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _load(method: str, path: str, layers: D.ShardPlan, tensor: D.ShardPlan,
          rank: int) -> tuple[dict[str, torch.Tensor], int]:
    """One way of loading this rank's part; returns (tensors, bytes it read itself)."""
    mine = [p.name for p in layers.for_rank(rank)]
    if method == "load_file (peer)":
        everything = load_file(path)
        return {k: everything[k] for k in mine}, layers.total_bytes
    if method == "safe_open (peer)":
        with safe_open(path, "pt") as f:
            return {k: f.get_tensor(k) for k in mine}, sum(layers.info(k).nbytes for k in mine)
    plan = tensor if method.startswith("tensor") else layers
    mode = {"broadcast": "broadcast", "layers mmap": "mmap", "tensor mmap": "mmap"}
    shard = D.load_shard(path, plan, mode=mode.get(method, "direct"), progress=False)
    return shard.tensors, shard.bytes_read


Timings = dict[str, list[tuple[float, int, int]]]


def _touch(tensors: dict[str, torch.Tensor]) -> None:
    """Read one element per 4 KiB page, so lazily mapped tensors are really loaded too."""
    for t in tensors.values():
        t.reshape(-1).view(torch.uint8)[::4096].sum()


def rank_main(path: str, repeat: int, methods: list[str]) -> Timings:
    """Runs on every rank: each method ``repeat`` times; (seconds, peak RSS growth, bytes)."""
    import torch.distributed as dist

    rank, n = D.world()
    layers, tensor = D.plan(path, "layers"), D.plan(path, "tensor")
    out: dict[str, list[tuple[float, int, int]]] = {}
    for method in methods:
        if method == "broadcast" and n == 1:
            continue
        out[method] = []
        for _ in range(repeat):
            gc.collect()
            dist.barrier()
            _reset_peak()
            base = _hwm_kib()
            start = time.perf_counter()
            tensors, nread = _load(method, path, layers, tensor, rank)
            _touch(tensors)
            seconds = time.perf_counter() - start
            out[method].append((seconds, (_hwm_kib() - base) * 1024, nread))
            del tensors
    return out


PAGE = os.sysconf("SC_PAGE_SIZE")


def _read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def _drop_cache(path: Path) -> None:
    """Evict ``path``'s pages from the page cache (flushed first, so they are clean)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def node_local_main(path: str, workdir: str) -> dict[str, tuple[int, int, int]]:
    """Runs on every rank: its own copy, dropped from the cache before each load."""
    rank, n = D.world()
    copy = Path(workdir) / f"node{rank}.safetensors"
    shutil.copyfile(path, copy)
    out: dict[str, tuple[int, int, int]] = {}
    for strategy in ("layers", "tensor"):
        plan = D.plan(copy, strategy)
        for mode in ("direct", "mmap"):
            _drop_cache(copy)
            before = _read_bytes()
            shard = D.load_shard(copy, plan, mode=mode, progress=False)
            _touch(shard.tensors)
            out[f"{strategy} {mode}"] = (_read_bytes() - before, plan.bytes_per_rank()[rank],
                                         pages_touched(plan, rank, PAGE))
            del shard
    copy.unlink()
    return out


def node_local_rows(path: Path, workdir: Path) -> list[list[str]]:
    rows = []
    for n in (2, 4):
        results = [r.value for r in D.launch(node_local_main, n, str(path), str(workdir),
                                             timeout=1800, pg_timeout=600)]
        for key in results[0]:
            got = [r[key] for r in results]
            worst = max(got, key=lambda g: g[0] / g[1])
            rows.append([n, key, f"{worst[1] / 2**20:.1f}", f"{worst[0] / 2**20:.1f}",
                         f"{worst[0] / worst[1]:.2f}", f"{worst[2] / 2**20:.1f}",
                         f"{worst[2] / worst[1]:.2f}", f"{worst[0] / worst[2]:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a ~64 MiB model, one repetition")
    args = ap.parse_args()
    repeat = 1 if args.quick else 3
    # fixed threshold: big buffers are mmap-ed and handed back on free, so each
    # measurement's peak RSS is its own (ranks inherit this through the forkserver)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 16))
    # on the disk, not a tmpfs /tmp: node-local reads are measured from storage
    scratch = Path(__file__).resolve().parent.parent / ".scratch"
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = make_model(Path(tmp) / "model.safetensors", args.quick)
        total = ml.open_weights(path).nbytes
        rows, base = [], {}
        for n in (1, 2, 4):
            results = D.launch(rank_main, n, str(path), repeat, METHODS, timeout=1800,
                               pg_timeout=600)
            for method in METHODS:
                if method not in results[0].value:
                    continue
                per_rep = list(zip(*(r.value[method] for r in results), strict=True))
                secs = statistics.median(max(s for s, _, _ in rep) for rep in per_rep)
                peak = statistics.median(max(m for _, m, _ in rep) for rep in per_rep)
                nread = max(b for rep in per_rep for _, _, b in rep)
                if n == 1:
                    base[method] = (secs, peak)
                ref_secs = (base[method] if method in base else base["layers"])[0]
                rows.append([n, method, f"{secs:.3f}", f"{ref_secs / secs:.2f}x",
                             f"{peak / 2**20:.0f}", f"{peak / total:.2f}",
                             f"{nread / 2**20:.0f}", f"{nread / total:.2f}"])
        local = node_local_rows(path, Path(tmp))
    body = table(["N", "method", "load s (slowest rank)", "speed-up vs N=1",
                  "peak RSS growth per rank (MiB)", "peak / file", "bytes read per rank (MiB)",
                  "read / file"], rows)
    body += "\n\n" + table(
        ["N", "plan, mode", "share (MiB)", "read from storage (MiB)", "read / share",
         "pages touched (MiB)", "pages / share", "read / pages"], local)
    how = (f"Model: Llama-shaped float32 safetensors, {total / 2**30:.2f} GiB. Each cell: median "
           f"of {repeat} repetition(s) of the slowest rank's load time and the largest rank's "
           "peak RSS growth (VmHWM after /proc/self/clear_refs); warm page cache; ranks are "
           "gloo processes on 127.0.0.1 sharing the machine's cores. Speed-up of broadcast is "
           "against N=1 layers. Times on a shared machine are noisy; memory and bytes are "
           "not. Node-local table: each rank's own copy, cold, read_bytes of /proc/self/io "
           "(the rank with the largest read / share is shown).")
    publish("distributed", "Distributed loading: time and memory per rank", how, body, args.quick)


if __name__ == "__main__":
    main()
