# %% [markdown]
# # 06 · Distributed loading with `torch.distributed`
#
# When a model is split over several processes (ranks), each rank should read **only the
# bytes it needs**, and a problem on one rank (a missing file, a crash) should stop every
# rank at once with a clear message rather than leave them waiting forever.
#
# The lab does this in three steps:
#
# 1. **Plan** from the file's header alone (names, shapes, dtypes, offsets): a `ShardPlan`
#    says which rank holds which tensor, or which slice of it.
# 2. **Load**: `ml.distributed.load_shard(path, plan)` on each rank reads those byte ranges
#    (`os.preadv` at the offsets the header gives) and counts them.
# 3. **Gather** (when you want the whole model back on one rank) or **compute** in
#    tensor-parallel fashion on the slices.
#
# The processes are real: PyTorch's `torch.distributed` with the gloo backend on
# 127.0.0.1, launched with `torchrun`.

# %%
%matplotlib inline
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

import mlmf_lab as ml

D = ml.distributed
torch.manual_seed(0)
work = Path(tempfile.mkdtemp())
path = ml.examples.minilm_path()  # the real all-MiniLM-L6-v2 encoder (a BERT)
wf = ml.open_weights(path)
print(f"{len(wf)} tensors, {ml.units.human_bytes(wf.nbytes)} of tensor data")

# %% [markdown]
# ## Plans: four strategies
#
# | strategy | what each rank holds |
# |---|---|
# | `replicate` | everything (the baseline) |
# | `layers` | a contiguous block of layers, balanced by bytes (pipeline parallel) |
# | `tensor` | a 1/N slice of every big matrix: Megatron column/row splits (tensor parallel) |
# | `modality` | one modality's encoder per rank, from the model's declared modalities |
#
# A pipeline split over two ranks of MiniLM cannot be even: the word-embedding table alone
# is over half of the file, and a table moves as one unit.

# %%
layers = D.plan(path, "layers", world_size=2)
print(layers)

# %% [markdown]
# Tensor parallelism cuts the big matrices instead. The rule table for BERT says which
# weights split by output features (column: query, key, value, intermediate), which by
# input features (row: the two output projections) and which by vocabulary rows
# (word embeddings). Everything else (LayerNorms, position tables, row biases) is small
# and replicated.

# %%
tensor = D.plan(path, "tensor", world_size=2)
print(tensor)
for rule in D.ARCH_RULES["bert"]:
    print(f"  {rule.role:7s} {rule.pattern}")

# %% [markdown]
# The figure shows the file's bytes from left to right and which rank holds them: a
# pipeline split gives each rank a stretch of the file, a tensor split gives each rank
# half of almost every tensor (pale bars are replicas).

# %%
ml.plots.plot_shard_plan(layers)

# %%
ml.plots.plot_shard_plan(tensor)

# %% [markdown]
# ## What one rank reads
#
# `load_shard` can run without a process group when you name the rank. Rank 1 of the
# tensor plan gets the second half of the vocabulary and the second half of each
# output projection's input columns; the counted bytes match the plan, about half the file.

# %%
shard = D.load_shard(path, tensor, rank=1, world_size=2)
print(repr(shard))
print(f"read {shard.bytes_read:,} bytes = {shard.bytes_read / tensor.total_bytes:.3f} of the file")
name = "encoder.layer.0.output.dense.weight"
with safe_open(path, "pt") as f:  # the same columns read by safetensors itself
    cols = f.get_slice(name).get_shape()[1]
    same = torch.equal(shard[name], f.get_slice(name)[:, cols // 2:])
print(name, tuple(shard[name].shape), "equal to safetensors' slice:", same)

# %% [markdown]
# ## Multi-modal models: modality → ranks
#
# A multi-modal file declares its modalities in its metadata (`modalities`: modality →
# tensor-name prefixes). Each modality's tower goes to its own rank(s); tensors of no
# modality (the fusion head) are replicated. With three ranks, the spare rank helps the
# heaviest tower.

# %%
g = torch.Generator().manual_seed(0)
mm = {f"vision.blocks.{i}.weight": torch.randn(256, 256, generator=g) for i in range(6)}
mm |= {f"text.layers.{i}.weight": torch.randn(192, 192, generator=g) for i in range(4)}
mm |= {f"audio.layers.{i}.weight": torch.randn(128, 128, generator=g) for i in range(4)}
mm["fusion.head.weight"] = torch.randn(8, 64, generator=g)
mm_path = work / "multimodal.safetensors"
ml.save_state_dict(mm, mm_path, metadata={"modalities": {
    "vision": ["vision."], "text": ["text."], "audio": ["audio."]}})
by_modality = D.plan(mm_path, "modality", world_size=4)
print(by_modality)

# %%
ml.plots.plot_shard_plan(by_modality)

# %% [markdown]
# ## A real two-rank run with `torchrun`
#
# The script below is what every rank runs. `D.setup()` joins the gloo process group
# from torchrun's environment; every collective is bounded by its timeout. The run:
#
# - loads its tensor-parallel shard of MiniLM and reports the bytes it read;
# - gathers the full state on rank 0 and compares it to a single-process load;
# - runs a tensor-parallel forward through a small stack of linears (column, row, ...)
#   and compares it with the unsharded stack;
# - then gives rank 1 a file that does not exist, to see how a fault is reported.

# %%
stack = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 16),
                            torch.nn.Linear(16, 8))
