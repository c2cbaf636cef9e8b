# %% [markdown]
# # 04 · Quantization: smaller weights, measured errors
#
# Quantization stores weights with fewer bits: a few integer codes per weight plus a scale
# (and sometimes a zero point) per row or per block. This notebook quantizes a real model,
# the MiniLM sentence encoder (all-MiniLM-L6-v2, 22 M parameters), with several schemes and
# measures what it costs:
#
# - `ml.quant.quantize(tensor, scheme)` → a `QTensor` (codes + scales), `ml.quant.dequantize`;
# - `ml.quant.quantize_model(model, scheme)` swaps every `nn.Linear` for a `QuantLinear`
#   that keeps its weights quantized in memory and runs a CPU kernel on them;
# - `ml.quant.report(model_fp32, model_q, inputs)`: per-layer error table and figures;
# - GGUF files: `ml.save_state_dict(..., "x.gguf", quant="q4_0")`, readable by the `gguf`
#   package (llama.cpp's format), and `ml.load_into(..., keep_quantized=True)`;
# - a transformers model into a GGUF file llama.cpp runs (`ml.convert(folder, "x.gguf")`),
#   and back into a transformers folder, bit-exact in f32;
# - `int8`/`int4` weights saved in safetensors (`quant="int8"`), read back the same way.

# %%
%matplotlib inline
import os
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import gguf
import numpy as np
import torch

import mlmf_lab as ml
from mlmf_lab.models import MiniLM

random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
torch.set_num_threads(1)  # small layers: one thread is as fast, and steady on a busy machine
work = Path(tempfile.mkdtemp())
folder = ml.examples.minilm_dir()
ref = MiniLM.from_pretrained(folder)  # float32, memory-mapped from model.safetensors
print(sorted(ml.quant.SCHEMES))

# %% [markdown]
# ## One weight matrix, every scheme
# `bits/weight` counts everything stored: codes, scales and zero points. `int8` keeps one
# scale per output row; `int4` one bfloat16 scale and zero per group of 32–128 weights;
# the GGUF types (`q8_0`, `q5_0`, `q4_0`, ... and the K-quants) one or two float16 scales
# per block of 32 weights (super-blocks of 256 for `q4_k`, `q6_k`).

# %%
w = ref.encoder.layer[0].output.dense.weight.detach()  # (384, 1536)
print(f"{'scheme':<14}{'bits/weight':>12}{'rel. L2 error':>15}")
for scheme, options in [("int8", {}), ("q8_0", {}), ("q6_k", {}), ("q5_0", {}),
                        ("int4", {"group_size": 32}), ("q4_1", {}), ("q4_k", {}),
                        ("q4_0", {}), ("int4", {"group_size": 128})]:
    qt = ml.quant.quantize(w, scheme, **options)
    err = float((qt.dequantize() - w).norm() / w.norm())
    label = scheme + (f"/g{options['group_size']}" if options else "")
    print(f"{label:<14}{qt.bits_per_weight:>12.3f}{err:>15.4f}")
qt

# %% [markdown]
# ## The whole encoder
# Each scheme gets a fresh copy of the model (loading is copy-free, so this is cheap) and
# `quantize_model` replaces its 36 encoder linears; the pooler, unused by sentence
# embeddings, stays in float (`skip=`). The report runs both models on the same tokenized
# sentences and compares every quantized layer with its float twin.
#
# The weight error depends only on the scheme. The token-state drift and the bytes a layer
# holds also depend on the kernel that runs it, and which kernels there are depends on the
# CPU (see below), so those columns differ a little from machine to machine.

# %% tags=["nbval-ignore-output"]
sentences = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today.",
    "Shares dropped on Wall Street this morning.",
    "A cat sleeps on the sofa.",
]
batch = ref.tokenize(sentences)
inputs = (batch["input_ids"], batch["attention_mask"])
emb = {"fp32": ref.encode(sentences)}

schemes = {"int8": ("int8", {}), "q8_0": ("q8_0", {}), "q5_0": ("q5_0", {}),
           "int4/g32": ("int4", {"group_size": 32}), "q4_0": ("q4_0", {})}
