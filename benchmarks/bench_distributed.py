"""Distributed loading: load time and peak memory per rank for N = 1, 2, 4 ranks.

    python benchmarks/bench_distributed.py [--quick] [--n 2 4] [--no-node-local]

One Llama-shaped float32 model (about 1 GiB; ``--quick``: about 64 MiB) is loaded by N
gloo ranks (``ml.distributed.launch``, 127.0.0.1) in one run, by:

- ``load_file (peer)``: every rank reads the whole file with ``safetensors.torch.load_file``
  and keeps its layers, the straightforward way;
- ``safe_open (peer)``: every rank opens the file with safetensors' ``safe_open`` and reads
  only its own tensors (memory-mapped);
- ``layers`` / ``tensor``: ``ml.distributed.load_shard`` with a pipeline / tensor plan,
  reading each rank's bytes into its own memory (``os.preadv``);
- ``... mmap``: the same plans in ``mode="mmap"`` (copy-free views of a private memory
  map; a row-parallel slice is a strided view, one run per row);
- ``broadcast``: rank 0 reads, the others receive their part over gloo.

Per configuration and repetition, each rank resets its peak-RSS counter
(``/proc/self/clear_refs``), loads, touches every page of what it loaded (so lazily
memory-mapped results count as loaded too: one element per page, and for a strided view
one per page of each row, without copying it), and reports that time, its ``VmHWM``
growth, how much of its RSS is then mapped file (page cache, shared with the other
ranks) and the bytes it read. Each round runs every method in turn (interleaved); the
table gives the median over rounds of the slowest rank's time and of the largest rank's
peak memory. The file is in the page cache (warm).

Goal table (issue 21): the tensor plan against the layers plan in ``mmap`` mode, in 11
more rounds of that pair alone (they take tens of milliseconds: a short burst of load
from a neighbour would otherwise decide the ratio), with the tensor plan's time split
into ``load_shard`` and touching the pages, and what each rank's pieces cost in views
and ``WILLNEED`` ranges. Broadcast table: what bounds
``broadcast``: rank 0 reads the whole file (the N=1 ``layers`` time) and sends the other
ranks their shares one after another (timed here as bare gloo sends of those sizes).

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
from common import drop_cache, publish, reset_peak_rss, status_kib, table, timed
from safetensors import safe_open
from safetensors.torch import load_file

import mlmf_lab as ml
from mlmf_lab.distributed.read import mapped_layout, page_ranges
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


# per method and repetition: (seconds, peak RSS growth, bytes read, mapped file RSS growth,
# seconds of the load call alone)
Timings = dict[str, list[tuple[float, int, int, int, float]]]


def _touch(tensors: dict[str, torch.Tensor]) -> None:
    """Read one element per page, so lazily mapped tensors are really loaded too.

    A strided view (a column slice in ``mmap`` mode) is sampled every page along each row
    plus each row's last element: every page of every row, and no copy (``reshape``
    would copy it). A consumer's copy (``load_state_dict``) touches the same pages.
    """
    for t in tensors.values():
        if not t.numel():
            continue
        if t.is_contiguous():
            flat = t.reshape(-1).view(torch.uint8)
            flat[::PAGE].sum()
            flat[-1:].sum()
        else:
            t[..., ::max(PAGE // t.element_size(), 1)].sum()
            t[..., -1].sum()


GOAL = ["layers mmap", "tensor mmap"]  # issue 21: tensor within 2x of layers, at N=2


def rank_main(path: str, repeat: int, methods: list[str],
              goal_repeat: int) -> tuple[Timings, Timings, list[float]]:
    """Runs on every rank: ``repeat`` rounds of every method in turn, then ``goal_repeat``
    rounds of the ``GOAL`` pair (see ``Timings``), then the bare gloo sends of broadcast
    mode (seconds per repetition). Rounds interleave the methods, so a noisy neighbour
    slows them alike instead of whichever ran during a busy moment."""
    import torch.distributed as dist

    rank, n = D.world()
    layers, tensor = D.plan(path, "layers"), D.plan(path, "tensor")

    def measure(method: str) -> tuple[float, int, int, int, float]:
        gc.collect()
        dist.barrier()
        reset_peak_rss()
        base, file_base = status_kib("VmHWM"), status_kib("RssFile")
        start = time.perf_counter()
        tensors, nread = _load(method, path, layers, tensor, rank)
        loaded = time.perf_counter() - start
        _touch(tensors)
        seconds = time.perf_counter() - start
        return (seconds, (status_kib("VmHWM") - base) * 1024, nread,
                (status_kib("RssFile") - file_base) * 1024, loaded)

    runs = [m for m in methods if m != "broadcast" or n > 1]
    out: Timings = {m: [] for m in runs}
    for _ in range(repeat):
        for method in runs:
            out[method].append(measure(method))
    goal: Timings = {m: [] for m in GOAL}
    for _ in range(goal_repeat if n > 1 else 0):
        for method in GOAL:
            goal[method].append(measure(method))
    return out, goal, _gloo_sends(layers, repeat) if n > 1 else []


def _gloo_sends(plan: D.ShardPlan, repeat: int) -> list[float]:
    """What broadcast mode sends, bare: rank 0 sends each rank its share in turn."""
    import torch.distributed as dist

    rank, n = D.world()
    sizes = plan.bytes_per_rank()
    bufs = {r: torch.zeros(sizes[r], dtype=torch.uint8) for r in range(1, n)
            if rank in (0, r)}
    times = []
    for _ in range(repeat):
        dist.barrier()
        start = time.perf_counter()
        if rank == 0:
            for dst, buf in bufs.items():
                dist.send(buf, dst=dst)
        else:
            dist.recv(bufs[rank], src=0)
        times.append(time.perf_counter() - start)
    return times


PAGE = os.sysconf("SC_PAGE_SIZE")


def _read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def node_local_main(path: str, workdir: str) -> dict[str, tuple[int, int, int]]:
    """Runs on every rank: its own copy, dropped from the cache before each load."""
    rank, n = D.world()
    copy = Path(workdir) / f"node{rank}.safetensors"
    shutil.copyfile(path, copy)
    out: dict[str, tuple[int, int, int]] = {}
    for strategy in ("layers", "tensor"):
        plan = D.plan(copy, strategy)
        for mode in ("direct", "mmap"):
            drop_cache(copy)
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


def view_costs(plan: D.ShardPlan) -> tuple[int, int, int]:
    """Largest per-rank (pieces, strided views, WILLNEED ranges) of ``plan`` in mmap mode."""
    worst = (0, 0, 0)
    for r in range(plan.world_size):
        pieces = plan.for_rank(r)
        layouts = [mapped_layout(plan.info(p.name), p) for p in pieces]
        strided = sum(1 for lay in layouts if lay is not None and lay[2] > 1)
        ranges = sum(len(page_ranges(*lay, PAGE)) for lay in layouts if lay is not None)
        worst = max(worst, (len(pieces), strided, ranges))
    return worst


def slowest(per_rank: list[list[float]]) -> float:
    """Median over repetitions of the slowest rank's value."""
    return statistics.median(max(rep) for rep in zip(*per_rank, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a ~64 MiB model, one repetition")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 4],
                    help="rank counts to run (a partial run prints, never publishes)")
    ap.add_argument("--no-node-local", action="store_true",
                    help="skip the cold node-local table (a partial run)")
    args = ap.parse_args()
    repeat, goal_repeat = (1, 3) if args.quick else (3, 11)
    partial = args.quick or args.no_node_local or sorted(args.n) != [1, 2, 4]
    # fixed threshold: big buffers are mmap-ed and handed back on free, so each
    # measurement's peak RSS is its own (ranks inherit this through the forkserver)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 16))
    # on the disk, not a tmpfs /tmp: node-local reads are measured from storage
    scratch = Path(__file__).resolve().parent.parent / ".scratch"
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = make_model(Path(tmp) / "model.safetensors", args.quick)
        total = ml.open_weights(path).nbytes
        header_s = statistics.median(
            timed(lambda: ml.open_weights(path).close()) for _ in range(9))
        rows, goal, cast, base = [], [], [], {}
        cells: dict[tuple[int, str], float] = {}
        for n in sorted(args.n):
            results = D.launch(rank_main, n, str(path), repeat, METHODS, goal_repeat,
                               timeout=1800, pg_timeout=600)
            for method in METHODS:
                if method not in results[0].value[0]:
                    continue
                got = [r.value[0][method] for r in results]  # rank -> repetitions
                secs = slowest([[x[0] for x in reps] for reps in got])
                peak = slowest([[x[1] for x in reps] for reps in got])
                mapped = slowest([[x[3] for x in reps] for reps in got])
                cells[n, method] = secs
                nread = max(x[2] for reps in got for x in reps)
                if n == 1:
                    base[method] = secs
                ref = base.get(method, base.get("layers"))
                rows.append([n, method, f"{secs:.3f}",
                             "-" if ref is None else f"{ref / secs:.2f}x",
                             f"{peak / 2**20:.0f}", f"{peak / total:.2f}",
                             f"{max(mapped, 0) / 2**20:.0f}",
                             f"{nread / 2**20:.0f}", f"{nread / total:.2f}"])
            if n > 1:
                pair = {m: [r.value[1][m] for r in results] for m in GOAL}
                lay, t = (slowest([[x[0] for x in reps] for reps in pair[m]]) for m in GOAL)
                t_load = slowest([[x[4] for x in reps] for reps in pair["tensor mmap"]])
                pieces, strided, ranges = view_costs(D.plan(path, "tensor", world_size=n))
                goal.append([n, f"{lay:.3f}", f"{t:.3f}", f"{t / lay:.2f}x",
                             "yes" if t <= 2 * lay else "no", f"{t_load:.3f}",
                             f"{t - t_load:.3f}", f"{pieces} ({strided})", ranges])
            sends = slowest([r.value[2] for r in results]) if n > 1 else 0.0
            if (n, "broadcast") in cells:
                read = base.get("layers")
                sent = sum(D.plan(path, "layers", world_size=n).bytes_per_rank()[1:])
                cast.append([n, f"{cells[n, 'broadcast']:.3f}",
                             "-" if read is None else f"{read:.3f}", f"{sends:.3f}",
                             "-" if read is None else f"{read + sends:.3f}",
                             f"{sent / 2**20:.0f}"])
        local = [] if args.no_node_local else node_local_rows(path, Path(tmp))
    body = table(["N", "method", "load s (slowest rank)", "speed-up vs N=1",
                  "peak RSS growth per rank (MiB)", "peak / file",
                  "of which mapped file (MiB)", "bytes read per rank (MiB)", "read / file"],
                 rows)
    body += "\n\n" + table(
        ["N", "layers mmap s", "tensor mmap s", "tensor / layers", "goal <= 2x",
         "tensor mmap: load_shard s", "tensor mmap: touching pages s",
         "pieces per rank (strided)", "WILLNEED ranges per rank"], goal)
    body += "\n\n" + table(
        ["N", "broadcast s", "rank 0 reads the file (N=1 layers) s",
         "rank 0 sends N-1 shares (bare gloo) s", "read + sends s", "sent (MiB)"], cast)
    if local:
        body += "\n\n" + table(
            ["N", "plan, mode", "share (MiB)", "read from storage (MiB)", "read / share",
             "pages touched (MiB)", "pages / share", "read / pages"], local)
    how = (
        f"Model: Llama-shaped float32 safetensors, {total / 2**30:.2f} GiB. Each cell: median "
        f"over {repeat} round(s), each running every method in turn, of the slowest rank's "
        "load time (the load, then one read per page of what it returned: a lazily mapped "
        "result pays its page faults here; a strided mmap view is touched page by page along "
        "its rows, not copied) and of the largest rank's peak RSS growth (VmHWM after "
        "/proc/self/clear_refs); warm page cache; ranks are gloo processes on 127.0.0.1 "
        "sharing the machine's cores. Speed-up of broadcast is against N=1 layers. Times on a "
        "shared machine are noisy; memory and bytes are not. \"Of which mapped file\": "
        "RssFile growth, page cache mapped into the rank (shared by every rank on the host, "
        "not private memory); each page fault maps up to 64 KiB of cached neighbours (the "
        "kernel's fault-around), so a column slice in mmap mode shows its neighbours' columns "
        "in RSS too, although it reads and touches only its own pages (cold table). "
        f"Goal table: {goal_repeat} more rounds of that pair alone, interleaved. A column "
        "slice of a row-major [out, in] weight is one run per row; in mmap mode it is one "
        "strided view, and its pages are announced (MADV_WILLNEED) as ranges merged where "
        "runs share or touch a page, one madvise call each, so a cold read fetches exactly "
        "the pages touched. Opening the header (parse + records): "
        f"{header_s * 1e3:.1f} ms. Broadcast table: rank 0 reads every rank's pieces (the "
        "whole file, into fresh buffers) and sends the N-1 other shares one after another "
        "over gloo's TCP on loopback, nothing overlapped; read + sends is the bound (the "
        "rest: the header check on rank 0 and two status exchanges), on 2 cores shared by "
        "N processes. Node-local table: each rank's own copy, cold, read_bytes of "
        "/proc/self/io (the rank with the largest read / share is shown).")
    publish("distributed", "Distributed loading: time and memory per rank", how, body, partial)


if __name__ == "__main__":
    main()
