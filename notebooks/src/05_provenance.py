# %% [markdown]
# # 05 · Provenance: what is this file, and where does it come from?
#
# A folder of model files says little about itself: `model-final-v2-q8.gguf` could be anything.
# mlmf_lab answers two questions from the files and from a record kept while you work:
#
# 1. **What is it?** `ml.describe(path)` reads the file's own metadata (and the Hugging Face
#    `config.json` beside it): architecture, parameters, bytes per type, modalities, and a
#    content hash over the tensor bytes.
# 2. **How was it made?** `ml.Lineage("lineage.db")` is a small SQLite store. While it is
#    active, the library's operations (load, save, convert, quantize, LoRA inject/merge,
#    checkpoint, ...) **record themselves**: you write no logging code.
#
# The story: take the real all-MiniLM-L6-v2 encoder, quantize it, tune it with LoRA on top of
# the quantized weights (keeping the adapter), merge the adapter into the quantized model, and
# convert it to GGUF. Then ask the GGUF file where it comes from.

# %%
%matplotlib inline
import os

os.environ["TQDM_DISABLE"] = "1"  # no progress bars in the stored outputs

import collections
import random
import shutil
import tempfile
from pathlib import Path

import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F

import mlmf_lab as ml
from mlmf_lab.convert import convert
from mlmf_lab.models import MiniLM

random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
work = Path(tempfile.mkdtemp(prefix="mlmf-provenance-"))

# %% [markdown]
# ## 1 · What is this file?
#
# `describe` never guesses silently. The architecture below comes from `config.json`, the
# modality from the tokenizer shipped beside the weights; had nothing declared them, the
# description would say "guess from tensor names".

# %%
base_path = ml.examples.minilm_path()
base = ml.describe(base_path)
base

# %% [markdown]
# The content hash covers names, types, shapes and tensor bytes in a fixed order, streamed
# from the memory map. It ignores the layout, so the same weights saved as one file or as a
# sharded folder hash the same, and a model in memory hashes like the file it is saved to.

# %%
print("architecture:", base.architecture, "| from", base.architecture_source)
print("parameters:  ", f"{base.num_parameters:,}")
print("modalities:  ", base.modalities, "|", base.modalities_source)
print("sha256:      ", base.content_hash[:16], "…")

# %% [markdown]
# Per-tensor statistics are computed on demand, one tensor in memory at a time.

# %%
names = list(ml.open_weights(base_path))[:5]
for s in ml.provenance.tensor_stats(base_path, names=names):
    print(f"{s.name:45s} mean {s.mean:+.4f}  std {s.std:.4f}  |max| {s.abs_max:.3f}")

# %% [markdown]
# ## 2 · Work with a lineage store active
#
# Everything inside the `with` block is recorded. Nothing below calls a recording function:
# `MiniLM.from_pretrained` loads through `ml.load_into`, `ml.lora.*` and
# `ml.quant.quantize_model` report themselves, and so do `ml.save_state_dict` and `convert`.
#
# The order is the QLoRA one: quantize the base first, then train a LoRA adapter on top of it.
# The quantized linears stay frozen; gradients flow through them (their dequantized weight)
# into the float adapter. Merging dequantizes each weight, adds the LoRA update and
# requantizes with the layer's own scheme (`q8_0`, the block format the GGUF file uses too);
# the merge report gives the error that requantizing introduces.
#
# The "tuning" is a toy task (pull two paraphrases together, push an unrelated sentence away),
# enough to change the weights in a few steps.

# %%
lineage = ml.Lineage(work / "lineage.db")
pairs = ["A cat sleeps on the sofa.", "A kitten naps on the couch.", "Bond yields rose today."]

