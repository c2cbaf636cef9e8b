# %% [markdown]
# # 07 · Caching models: a byte budget that is never exceeded
#
# Notebooks and services load the same models again and again. `ml.ModelCache` keeps loaded
# models in memory under a **byte budget**: least recently used models leave first, pinned
# ones never do, and a file that changed on disk is reloaded rather than served stale.
#
# This notebook measures what a loaded model really costs, loads several models under a
# budget smaller than their sum, pins one, plots the cache's timeline, measures the
# speed-up of a background warm-up, and stores a derived model in the disk tier.

# %%
%matplotlib inline
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mlmf_lab as ml
from mlmf_lab.cache.disk import DiskCache, derive_key
from mlmf_lab.cache.footprint import measure

random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
work = Path(tempfile.mkdtemp())
MiB = 2**20

# %% [markdown]
# ## What does a loaded model cost?
# Sizes are **measured**, never guessed from shapes: `measure` walks the object, counts every
# storage once (tied weights and views share one) and asks the kernel where each storage
# lives. A state dict from `ml.load_state_dict` is **memory-mapped** from its safetensors file
# (page cache the OS can drop and re-read); a cast to another dtype copies the weights into
# **anonymous** memory that only freeing returns.

# %%
minilm = ml.examples.minilm_path()
mapped = measure(ml.load_state_dict(minilm))
copied = measure(ml.load_state_dict(minilm, dtype=torch.float16))
print(f"MiniLM as stored: {mapped.mapped / MiB:.1f} MiB memory-mapped, "
      f"{mapped.anonymous / MiB:.1f} MiB anonymous, {mapped.storages} storages")
print(f"MiniLM in fp16:   {copied.mapped / MiB:.1f} MiB memory-mapped, "
      f"{copied.anonymous / MiB:.1f} MiB anonymous")

# %%
emb = torch.nn.Embedding(1000, 64)
head = torch.nn.Linear(64, 1000, bias=False)
head.weight = emb.weight  # tied input/output embeddings, as in most language models
tied = torch.nn.ModuleDict({"emb": emb, "head": head})
print(f"tied model: {measure(tied).total} bytes = one 1000x64 fp32 matrix "
      f"({1000 * 64 * 4} bytes), not two")

# %% [markdown]
# **Both kinds count against the budget.** The budget bounds the bytes the cache keeps alive:
# a memory-mapped model pins its file's pages in the page cache as soon as it is used, so
# leaving them out would let a "1 GiB" cache hold ten gigabytes. `stats()` reports the two
# apart.
#
# ## Several models under a budget smaller than their sum
# Four checkpoints of 4, 6, 8 and 10 MiB (28 MiB in total) under a 20 MiB budget.

# %%
sizes = {"small": 4, "medium": 6, "large": 8, "xlarge": 10}
paths = {}
for name, mib in sizes.items():
    paths[name] = work / f"{name}.safetensors"
    n = mib * MiB // 4 // 1024
    ml.save_state_dict({"proj.weight": torch.randn(n, 1024)}, paths[name])

cache = ml.ModelCache("20MiB")
for name in ["small", "medium", "large", "small", "xlarge", "medium", "small"]:
    before = cache.stats()
    cache.get_or_load(paths[name])
    after = cache.stats()
    outcome = "hit " if after.hits > before.hits else "miss"
    evicted = [os.path.basename(e.key) for e in after.events[len(before.events):]
               if e.event == "evict"]
    print(f"{name:>7}: {outcome}  held {after.bytes_held / MiB:5.1f} MiB"
          + (f"  evicted {', '.join(evicted)}" if evicted else ""))

# %% [markdown]
# The cache shows as a table, most recently used first:

# %%
cache

