# %% [markdown]
# # 09 · Comparing models: weights, activations and outputs side by side
#
# A quantized, adapted or fine-tuned model is a copy of another one that moved. `ml.compare(a, b)`
# says **where** it moved and **how much it matters**, at three levels:
#
# - **weights** (always): every tensor matched by name — also between a Hugging Face folder and a
#   GGUF file, through `gguf`'s own name tables — with ‖ΔW‖/‖W‖, cosine, max |Δ|,
#   σ = Σ|ΔW| / (Σ|A| + Σ|B|), the share of elements changed, per-layer aggregates and, for
#   matrices, the leading singular values of ΔW (what an adapter changed);
# - **activations** (with inputs): per-layer linear CKA and hidden-state cosine, and for causal
#   LMs a logit lens;
# - **outputs** (with inputs): for language models the statistics `llama-perplexity
#   --kl-divergence` prints (KL percentiles, Δp, RMS Δp, same top p, PPL ratio with its
#   correlation-aware uncertainty); for sentence encoders the embeddings' cosine and the rank
#   agreement of their similarity matrices.
#
# The weights are streamed one tensor pair at a time, so two 1 GiB files cost far less than
# 2 GiB of memory (see the benchmark in the README).

# %%
%matplotlib inline
import copy
import logging
import os
import tempfile
import warnings
from pathlib import Path

os.environ["TQDM_DISABLE"] = "1"  # no progress bars in the stored outputs
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import mlmf_lab as ml  # noqa: E402
from mlmf_lab.models import MiniLM  # noqa: E402
from mlmf_lab.tables import Column, Table  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)  # llama.cpp has no place for the pooler
logging.getLogger("gguf").setLevel(logging.ERROR)  # BERT's [CLS] is no llama.cpp special token
hf_logging.set_verbosity_error()
torch.manual_seed(0)
work = Path(tempfile.mkdtemp())
minilm = ml.examples.minilm_dir()
base = MiniLM.from_pretrained(minilm)

# %% [markdown]
# ## Four quantized versions of the real MiniLM
# int8 is stored in safetensors; q8_0, q4_0 and q4_k are written as llama.cpp GGUF files (the
# `bert` layout, tensor names such as `blk.0.attn_q.weight`). `ml.compare` reads each one back
# under the Hugging Face names and compares it tensor by tensor with the original.

# %%
ml.save_state_dict(ml.load_state_dict(minilm / "model.safetensors"), work / "int8.safetensors",
                   quant="int8")
for q in ("q8_0", "q4_0", "q4_k"):
    ml.convert(minilm, work / f"minilm-{q}.gguf", quant=q)
files = {"int8": work / "int8.safetensors", **{q: work / f"minilm-{q}.gguf"
                                               for q in ("q8_0", "q4_0", "q4_k")}}
weights = {q: ml.compare(minilm, path, labels=("MiniLM", q)) for q, path in files.items()}
rows = [{"version": q, "compared": c.weights.counts().get("changed", 0)
         + c.weights.counts().get("same", 0), "rel": c.weights.total.rel_change,
         "sigma": c.weights.total.sigma, "changed": c.weights.total.changed}
        for q, c in weights.items()]
print(Table([Column("version"), Column("compared", "tensors"),
             Column("rel", "‖ΔW‖/‖W‖", ".4f"), Column("sigma", "σ", ".4f"),
             Column("changed", "elements changed", ".1%")], rows,
            title="MiniLM against its quantized versions (weights)"))

# %% [markdown]
# The same original converted to an **f32** GGUF changes nothing: every tensor matches with
# relative change 0 (the pooler and `position_ids`, which llama.cpp has no place for, are
# listed as only in the original).

# %%
ml.convert(minilm, work / "minilm-f32.gguf")
f32 = ml.compare(minilm, work / "minilm-f32.gguf")
print(f32.weights.counts(), "largest change:", max(t.rel_change for t in f32.weights.tensors
                                                   if t.status == "same"))

# %% [markdown]
# Per layer, for q4_0: ‖ΔW‖/‖W‖ over all of a layer's tensors, σ, and the layer's share of the
# model's whole Σ|ΔW| — where the quantization error went. (The embeddings are in "other".)

# %%
print(weights["q4_0"].weights.layer_table())

# %%
ml.plots.plot_comparison(weights["q4_0"], "share")

# %% [markdown]
# ## A LoRA-tuned and merged MiniLM: which layers moved, and with what rank?
# We train a rank-4 adapter on the query and value projections of the last two layers for a few
# steps (pulling two paraphrases together, pushing an unrelated sentence away), merge it and
# compare. Only the adapted matrices change, and their ΔW has rank 4 at most: the leading
# singular values show it.

# %%
tuned = copy.deepcopy(base)
ml.lora.inject(tuned, rank=4, alpha=8, targets=["encoder.layer.4.attention.self.query",
                                                 "encoder.layer.4.attention.self.value",
                                                 "encoder.layer.5.attention.self.query",
                                                 "encoder.layer.5.attention.self.value"])
opt = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=5e-3)
batch = tuned.tokenize(["A cat sleeps on the sofa.", "A kitten naps on the couch.",
                        "The stock market fell sharply today."])