models, summaries, reports = {}, {}, {}
for label, (scheme, options) in schemes.items():
    model = MiniLM.from_pretrained(folder)
    summaries[label] = ml.quant.quantize_model(model, scheme, skip=["pooler"], **options)
    reports[label] = ml.quant.report(ref, model, inputs)
    emb[label] = model.encode(sentences)
    models[label] = model
for label, rep in reports.items():
    print(f"{label:<9} {rep.bits_per_weight:5.2f} bits/weight  weight error "
          f"{rep.rel_error:.4f}  token-state drift {rep.output_drift:.3f}  "
          f"linears {summaries[label].ratio:.1f}x smaller")

# %% [markdown]
# What holds on any CPU: the weight errors (no kernel plays a part in them), `q8_0` drifts
# least, and no scheme moves the token states by more than 0.35.

# %%
drift = {label: rep.output_drift for label, rep in reports.items()}
print("weight error:", ", ".join(f"{label} {rep.rel_error:.4f}" for label, rep in reports.items()))
print("q8_0 drifts least:", min(drift, key=drift.get) == "q8_0")
print("every drift below 0.35:", all(d < 0.35 for d in drift.values()))

# %% [markdown]
# What `quantize_model` did for `q4_0`. The kernel column names the kernel chosen for this
# CPU. Where the CPU has AVX512-VNNI it is `q4_0-vnni`, our own kernel, which keeps GGUF's
# blocks and multiplies them with activations quantized to 8 bits per block of 32, as
# llama.cpp does; elsewhere `int4pack`, torch's fused int4 kernel (bfloat16 activations).

# %% tags=["nbval-ignore-output"]
summaries["q4_0"]

# %% [markdown]
# Either kernel keeps GGUF's 4.5 bits per weight, so the totals are the same everywhere:

# %%
print(summaries["q4_0"])

# %% [markdown]
# ## Size against error
# One point per scheme: fewer bits, more error. Blocks of 32 weights with their own scale
# (`q8_0`) beat one scale per row (`int8`) at the same size, because a single outlier no
# longer stretches the grid of a whole row.

# %%
ml.plots.plot_bits_vs_error(reports)

# %% [markdown]
# The errors of single weights, in units of each layer's weight RMS: 8-bit schemes stay
# within a few percent, 4-bit schemes spread to tens of percent of a typical weight.

# %%
ml.plots.plot_error_histogram(reports)

# %% [markdown]
# ## Do the sentence embeddings survive?
# What the encoder is for: similar sentences must stay similar. The table shows the
# cosine similarity of sentence pairs for the float model and each quantized one, then the
# cosine between each scheme's embedding and the float one (1 = identical). The third
# decimal depends on the kernels this CPU runs.

# %% tags=["nbval-ignore-output"]
pairs = [(0, 1), (2, 3), (0, 2), (1, 4)]
labels = list(emb)
print(f"{'pair':<8}" + "".join(f"{k:>10}" for k in labels))
for i, j in pairs:
    row = "".join(f"{float(emb[k][i] @ emb[k][j]):>10.3f}" for k in labels)
    print(f"{i}-{j:<6}{row}")
agree = "".join(f"{float((emb[k] * emb['fp32']).sum(-1).min()):>10.3f}" for k in labels)
print(f"{'vs fp32':<8}{agree}   (lowest over the sentences)")

# %% [markdown]
# On any CPU, every scheme keeps both paraphrase pairs (0-1, 2-3) more similar than the two
# unrelated pairs, and every embedding close to the float one:

# %%
sims = {k: [float(emb[k][i] @ emb[k][j]) for i, j in pairs] for k in labels}
print("paraphrases above unrelated pairs:", all(min(s[:2]) > max(s[2:]) for s in sims.values()))
print("lowest cosine vs fp32 above 0.9:",
      all(float((emb[k] * emb["fp32"]).sum(-1).min()) > 0.9 for k in labels))

# %% [markdown]
# ## Layer by layer
# The report of one scheme: weight error (relative L2, SNR in dB), the drift of each
# layer's output in the quantized network (errors of earlier layers included), and its
# *local* drift (the quantized layer fed the float model's input). Local drifts stay close
# to the weight error, while the drift grows with depth: each layer adds its own error to
# the errors it receives. (`int4` runs on torch's `int4pack` kernel with bfloat16
# activations, so the drift columns differ a little between CPUs; the weight errors do not.)