stack_path = work / "stack.safetensors"
ml.save_state_dict({f"stack.{k}": v for k, v in stack.state_dict().items()}, stack_path)
x = torch.randn(4, 16, generator=g)
with torch.no_grad():
    expected = stack[2](torch.relu(stack[1](torch.relu(stack[0](x)))))
torch.save({"x": x, "expected": expected}, work / "stack_io.pt")

script = work / "rank.py"
_ = script.write_text('''
import json, sys, torch
import mlmf_lab as ml
from mlmf_lab.errors import DistributedError

D = ml.distributed
path, stack_path, io_path, out = sys.argv[1:5]
rank, n = D.setup(timeout=30)
report = {"rank": rank}

plan = D.plan(path, "tensor")
shard = D.load_shard(path, plan)
report["bytes_read"] = shard.bytes_read
full = D.gather_state_dict(shard)                  # collective: every rank calls it
if rank == 0:
    single = ml.load_state_dict(path)
    report["gathered_equals_single"] = list(full) == list(single) and all(
        torch.equal(full[k], single[k]) for k in single)

rules = [(r"stack\\.[02]\\.", "column"), (r"stack\\.1\\.weight$", "row")]
stack = D.load_shard(stack_path, D.plan(stack_path, "tensor", rules=rules, arch=None))
io = torch.load(io_path)
y = D.tp_linear_stack(io["x"], stack, ["stack.0", "stack.1", "stack.2"])
report["tp_max_abs_diff"] = float((y - io["expected"]).abs().max())

mine = path if rank == 0 else path + ".missing"   # rank 1's copy is missing
try:
    D.load_shard(mine, plan)
except DistributedError as e:
    report["fault"] = str(e)
json.dump(report, open(f"{out}.{rank}.json", "w"))
D.teardown()
''')

# %%
import socket

with socket.socket() as s:  # a free port on the loopback interface
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
       "--master-addr=127.0.0.1", f"--master-port={port}", str(script),
       str(path), str(stack_path), str(work / "stack_io.pt"), str(work / "report")]
run = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                     env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
print("torchrun exit code:", run.returncode)
reports = [json.loads((work / f"report.{r}.json").read_text()) for r in range(2)]

# %% [markdown]
# Each rank read about half of the file; rank 0's gathered state equals a single-process
# load exactly; the tensor-parallel forward matches the unsharded stack.

# %%
for rep in reports:
    print(f"rank {rep['rank']}: read {rep['bytes_read']:,} bytes "
          f"({rep['bytes_read'] / tensor.total_bytes:.3f} of the file), "
          f"TP forward equals the unsharded stack: {rep['tp_max_abs_diff'] < 1e-5}")
print("gathered on rank 0 == single-process load:", reports[0]["gathered_equals_single"])

# %%
ml.plots.plot_shard_plan(tensor, bytes_read=[rep["bytes_read"] for rep in reports])

# %% [markdown]
# And the fault: rank 1 could not open its file. Both ranks stopped at once with the same
# `DistributedError`, naming the rank and the file (with the default timeout they would
# also stop if a rank had crashed or hung).

# %%
for rep in reports:
    print(f"rank {rep['rank']}: {rep['fault']}")

# %% [markdown]
# ## Interop: PyTorch Distributed Checkpoint (DCP)
#
# Training frameworks save sharded checkpoints with `torch.distributed.checkpoint`. The
# converter reads such a folder (DCP reassembles the chunks) into safetensors, and writes
# one when the destination ends in `.dcp`; on the command line:
# `mlmf-lab convert model.safetensors ckpt.dcp` and back.

# %%
dcp_dir = ml.convert(mm_path, work / "multimodal.dcp")
print(sorted(p.name for p in dcp_dir.iterdir()))
back = ml.convert(dcp_dir, work / "from_dcp.safetensors")
original, restored = ml.load_state_dict(mm_path), ml.load_state_dict(back)
print("metadata kept:", ml.open_weights(back).metadata["modalities"])
print("round trip exact:", original.keys() == restored.keys()
      and all(torch.equal(original[k], restored[k]) for k in original))

# %% [markdown]
# ## Where next
#
# - `benchmarks/bench_distributed.py` measures load time and peak memory per rank for
#   1, 2 and 4 ranks on a 1 GiB model, against every rank loading the whole file.
# - In your own scripts: `rank, n = ml.distributed.setup()` under `torchrun`, then
#   `plan`, `load_shard`, `gather_state_dict` as above; `ml.distributed.launch(fn, n)`
#   runs a function on N local ranks from Python.

# %% [markdown]
# Clean up: remove the scratch folder this notebook wrote into.

# %%
shutil.rmtree(work)