# %%
s = cache.stats()
print(f"lookups {s.lookups} = hits {s.hits} + misses {s.misses}; hit ratio {s.hit_ratio:.2f}")
print("evictions by reason:", {k: v for k, v in s.evictions.items() if v})
print(f"held {s.bytes_held / MiB:.1f} MiB of {s.max_bytes / MiB:.0f} MiB "
      f"({s.mapped_bytes / MiB:.1f} MiB memory-mapped, {s.anonymous_bytes / MiB:.1f} MiB anonymous)")

# %% [markdown]
# ## Pinning
# A pinned model is never evicted (not by the budget, the TTL or memory pressure) until
# `unpin`. Pin `xlarge`, then cycle through the others: they take turns in what is left.

# %%
cache.get_or_load(paths["xlarge"])
cache.pin(paths["xlarge"])
for name in ["small", "medium", "large", "small", "medium"]:
    cache.get_or_load(paths[name])
print("cached:", [os.path.basename(k) for k in cache.keys()])
print("pinned bytes:", cache.stats().pinned_bytes // MiB, "MiB")

# %% [markdown]
# A model that cannot fit is **refused with a clear error**, or served without caching when
# the caller says so:

# %%
huge = work / "huge.safetensors"
ml.save_state_dict({"w": torch.zeros(12 * MiB // 4)}, huge)
try:
    cache.get_or_load(huge)
except ml.errors.CacheError as e:
    print("CacheError:", e)
sd = cache.get_or_load(huge, uncached_ok=True)
print("served uncached:", f"{measure(sd).total / MiB:.0f} MiB;", "cached?", huge in cache)

# %% [markdown]
# ## A changed file is never served stale
# A file's key includes its size, modification time and inode. Overwrite `small` and ask
# again: the old entry is dropped (reason `stale`) and the new weights are loaded.

# %%
old = cache.get_or_load(paths["small"])
ml.save_state_dict({"proj.weight": torch.ones(1024, 1024)}, paths["small"])
new = cache.get_or_load(paths["small"])
print("same object:", new is old, "| new weights sum:", float(new["proj.weight"].sum()))
print("stale evictions:", cache.stats().evictions["stale"])

# %% [markdown]
# ## Memory pressure
# With `min_available_memory`, entries are evicted (LRU, pinned ones excepted) while the
# system's available memory (psutil) is below the threshold. Here the reading function is
# replaced by a model of a 64 MiB machine, so that the result does not depend on this
# computer; the real reading is `psutil.virtual_memory().available`.

# %%
other_programs = 0


def available() -> int:
    return 64 * MiB - other_programs - pressure.bytes_held


pressure = ml.ModelCache("40MiB", min_available_memory="24MiB", available_memory=available)
for name in ["small", "medium", "large", "xlarge"]:
    pressure.get_or_load(paths[name])
print("before:", [os.path.basename(k) for k in pressure.keys()],
      f"available {available() / MiB:.0f} MiB")
other_programs = 20 * MiB  # another program starts
pressure.check_memory()
print("after: ", [os.path.basename(k) for k in pressure.keys()],
      f"available {available() / MiB:.0f} MiB,",
      "memory evictions:", pressure.stats().evictions["memory"])

# %% [markdown]
# ## The timeline
# Every hit, miss, load and eviction is in `stats().events` (time, event, key, bytes, bytes
# held after it). The figure plots the bytes held against the budget (by event number, as
# these loads take milliseconds): budget evictions as the cache cycles, the pinned
# `xlarge` staying put, the cross where `huge` was refused and the plus where it was served
# uncached, and the stale eviction of the rewritten `small` file at the end.

# %%
fig = ml.plots.plot_cache_timeline(cache.stats(), x="event")
fig

# %% [markdown]
# ## Warm-up in the background, watched live
# `warm(paths)` loads models in a background thread (with a progress bar) while the notebook
# goes on. The loader here does real work: it loads each checkpoint and MiniLM in fp16
# (a copy per model). We time a cold first use of every model, then the first use after a
# warm-up.

# %%
warm_paths = [minilm, *paths.values()]


def load_fp16(path):
    return ml.load_state_dict(path, dtype=torch.float16)


cold = ml.ModelCache("200MiB")
t0 = time.perf_counter()
for p in warm_paths:
    cold.get_or_load(p, load_fp16)
cold_s = time.perf_counter() - t0

# %% [markdown]
# `ml.views.CacheView` follows a cache live: bytes held against the budget, hits and misses
# as a timeline, and the entries, with buttons that pin, unpin or evict them in the Python
# cache. The cache pushes its events to the view (at most ten redraws a second), so the view
# keeps up with the warm-up in the next cell. (Where no kernel runs, the output is a picture
# of the cache as the view opened: empty.)

# %%
warmed = ml.ModelCache("200MiB")
view = ml.views.CacheView(warmed, title="warm-up")
view

# %% tags=["nbval-ignore-output"]
job = warmed.warm(warm_paths, load_fp16)  # returns at once; loading runs in a thread
job.wait()
t0 = time.perf_counter()
for p in warm_paths:
    warmed.get_or_load(p, load_fp16)
warm_s = time.perf_counter() - t0
print(f"first use, cold: {cold_s * 1e3:.1f} ms; after warm-up: {warm_s * 1e3:.3f} ms "
      f"({cold_s / warm_s:,.0f}x faster); the warm-up itself took {job.seconds * 1e3:.0f} ms "
      "in the background")

# %%
ws = warmed.stats()
print("after warm-up:", ws.hits, "hits,", ws.misses, "misses,", ws.loads, "loads, errors:",
      job.errors)

# %% [markdown]
# What the view drew, as a static figure: the loads in the background, then the burst of hits.

# %%
ml.plots.plot_cache_timeline(ws)

# %% [markdown]
# ## The disk tier: derived models, content-addressed
# Converting, dequantizing or merging a model takes time; the result can be kept on disk.
# `DiskCache` stores artifacts like the Hugging Face hub cache: files in `blobs/` named by
# their sha256 (identical files stored once), `snapshots/<key>/<rev>/` with the artifact's
# files, `refs/<key>.json` saying what a key holds. `derive_key` names "this operation on
# these inputs with these parameters"; a changed input gives a new key.

# %%
disk = DiskCache(work / "disk-cache")
builds = []


def to_fp16(out):
    builds.append(out.name)
    ml.save_state_dict(ml.load_state_dict(paths["large"], dtype=torch.float16), out)


key = derive_key("convert-fp16", [paths["large"]], {"dtype": "float16"})
first = disk.get_or_create(key, to_fp16, meta={"operation": "convert-fp16"})
again = disk.get_or_create(key, to_fp16)
print("built", len(builds), "time; same file:", first.path == again.path)
print(f"{first.size / MiB:.1f} MiB, sha256 {first.files['model.safetensors'][:16]}…")
fp16 = cache.get_or_load(again.path)  # and it loads (and caches) like any weight file
print(fp16["proj.weight"].dtype, tuple(fp16["proj.weight"].shape))

# %% [markdown]
# Pruning keeps the folder in bounds: by age (`older_than="7d"`) and by total size, least
# recently used first. The same from a terminal: `mlmf-lab cache ls|prune --max-bytes 10GB
# --older-than 7d`.

# %%
disk.put_tensors("scratch", {"w": torch.zeros(1024, 1024)}, meta={"operation": "merge"})
print([e.key.split("-")[0] for e in disk.ls()], f"{disk.total_bytes() / MiB:.1f} MiB on disk")
report = disk.prune(max_bytes="5MiB")
print("pruned:", [e.meta["operation"] for e in report.removed], f"freed {report.freed_bytes / MiB:.1f} MiB,",
      f"{report.remaining_bytes / MiB:.1f} MiB remain")

# %% [markdown]
# Clean up: remove the scratch folder this notebook wrote into.

# %%
shutil.rmtree(work)