# %% tags=["nbval-ignore-output"]
reports["int4/g32"]

# %%
rep = reports["int4/g32"]
blocks = [[r.drift for r in rep.layers if f".layer.{i}." in r.name] for i in range(6)]
print("drift of the last block above that of the first:", max(blocks[-1]) > max(blocks[0]))
print("local drift below 1.5x the weight error in every layer:",
      all(r.local_drift < 1.5 * r.rel_error for r in rep.layers))

# %%
ml.plots.plot_layer_errors(reports["int4/g32"])

# %% [markdown]
# ### Why `int8` drifts more than `q8_0`
# Mostly the weight grid: `int8` keeps one scale per output row, `q8_0` one per block of 32
# weights, so its weight error is half as large (table above). On top of that, the fused
# `int8` kernels quantize the *activations* to 8 bits on every call. Ours (`int8-rowwise`,
# the default where the CPU has AVX512-VNNI) gives each input row, one token, its own
# scale; torch's fbgemm dynamic linear (`fbgemm-int8`) uses one scale for the whole input.
# BERT's LayerNorm outputs have a few large features, which take most of either range.
# Weight-only kernels keep the activations in float: `int8pack-bf16` (bfloat16) or
# `dequant` (float32, slowest). The table runs the same int8 weights through each kernel
# this CPU has, with `q8_0` for comparison; that is the accuracy/speed choice `kernel=`
# offers. Its rows and numbers depend on the CPU (`int8-rowwise` only where it has
# AVX512-VNNI).

# %% tags=["nbval-ignore-output"]
int8_drift = {}
print(f"{'int8 kernel':<15}{'token-state drift':>18}{'lowest cosine vs fp32':>23}")
for kernel in ml.quant.kernels_for(ml.quant.quantize(w, "int8")):  # what runs on this CPU
    weight_only = MiniLM.from_pretrained(folder)
    ml.quant.quantize_model(weight_only, "int8", skip=["pooler"], kernel=kernel)
    int8_drift[kernel] = ml.quant.report(ref, weight_only, inputs).output_drift
    cos = float((weight_only.encode(sentences) * emb["fp32"]).sum(-1).min())
    print(f"{kernel:<15}{int8_drift[kernel]:>18.3f}{cos:>23.4f}")
cos = float((emb["q8_0"] * emb["fp32"]).sum(-1).min())
print(f"{'(q8_0)':<15}{reports['q8_0'].output_drift:>18.3f}{cos:>23.4f}")

# %% [markdown]
# Whatever the CPU offers, the weight-only kernels drift less than those that quantize the
# activations, and `q8_0` less than `int8` on any kernel:

# %%
weight_only_kernels = {"int8pack-bf16", "dequant"}
print("weight-only kernels drift least:", all(
    int8_drift[a] < int8_drift[b] for a in int8_drift if a in weight_only_kernels
    for b in int8_drift if b not in weight_only_kernels))
print("q8_0 below every int8 kernel:", reports["q8_0"].output_drift < min(int8_drift.values()))

# %% [markdown]
# ## Save as GGUF, read it with the `gguf` package
# GGUF is llama.cpp's file format. We write the encoder with `q4_0` blocks (1-D tensors,
# norms and biases, stay float32, as llama.cpp does), then open the file with the `gguf`
# package itself, the reader other tools use.

# %%
path = work / "minilm-q4_0.gguf"
ml.save_state_dict(ref.state_dict(), path, quant="q4_0",
                   metadata={"general.architecture": "bert", "general.name": "all-MiniLM-L6-v2"})
reader = gguf.GGUFReader(path)
print(dict(Counter(t.tensor_type.name for t in reader.tensors)))
print({k: v.contents() for k, v in reader.fields.items() if k.startswith("general.")})
print(f"model.safetensors (fp32): {ml.units.human_bytes(ml.examples.minilm_path().stat().st_size)}"
      f"   minilm-q4_0.gguf: {ml.units.human_bytes(path.stat().st_size)}")

