"""ModelCache: measured budget, LRU, pinning, TTL, memory pressure, stale files, warm-up."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.cache import ModelCache
from mlmf_lab.cache.footprint import measure
from mlmf_lab.cache.warmup import WarmUp
from mlmf_lab.errors import CacheError, ConfigError, MLMFError

KB = 1000


def blob(n: int) -> torch.Tensor:
    """A fresh anonymous tensor of exactly n bytes."""
    return torch.zeros(n, dtype=torch.uint8)


def load_blob(key: tuple[str, int]) -> torch.Tensor:
    return blob(key[1])


def labels(cache: ModelCache) -> list[str]:
    return cache.keys()


@pytest.fixture()
def models(tmp_path: Path) -> list[Path]:
    torch.manual_seed(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"m{i}.safetensors"
        ml.save_state_dict({"w": torch.randn(64, 32), "b": torch.randn(32)}, p)
        paths.append(p)
    return paths


def test_miss_then_hit_returns_the_same_object(models: list[Path]) -> None:
    cache = ml.ModelCache(1_000_000)
    first = cache.get_or_load(models[0])
    assert cache.get_or_load(str(models[0])) is first  # str and Path name the same file
    torch.testing.assert_close(first, ml.load_state_dict(models[0]), rtol=0, atol=0)
    s = cache.stats()
    assert (s.lookups, s.hits, s.misses, s.loads, s.entries) == (2, 1, 1, 1, 1)
    assert s.bytes_held == s.mapped_bytes == (64 * 32 + 32) * 4 and s.anonymous_bytes == 0
    assert s.hit_ratio == 0.5 and s.saved_seconds > 0
    assert [e.event for e in s.events] == ["miss", "load", "hit"]


def test_lru_order_under_a_budget_smaller_than_the_sum() -> None:
    cache = ModelCache(3 * KB)
    for name in "abc":
        cache.get_or_load((name, KB), load_blob)
    cache.get_or_load(("a", KB), load_blob)  # a is now the most recent; b the least
    cache.get_or_load(("d", KB), load_blob)
    assert labels(cache) == ["('c', 1000)", "('a', 1000)", "('d', 1000)"]
    assert cache.stats().evictions["budget"] == 1
    cache.get_or_load(("e", 2 * KB), load_blob)  # needs two slots: c then a go
    assert labels(cache) == ["('d', 1000)", "('e', 2000)"]
    assert cache.bytes_held == 3 * KB


def test_pinned_entries_are_never_evicted_and_block_what_cannot_fit() -> None:
    cache = ModelCache(3 * KB)
    cache.put("base", blob(KB), pin=True)
    for i in range(10):
        cache.get_or_load(("x", i, KB), lambda k: blob(k[2]))
    assert "base" in cache and cache.stats().pinned_bytes == KB
    with pytest.raises(CacheError, match=r"pinned entries hold 1000 B of the 2.9 KiB budget"):
        cache.put("big", blob(2 * KB + 1))
    cache.unpin("base")
    cache.put("big", blob(2 * KB + 1))
    assert "base" not in cache  # unpinned, it was the least recently used


def test_larger_than_the_budget_is_refused_or_served_uncached() -> None:
    cache = ModelCache(KB)
    cache.put("small", blob(100))
    with pytest.raises(CacheError, match=r"'big'.*1001 bytes.*larger than the whole budget") as e:
        cache.get_or_load("big", lambda k: blob(KB + 1))
    assert "uncached_ok=True" in str(e.value)
    value = cache.get_or_load("big", lambda k: blob(KB + 1), uncached_ok=True)
    assert value.nbytes == KB + 1 and "big" not in cache and "small" in cache
    assert [e.event for e in cache.stats().events][-3:] == ["refused", "miss", "uncached"]


def test_bytes_held_equals_the_measured_values() -> None:
    cache = ModelCache(10 * KB)
    shared = blob(3 * KB)
    cache.put("pair", {"a": shared, "b": shared[10:]})  # one storage, counted once
    cache.put("model", torch.nn.Linear(10, 10))
    cache.put("q", [blob(500), blob(250)])
    assert cache.bytes_held == sum(measure(cache.get(k)).total for k in ("pair", "model", "q"))
    assert cache.bytes_held == 3 * KB + (100 + 10) * 4 + 750


def test_memory_pressure_evicts_lru_until_recovered_and_keeps_pinned() -> None:
    held_elsewhere = 0
    cache: ModelCache

    def available() -> int:  # a machine with 10 kB where the cache's bytes are the only load
        return 10 * KB - cache.bytes_held - held_elsewhere

    cache = ModelCache(8 * KB, min_available_memory=4 * KB, available_memory=available)
    cache.put("pinned", blob(KB), pin=True)
    for name in "abcde":  # a fifth kB would leave 4 kB available: still fine
        cache.put(name, blob(KB))
    assert len(cache) == 6 and available() == 4 * KB
    held_elsewhere = 3 * KB  # another program takes 3 kB
    assert cache.check_memory() == 3
    assert labels(cache) == ["'pinned'", "'d'", "'e'"] and available() == 4 * KB
    held_elsewhere = 6 * KB  # only the pinned entry is left, and it stays
    cache.check_memory()
    assert labels(cache) == ["'pinned'"] and cache.stats().evictions["memory"] == 5


def test_memory_pressure_is_checked_on_lookups_and_inserts() -> None:
    low = [False]
    cache = ModelCache(8 * KB, min_available_memory=1, available_memory=lambda: 0 if low[0] else 2)
    cache.put("a", blob(KB))
    low[0] = True
    cache._next_pressure_check = 0.0  # the next lookup reads memory
    assert cache.get("a") is None and cache.stats().evictions["memory"] == 1


def test_ttl_expires_unpinned_entries() -> None:
    now = [0.0]
    cache = ModelCache(10 * KB, ttl=60, clock=lambda: now[0])
    cache.put("old", blob(KB))
    cache.put("kept", blob(KB), pin=True)
    now[0] = 30.0
    cache.put("young", blob(KB))
    assert cache.get("old") is not None
    now[0] = 61.0
    assert cache.get("old") is None and cache.get("kept") is not None
    assert cache.expire() == 0  # "young" is 31 s old
    now[0] = 95.0
    assert cache.expire() == 1 and labels(cache) == ["'kept'"]
    assert cache.stats().evictions["ttl"] == 2


def test_a_changed_file_is_never_served_stale(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ml.save_state_dict({"w": torch.zeros(8)}, path)
    cache = ModelCache(1_000_000)
    assert cache.get_or_load(path)["w"].sum() == 0
    st = path.stat()
    ml.save_state_dict({"w": torch.ones(8)}, path)  # same size; atomic save = new inode
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    assert cache.get_or_load(path)["w"].sum() == 8
    data = bytearray(path.read_bytes())  # in place: same size and inode, new mtime
    data[-4:] = torch.tensor([2.0]).numpy().tobytes()
    st = path.stat()
    path.write_bytes(bytes(data))
    # a coarse file-system clock may stamp both writes alike; a second later, as a real edit
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.get_or_load(path)["w"][-1] == 2.0
    s = cache.stats()
    assert (s.misses, s.hits, s.evictions["stale"], s.entries) == (3, 0, 2, 1)


def test_sharded_folder_key_covers_every_shard(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    ml.save_state_dict({"a": torch.zeros(100), "b": torch.zeros(100)}, folder, max_shard_size=500)
    cache = ModelCache(1_000_000)
    cache.get_or_load(folder)
    shard = sorted(folder.glob("model-0000*.safetensors"))[-1]
    os.utime(shard, ns=(0, shard.stat().st_mtime_ns + 10**9))
    cache.get_or_load(folder)
    assert cache.stats().evictions["stale"] == 1


def test_errors_name_the_problem(tmp_path: Path) -> None:
    cache = ModelCache("1MiB")
    assert cache.max_bytes == 2**20
    with pytest.raises(CacheError, match="cannot read the file to cache") as e:
        cache.get_or_load(tmp_path / "missing.safetensors")
    assert e.value.path == str(tmp_path / "missing.safetensors")
    with pytest.raises(CacheError, match="cannot read the file"):
        cache.get_or_load("no-such-model")  # no loader: it must be a file
    with pytest.raises(CacheError, match=r"'x' is not in the cache; cached: nothing"):
        cache.pin("x")
    with pytest.raises(CacheError, match="hashable"):
        cache.get_or_load(["a"], lambda k: 1)
    with pytest.raises(ConfigError, match="max_bytes must be .* found 'lots'"):
        ModelCache("lots")
    with pytest.raises(ConfigError, match="ttl must be"):
        ModelCache(10, ttl=0)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\0\0\0\0\0\0\0{")
    with pytest.raises(MLMFError):
        cache.get_or_load(bad)
    assert cache.stats().load_errors == 1 and len(cache) == 0


def test_concurrent_misses_of_one_key_load_once() -> None:
    calls = []
    gate = threading.Event()

    def slow(key: str) -> torch.Tensor:
        calls.append(key)
        gate.wait(5)
        return blob(KB)

    cache = ModelCache(10 * KB)
    results: list[torch.Tensor] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_load("k", slow)))
               for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while cache.stats().misses < 4 and time.monotonic() < deadline:  # all four are waiting
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(5)
    assert calls == ["k"] and len(results) == 4 and all(r is results[0] for r in results)
    s = cache.stats()
    assert (s.loads, s.misses, s.hits) == (1, 4, 0)


def test_warm_loads_in_a_background_thread(models: list[Path], tmp_path: Path) -> None:
    threads: set[str] = set()

    def loader(p: Path) -> dict[str, torch.Tensor]:
        threads.add(threading.current_thread().name)
        return ml.load_state_dict(p)

    cache = ModelCache(1_000_000)
    warm = cache.warm([*models, tmp_path / "missing.safetensors"], loader, progress=False)
    assert warm.wait(10).done
    assert threading.current_thread().name not in threads and len(threads) == 1
    assert list(warm.errors) == [str(tmp_path / "missing.safetensors")]
    assert all(p in cache for p in models)
    before = cache.stats().hits
    for p in models:
        cache.get_or_load(p, loader)
    assert cache.stats().hits == before + 3


def test_warm_up_runs_the_load_it_is_given() -> None:
    # WarmUp knows no cache: any function of a path will do; a failure is kept, not raised
    seen: list[str] = []

    def load(p: str) -> str:
        if p == "bad":
            raise OSError("cannot read bad")
        seen.append(p)
        return p

    job = WarmUp(load, ["a", "bad", "b"], progress=False).wait(10)
    assert job.done and seen == ["a", "b"]
    assert list(job.errors) == ["bad"] and str(job.errors["bad"]) == "cannot read bad"


def test_evict_clear_and_html(models: list[Path]) -> None:
    cache = ModelCache(1_000_000)
    cache.get_or_load(models[0])
    cache.put("<script>", blob(10), pin=True)
    html = cache._repr_html_()
    assert "m0.safetensors" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert "yes" in html and "memory-mapped" in html
    assert "hit ratio" in cache.stats()._repr_html_()
    assert cache.evict(models[0]) and not cache.evict(models[0])
    cache.clear()
    s = cache.stats()
    assert (s.entries, s.bytes_held, s.pinned_bytes, s.evictions["manual"]) == (0, 0, 0, 2)


def test_timeline_figure_draws_the_event_log() -> None:
    cache = ModelCache(3 * KB)
    for name in "abcab":
        cache.get_or_load((name, KB + 24), load_blob)  # the third entry evicts the first
    stats = cache.stats()
    fig = ml.plots.plot_cache_timeline(stats, x="event")
    top, strip = fig.axes
    held, budget = top.lines[:2]
    assert list(held.get_ydata()) == [e.held / 1024 for e in stats.events]
    assert list(budget.get_ydata()) == [3 * KB / 1024] * 2
    assert {t.get_text() for t in top.get_legend().get_texts()} >= {"eviction (budget)", "budget"}
    misses = strip.collections[1].get_offsets()
    assert len(misses) == stats.misses == 5 and top.get_ylabel() == "KiB held"
    with pytest.raises(ValueError, match="'time' or 'event'"):
        ml.plots.plot_cache_timeline(stats, x="step")
