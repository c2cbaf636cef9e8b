"""8 threads, thousands of mixed operations: the budget always holds and the counts add up."""

from __future__ import annotations

import random
import threading
from collections import Counter

import torch

from mlmf_lab.cache import ModelCache
from mlmf_lab.cache.footprint import measure
from mlmf_lab.errors import CacheError

BUDGET = 20_000
THREADS = 8
OPS = 600  # per thread


def value_for(key: tuple[str, int]) -> torch.Tensor:
    return torch.zeros(key[1], dtype=torch.uint8)


def test_mixed_operations_from_eight_threads_keep_the_invariants() -> None:
    cache = ModelCache(BUDGET)
    keys = [(f"k{i}", 500 + 350 * (i % 12)) for i in range(40)]  # 500 .. 4350 bytes
    violations: list[str] = []
    failures: list[BaseException] = []
    refused: list[CacheError] = []  # pinned entries can leave too little room: a clear refusal
    stop = threading.Event()
    start = threading.Barrier(THREADS + 1)

    def monitor() -> None:
        while not stop.is_set():
            held = cache.bytes_held
            if held > BUDGET:
                violations.append(f"held {held} > {BUDGET}")
            s = cache.stats()
            if s.hits + s.misses != s.lookups or s.bytes_held > BUDGET:
                violations.append(f"inconsistent snapshot {s}")
            if s.loads + s.load_errors > s.misses or s.pinned_bytes > s.bytes_held:
                violations.append(f"inconsistent loads/pins {s}")

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        try:
            for _ in range(OPS):
                key = rng.choice(keys)
                op = rng.random()
                if op < 0.55:
                    try:
                        value = cache.get_or_load(key, value_for)
                        assert value.nbytes == key[1]
                    except CacheError as e:
                        refused.append(e)
                elif op < 0.75:
                    got = cache.get(key)
                    assert got is None or got.nbytes == key[1]
                elif op < 0.85:
                    try:
                        cache.put(key, value_for(key))
                    except CacheError as e:
                        refused.append(e)
                elif op < 0.90:
                    try:
                        cache.pin(key)
                    except CacheError:  # not cached at this moment
                        pass
                elif op < 0.95:
                    try:
                        cache.unpin(key)
                    except CacheError:
                        pass
                else:
                    cache.evict(key)
                if cache.bytes_held > BUDGET:
                    violations.append(f"held {cache.bytes_held} after an operation")
        except BaseException as e:  # noqa: BLE001  (reported below)
            failures.append(e)

    watcher = threading.Thread(target=monitor)
    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(THREADS)]
    watcher.start()
    for w in workers:
        w.start()
    start.wait()
    for w in workers:
        w.join(30)
    stop.set()
    watcher.join(5)

    assert not failures, failures
    assert all("pinned entries hold" in str(e) for e in refused)
    assert not violations, violations[:3]
    s = cache.stats()
    events = Counter(e.event for e in s.events)
    assert len(s.events) < 100_000  # the log kept every event, so the counts below are exact
    assert s.lookups == s.hits + s.misses == events["hit"] + events["miss"]
    assert s.loads + s.puts == events["load"] + events["put"] + events["refused"]
    assert events["uncached"] == 0
    stored = events["load"] + events["put"]
    assert stored - s.evictions_total == s.entries == len(cache)
    assert events["evict"] == s.evictions_total > 0 and s.hits > 0
    # held bytes match the entries, measured again independently
    values = [cache.get(key) for key in keys]
    assert s.bytes_held == sum(measure(v).total for v in values if v is not None)
    assert s.pinned == sum(1 for e in cache._ledger.entries.values() if e.pinned)
    assert sum(s.evictions.values()) == s.evictions_total
    # a refused load is raised in the loading thread and in every thread waiting for it
    assert len(refused) >= events["refused"]