# %% [markdown]
# The `gguf` package's own dequantizer (numpy) and ours read the same bytes the same way.
# Ours is a small fused C kernel, compiled on first use; with `MLMF_NATIVE=0` (or no C
# compiler) the same maths runs as torch ops, slower but bit for bit the same:

# %%
name = "encoder.layer.0.intermediate.dense.weight"
t = next(t for t in reader.tensors if t.name == name)
theirs = gguf.quants.dequantize(t.data, t.tensor_type).reshape(1536, 384)
ours = ml.open_weights(path).tensor(name)
native_setting = os.environ.get("MLMF_NATIVE")
os.environ["MLMF_NATIVE"] = "0"
ours_torch = ml.open_weights(path).tensor(name)
if native_setting is None:  # put back what it was
    del os.environ["MLMF_NATIVE"]
else:
    os.environ["MLMF_NATIVE"] = native_setting
print(t.tensor_type.name, [int(d) for d in t.shape], "(GGUF lists the innermost dimension first)")
print("identical (C kernel):", np.array_equal(theirs, ours.numpy()))
print("identical (torch ops):", np.array_equal(theirs, ours_torch.numpy()))

# %% [markdown]
# Loading back with `keep_quantized=True`: the linears get the file's `q4_0` blocks as they
# are (no float copy): the very bytes `quantize_model` made in memory. The file also holds
# the three embedding tables in `q4_0` (they are dequantized on loading), so its sentence
# embeddings differ slightly from the in-memory model, where only the linears are quantized.

# %%
def reload_quantized(path, label):
    """Load ``path`` into a fresh MiniLM with its quantized linears kept; compare with memory."""
    with torch.device("meta"):
        loaded = MiniLM(ref.config, tokenizer=ref.tokenizer)
    ml.load_into(loaded, path, keep_quantized=True)
    layer = loaded.encoder.layer[0].intermediate.dense
    in_memory = models[label].encoder.layer[0].intermediate.dense
    print(f"{type(layer).__name__}({layer.in_features} -> {layer.out_features}, "
          f"scheme={layer.scheme})")
    print("same codes as in memory:", torch.equal(layer.qweight.data, in_memory.qweight.data))
    e = loaded.encode(sentences)
    print("lowest cosine vs fp32 above 0.9:", float((e * emb["fp32"]).sum(-1).min()) > 0.9,
          f"| vs in-memory {label} above 0.98:", float((e * emb[label]).sum(-1).min()) > 0.98)


reload_quantized(path, "q4_0")

# %% [markdown]
# ## `int8` and `int4` in safetensors
# GGUF has no type for `int8` or `int4`, so those go into safetensors, as plain tensors any
# safetensors reader loads: the codes under the weight's own name, plus `<name>_scale` (and
# `<name>_zero` for `int4`). The `int8` parts have the names, dtypes and shapes that
# compressed-tensors (vLLM's format) uses for per-channel `int8`. The header lists which
# tensors are quantized, so `ml.open_weights` shows one tensor per weight again. 1-D tensors
# (norms and biases) stay float, as in GGUF.

# %%
from safetensors import safe_open

path8 = work / "minilm-int8.safetensors"
ml.save_state_dict(ref.state_dict(), path8, quant="int8")
with safe_open(path8, "pt") as f:  # the safetensors package's own view of the file
    for key in [name, name + "_scale"]:
        s = f.get_slice(key)
        print(f"{key:50s} {s.get_dtype():4s} {s.get_shape()}")
info8 = ml.open_weights(path8).info(name)  # ours: one tensor again
print(f"ml.open_weights: {name} {list(info8.shape)} {info8.quant}, "
      f"{info8.bits_per_weight:.3f} bits/weight; the file: "
      f"{ml.units.human_bytes(path8.stat().st_size)}")

# %% [markdown]
# Loading back with `keep_quantized=True` gives `QuantLinear` layers holding the file's codes,
# the same codes `quantize_model` made in memory. The embedding tables were stored in `int8`
# too, and are dequantized on loading.

# %%
reload_quantized(path8, "int8")