with lineage:
    model = MiniLM.from_pretrained(ml.examples.minilm_dir())                  # load
    ml.quant.quantize_model(model, "q8_0")                                    # quantize
    ml.lora.inject(model, rank=4, alpha=8, targets=["query", "value"])       # lora-inject
    batch = model.tokenize(pairs)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(5):
        states, _ = model(batch["input_ids"], batch["attention_mask"])
        emb = F.normalize(states.mean(1), dim=-1)
        loss = (1 - emb[0] @ emb[1]) + F.relu(emb[0] @ emb[2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    ml.lora.save_peft_adapter(model, work / "adapter")                        # lora-save
    report = ml.lora.merge(model)                                             # merge
    ml.lora.unload(model)
    ml.save_state_dict(model.state_dict(), work / "tuned-q8_0.safetensors")   # save
    convert(work / "tuned-q8_0.safetensors", work / "minilm-tuned.gguf", quant="q8_0")  # convert

print(f"toy loss {losses[0]:.2f} -> {losses[-1]:.2f}")
print(f"merged into {len(report.modules)} quantized layers, "
      f"requantization error {report.max_store_error:.1e}")
lineage

# %% [markdown]
# ## 3 · Where does this GGUF come from?
#
# `history` walks back from the file (found by its content hash, then its path) through every
# recorded activity. Live objects in memory are entities too: `MiniLM v2` is the model after
# quantizing, `MiniLM v3` after LoRA injection, `MiniLM v4` after merging. They link up
# because a state dict shares storage with the model it came from (and a quantized model,
# whose `state_dict()` dequantizes into fresh tensors, is recognised by its keys).
# (Content hashes of the computed files are left out of this printout: they depend on the
# last bits of floating-point arithmetic.)

# %%
gguf_path = work / "minilm-tuned.gguf"
history = lineage.history(gguf_path)
print(history.text(hashes=False))

# %% [markdown]
# The origin is the shipped MiniLM file, identified by content: its hash in the store is the
# one `describe` computed above.

# %%
(origin,) = lineage.origins(gguf_path)
print(origin.label, origin.kind, "| same content as the shipped file:",
      origin.sha256 == base.content_hash)

# %% [markdown]
# Each step records its parameters, times, and the agent: user, host, library versions and
# the git commit of the working tree.

# %%
quantize_step = next(a for a in history.steps if a.name == "quantize")
print("quantize params:", quantize_step.params)
print("agent keys:     ", sorted(quantize_step.agent))
print("versions known: ", sorted(quantize_step.agent["versions"])[:4], "…")

# %% [markdown]
# ## 4 · The lineage graph
#
# Boxes are entities (blue: weight files, green: the adapter, red: models in memory); white
# tags are activities.

# %%
ml.plots.plot_lineage(lineage, highlight=gguf_path, title="Everything recorded in this run")

# %% [markdown]
# `ml.views.LineageView` draws this layout to explore: drag to pan, scroll to zoom, click a
# node to read its record and light up its ancestors and descendants. With `focus` it keeps
# one file's story (the GGUF file, selected) and folds repeated steps into one. (Where no
# kernel runs, the output is a static figure of that graph.)

# %%
story = ml.views.LineageView(lineage, focus=gguf_path, title="The GGUF file's story")
story

# %% [markdown]
# A click shows the node's record as text, as `story.record()` returns it: path, sha256,
# size, the step that made it (parameters, time, agent) and the history that reproduces it.
# Its first lines (times and hashes differ on every run):

# %% tags=["nbval-ignore-output"]
print("\n".join(story.record().splitlines()[:6]))

# %% [markdown]
# The same graph as a `networkx.DiGraph` (data flows along the edges), for your own queries:

# %%
g = lineage.graph()
src, dst = lineage.entity(base_path).id, lineage.entity(gguf_path).id
print(" -> ".join(g.nodes[n]["name"] for n in nx.shortest_path(g, src, dst)))

# %% [markdown]
# The adapter saved on the way and the GGUF file share the start of their history. `diff`
# shows where they part:

# %%
print(lineage.diff(work / "adapter", gguf_path).text(hashes=False))
print("the adapter is recorded as:", lineage.entity(work / "adapter").kind)

# %% [markdown]
# What does the GGUF file say about itself? Its own metadata and tensor table give the
# storage types and the bits per weight:

# %%
tuned = ml.describe(gguf_path, hash=False)
print(tuned.format, "|", f"{tuned.num_parameters:,} parameters",
      f"| {8 * tuned.nbytes / tuned.num_parameters:.2f} bits per weight",
      f"(the original: {8 * base.nbytes / base.num_parameters:.2f})")
for kind, nbytes in tuned.bytes_by_type.items():
    print(f"  {kind:8s} {ml.units.human_bytes(nbytes)}")

# %% [markdown]
# ## 5 · A model card with its provenance
#
# `ml.provenance.save_model_card` turns a description into a Hugging Face style `README.md`:
# YAML front matter with `base_model` and `base_model_relation` (here taken from the lineage:
# LoRA tuning makes it a `finetune`), a description table, and the recorded history.

# %%
card_path = ml.provenance.save_model_card(tuned, work, lineage=lineage,
                                          base_model="sentence-transformers/all-MiniLM-L6-v2")
print("\n".join(card_path.read_text().splitlines()[:9]))

# %% [markdown]
# ## 6 · W3C PROV: export and read back
#
# The store exports the W3C PROV data model (PROV-JSON) through the `prov` package, so other
# provenance tools can read it. Reading it back gives the same document.

# %%
prov_path = lineage.export_prov(work / "lineage.prov.json", focus=gguf_path)
doc = ml.provenance.read_prov(prov_path)
print("round trip equal:", doc == lineage.to_prov(focus=gguf_path))
kinds = collections.Counter(type(r).__name__ for r in doc.get_records())
for kind, n in sorted(kinds.items()):
    print(f"  {kind:22s} {n}")

# %% [markdown]
# ## Notes
#
# - **No store, no cost.** Without an active store, operations emit nothing and hash nothing.
# - **Several processes** (e.g. `torchrun` workers) can record into one store at once: it uses
#   SQLite's WAL journal and one transaction per activity.
# - **From a terminal:** `mlmf-lab lineage minilm-tuned.gguf --store lineage.db` prints the
#   same chain as `history` above.

# %% [markdown]
# Clean up: remove the scratch folder this notebook wrote into.

# %%
shutil.rmtree(work)
