"""ModelCache: hit latency (goal <= 20 µs) and its overhead against a plain dict, in one run.

Hits: per-call time of ``timeit`` loops (median over repeats) for the same cached state dict
looked up through a plain ``dict``, a dict plus the ``os.stat`` that any stale-safe file
cache must pay, ``functools.lru_cache``, and ``ModelCache.get_or_load`` with a plain key
and with the file's path (stat-checked for changes). Misses: ``get_or_load`` on an empty
cache against ``ml.load_state_dict`` alone, on the MiniLM encoder (the difference is the
cost of measuring every storage and classifying it as anonymous or memory-mapped).
Statistics: ``ModelCache.stats()`` with 1,000 and 100,000 events in its log, against
copying that log into records (what a snapshot cost before the log was shared).

    python benchmarks/bench_cache.py [--quick]
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time, publish, table  # noqa: E402

import mlmf_lab as ml  # noqa: E402

GOAL_US = 20.0


def per_call_us(stmt: Any, number: int, repeat: int) -> tuple[float, float]:
    """(median, best) µs per call over ``repeat`` runs of ``number`` calls."""
    runs = timeit.repeat(stmt, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6, min(runs) / number * 1e6


def hit_rows(path: Path, number: int, repeat: int) -> list[list[str]]:
    value = ml.load_state_dict(path)
    key = str(path)
    plain = {key: value}
    cache = ml.ModelCache("1GiB")
    cache.get_or_load(path)
    cache.put("model", value)
    lru = functools.lru_cache(maxsize=8)(ml.load_state_dict)
    lru(key)

    def dict_and_stat() -> object:
        os.stat(key)
        return plain[key]

    cases = [
        ("plain dict lookup (peer)", lambda: plain[key]),
        ("dict + os.stat (peer: minimum for a stale-safe file cache)", dict_and_stat),
        ("functools.lru_cache hit (peer, never notices a changed file)", lambda: lru(key)),
        ("ModelCache.get_or_load(key) hit", lambda: cache.get_or_load("model", ml.load_state_dict)),
        ("ModelCache.get_or_load(path) hit, stat-checked", lambda: cache.get_or_load(key)),
    ]
    times = {name: per_call_us(fn, number, repeat) for name, fn in cases}
    base = times["plain dict lookup (peer)"][0]
    rows = []
    for name, (us, best) in times.items():
        goal = ("" if not name.startswith("ModelCache") else
                ("yes" if us <= GOAL_US else "**no**"))
        rows.append([name, f"{us:.2f}", f"{best:.2f}", f"{us / base:.0f}x", f"{us - base:+.2f}",
                     goal])
    assert cache.stats().hits >= number * repeat * 2
    return rows


def miss_rows(path: Path, repeat: int) -> list[list[str]]:
    torch.set_num_threads(1)
    plain = median_time(lambda: ml.load_state_dict(path), repeat)
    cached = median_time(lambda: ml.ModelCache("1GiB").get_or_load(path), repeat)
    n = len(ml.load_state_dict(path))
    return [
        [f"ml.load_state_dict ({n} tensors, peer)", f"{plain * 1e3:.2f} ms", "1.0x", ""],
        ["ModelCache.get_or_load miss (load + measure + store)", f"{cached * 1e3:.2f} ms",
         f"{cached / plain:.2f}x", f"+{(cached - plain) * 1e3:.2f} ms"],
    ]


def stats_rows(number: int, repeat: int) -> list[list[str]]:
    """``stats()`` per call at two log lengths; the peer copies the log into records."""
    from mlmf_lab.cache.stats import CacheEvent

    rows = []
    for n in (1_000, 100_000):
        cache = ml.ModelCache("1MiB")
        cache.put("k", torch.zeros(16, dtype=torch.uint8))
        for _ in range(n // 2):
            cache.get("k")
            cache.get("missing")
        log = cache.stats().events
        assert len(log) >= n
        us, best = per_call_us(cache.stats, number, repeat)
        copy_us, _ = per_call_us(lambda log=log: tuple(map(CacheEvent._make, log)),
                                 max(1, number // 100), repeat)
        rows.append([f"{len(log):,}", f"{us:.1f}", f"{best:.1f}", f"{copy_us:,.0f}",
                     f"{copy_us / us:,.0f}x", "yes" if us <= 1000 else "**no**"])
    return rows


def main(quick: bool) -> None:
    number, repeat = (2_000, 5) if quick else (50_000, 9)
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.safetensors"
        torch.manual_seed(0)
        ml.save_state_dict({f"layer{i}.weight": torch.randn(64, 64) for i in range(8)}, small)
        hits = hit_rows(small, number, repeat)
        try:
            big = ml.examples.minilm_path()
        except ml.MLMFError:
            big = small
        misses = miss_rows(big, 3 if quick else 9)
    stats = stats_rows(200 if quick else 2_000, repeat)
    body = (
        table(["hit path", "µs/call median", "µs/call best", "vs dict", "overhead µs",
               "median <= 20 µs"], hits)
        + "\n\n"
        + table(["miss path", "time (median)", "ratio", "overhead"], misses)
        + "\n\n"
        + table(["events in the log", "stats() µs median", "stats() µs best",
                 "copying the log into records µs (peer: the old snapshot)", "vs stats()",
                 "stats() <= 1 ms"], stats)
    )
    how = (f"Hits: median of {repeat} `timeit` runs of {number} calls each, one thread, same "
           "process. Misses: median of fresh-cache loads with the file in the page cache. "
           f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
           "(other work shares the machine; the best run shows the cost on a quiet core).")
    publish("cache", "Model cache: hit latency and overhead", how, body, quick)


if __name__ == "__main__":
    main("--quick" in sys.argv[1:])