# %% [markdown]
# ## A transformers model that llama.cpp runs, and back
# Saving tensors as GGUF (above) keeps their own names. llama.cpp needs more: its tensor
# names (`token_embd.weight`, `blk.0.attn_q.weight`, ...), the hyperparameters under its keys
# and types, the tokenizer inside the file, and Llama's Q/K rows in its rotary order.
# `ml.convert` from a transformers model folder into a `.gguf` writes all of that, the same
# bytes and keys as llama.cpp's own converter (the tests check it, and run the file in
# llama.cpp). A tiny Llama, random and seeded, with a tokenizer trained on two sentences:

# %%
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

hf = work / "tiny-llama"
hf.mkdir()
tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
tokenizer.train_from_iterator(
    ["weights are files and files are weights", "a small llama for llama.cpp"] * 10,
    trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tokenizer.save(str(hf / "tokenizer.json"))
(hf / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}))
torch.manual_seed(0)
llama = LlamaForCausalLM(LlamaConfig(
    vocab_size=tokenizer.get_vocab_size(), hidden_size=256, intermediate_size=512,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=256, eos_token_id=0)).eval()
llama.save_pretrained(hf)
print(sorted(p.name for p in hf.iterdir()))

# %% [markdown]
# `mlmf-lab convert tiny-llama/ tiny.gguf --quant q8_0` does the same from a shell.

# %%
tiny = ml.convert(hf, work / "tiny.gguf", quant="q8_0")
fields = gguf.GGUFReader(tiny).fields
for key, field in fields.items():
    if key.startswith(("general.", "llama.")) or key in ("tokenizer.ggml.model",
                                                        "tokenizer.ggml.pre"):
        value = field.contents()
        print(f"{key:42s} {field.types[0].name:8s} "
              f"{f'{value:.6g}' if isinstance(value, float) else value}")
print(f"{'tokenizer.ggml.tokens':42s} {len(fields['tokenizer.ggml.tokens'].contents())} tokens, "
      f"{len(fields['tokenizer.ggml.merges'].contents())} merges")
with ml.open_weights(tiny) as wf:
    print([(n, wf.info(n).quant or wf.info(n).dtype) for n in list(wf)[:6]])

# %% [markdown]
# llama.cpp rotates adjacent pairs of each head's dimensions where transformers rotates the
# two halves, so the Q and K rows are stored permuted (`permute_qk`), and put back when
# the file is read into a transformers model, here straight from the `q8_0` blocks:

# %%
from mlmf_lab.formats.gguf_arch import permute_qk

q_hf = llama.model.layers[0].self_attn.q_proj.weight.detach()
with ml.open_weights(tiny) as wf:
    stored = wf.raw("blk.0.attn_q.weight")
print("stored rows = permuted q_proj rows:",
      torch.equal(stored.data, ml.quant.quantize(permute_qk(q_hf, 4), "q8_0").data))
kept = LlamaForCausalLM(llama.config)
print(ml.load_into(kept, tiny, keep_quantized=True).describe())
layer = kept.model.layers[0].self_attn.q_proj
print(type(layer).__name__, layer.scheme, "rows back in place:",
      torch.equal(layer.qweight.data, ml.quant.quantize(q_hf, "q8_0").data))

# %% [markdown]
# And the way back: a `.gguf` in llama.cpp's layout converted to a folder becomes a
# transformers model folder: weights under the model's names, `config.json`, and the tokenizer
# transformers rebuilds from the file. In `f32` the round trip is bit-exact, config included:

# %%
back = ml.convert(ml.convert(hf, work / "tiny-f32.gguf"), work / "tiny-back")
print(sorted(p.name for p in back.iterdir()))
print("config.json identical:",
      (back / "config.json").read_bytes() == (hf / "config.json").read_bytes())
before, after = ml.load_state_dict(hf), ml.load_state_dict(back)
print("every tensor identical:", before.keys() == after.keys()
      and all(torch.equal(before[k], after[k]) for k in before))
ids = AutoTokenizer.from_pretrained(hf)("weights are files")["input_ids"]
print("same token ids:",
      AutoTokenizer.from_pretrained(back)("weights are files")["input_ids"] == ids)
with torch.no_grad():
    x = torch.tensor([ids])
    print("same logits:", torch.equal(AutoModelForCausalLM.from_pretrained(back)(x).logits,
                                      llama(x).logits))

# %% [markdown]
# Clean up: remove the scratch folder this notebook wrote into.

# %%
shutil.rmtree(work)