for _ in range(20):
    states, _ = tuned(batch["input_ids"], batch["attention_mask"])
    e = torch.nn.functional.normalize(states.mean(1), dim=-1)
    loss = (1 - e[0] @ e[1]) + torch.relu(e[0] @ e[2])
    opt.zero_grad()
    loss.backward()
    opt.step()
merged = ml.lora.unload(tuned, merge_first=True)
lora = ml.compare(base, merged, labels=("MiniLM", "LoRA merged"))
print(lora.weights.summary())
print(Table([Column("name", "tensor"), Column("rel_change", "‖ΔW‖/‖W‖", ".2e"),
             Column("energy_rank", "ΔW rank (99% energy)"),
             Column("sv", "leading singular values of ΔW")],
            [{**t.rows()[0], "sv": ", ".join(f"{x:.2g}" for x in t.singular_values[:6])}
             for t in lora.weights.tensors if t.status == "changed"],
            title="what the adapter changed"))

# %% [markdown]
# ## Activations and embeddings
# With inputs, both models run on the same sentences. Linear CKA compares each layer's token
# states (1 = the same representation up to rotation and scale); the sentence embeddings are
# compared by cosine, and by how well the two models agree on which sentences are similar
# (Spearman and Kendall rank correlations of their similarity matrices).
#
# The q8_0, q4_0 and q4_k models are filled from their GGUF files with `ml.load_into`. (Matrix
# products differ in their last bits between CPUs, so these numbers may differ slightly.)

# %% tags=["nbval-ignore-output"]
texts = ["A cat sleeps on the sofa.", "A kitten naps on the couch.", "Dogs bark at night.",
         "The stock market fell sharply today.", "Shares dropped on Wall Street.",
         "I love fresh bread in the morning.", "Breakfast with warm toast is great.",
         "The train to Paris leaves at noon.", "Rain is expected this weekend.",
         "Quantum computers use qubits."]


def from_file(path: Path) -> MiniLM:
    model = MiniLM.from_pretrained(minilm)
    ml.load_into(model, path, strict=False)  # no pooler in llama.cpp's layout
    return model.eval()


models = {q: from_file(files[q]) for q in ("int8", "q8_0", "q4_0", "q4_k")}
models["LoRA merged"] = merged
full = {name: ml.compare(base, m, texts, labels=("MiniLM", name)) for name, m in models.items()}
print(Table([Column("version"), Column("cka_min", "lowest CKA", ".5f"),
             Column("cos", "embedding cosine", ".5f"), Column("rho", "Spearman ρ", ".4f"),
             Column("tau", "Kendall τ", ".4f"), Column("nn", "same nearest neighbour", ".0%")],
            [{"version": k, "cka_min": min(c.activations.cka), "cos": c.outputs.cosine_mean,
              "rho": c.outputs.spearman, "tau": c.outputs.kendall,
              "nn": c.outputs.same_neighbour} for k, c in full.items()],
            title="MiniLM against each version, on 10 sentences"))

# %% tags=["nbval-ignore-output"]
full["q4_0"]

# %% [markdown]
# `ml.views.CompareView` shows the same comparison interactively: bars per layer (choose the
# metric), the CKA heatmap, and a click on a layer gives its most changed tensor's histograms
# (a, b and ΔW) and ΔW spectrum. Without a kernel the output shows the static figure.

# %% tags=["nbval-ignore-output"]
ml.views.CompareView(full["LoRA merged"])

# %% [markdown]
# ## A causal LM against its q4_0 GGUF: llama.cpp's KL table
# A tiny seeded Llama (two layers) is saved by transformers and converted to a q4_0 GGUF.
# `ml.compare` loads both as transformers models (the GGUF through `ml.load_into`), runs them
# on the same token ids and scores every next token as `llama-perplexity --kl-divergence` does:
# base = the original, b = the q4_0 file.

# %% tags=["nbval-ignore-output"]
import transformers  # noqa: E402

config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=256)
torch.manual_seed(0)
transformers.LlamaForCausalLM(config).save_pretrained(work / "tiny-llama")
ml.convert(work / "tiny-llama", work / "tiny-llama-q4_0.gguf", quant="q4_0")
ids = torch.randint(0, 512, (4, 128), generator=torch.Generator().manual_seed(0))
lm = ml.compare(work / "tiny-llama", work / "tiny-llama-q4_0.gguf", ids,
                labels=("tiny-llama", "q4_0"))
print(lm.outputs.table())

# %% [markdown]
# Per layer, the logit lens reads each block's output through the final norm and the head:
# how far the two models' intermediate predictions are apart.

# %% tags=["nbval-ignore-output"]
print(lm.activations.table())

# %% [markdown]
# The same from a terminal: `mlmf-lab compare A B` (weights; `--inputs ids.safetensors` adds
# activations and outputs; `--json` for scripts). `mlmf-lab diff` is the same command.

# %% tags=["nbval-ignore-output"]
from mlmf_lab.cli import main  # noqa: E402

_ = main(["compare", str(minilm), str(files["q4_k"])])
