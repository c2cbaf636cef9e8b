# %% [markdown]
# # 03 · LoRA: train a small adapter, merge it exactly, share it with PEFT
#
# LoRA freezes a layer's weight `W` (shape `out × in`) and learns a low-rank change
# `ΔW = s·B·A` with `A: r × in`, `B: out × r` and `s = alpha / r`. The layer computes
# `W x + s·B(A x)`: only `A` and `B` train, a few percent of the model.
#
# In this notebook we:
# 1. add adapters to a tiny Llama (built from a config, nothing downloaded),
# 2. train them for a few seconds on a toy sequence task,
# 3. look at the singular values of each learned `ΔW`,
# 4. merge the adapter into the weights and unmerge it again, measuring the error,
# 5. save it in PEFT's format and load it back, with `mlmf_lab` and with PEFT itself.

# %%
%matplotlib inline
import json
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import mlmf_lab as ml

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()
torch.set_num_threads(1)  # tiny matrices: one thread is fastest and bit-reproducible
random.seed(0); np.random.seed(0); torch.manual_seed(0)
work = Path(tempfile.mkdtemp())

# %% [markdown]
# ## A tiny model and its adapter
# `make_base()` always builds the same random "pretrained" model (the seed is fixed), so we
# can compare a fresh copy with the adapted one later.

# %%
VOCAB = 32
CONFIG = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=64)


def make_base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(CONFIG).eval()


model = make_base()
report = ml.lora.inject(model, rank=8, alpha=16,
                        targets=["q_proj", "v_proj", "down_proj", "lm_head"])
trainable, total = ml.lora.parameter_counts(model)
print(f"wrapped {len(report.modules)} modules; trainable {trainable:,} of {total:,} "
      f"parameters ({100 * trainable / total:.1f} %)")

# %% [markdown]
# `targets` are module-name suffixes (or one regex over whole paths), the same rule PEFT
# uses. A name that matches nothing is an error that lists what could be wrapped:

# %%
try:
    ml.lora.inject(make_base(), rank=8, alpha=16, targets=["query"])
except ml.MLMFError as err:
    print(type(err).__name__, "—", err)

# %% [markdown]
# ## Training on a toy task
# Each sequence counts up from a random token with a random step of 1, 2 or 3 (mod 32):
# `5, 7, 9, 11, …`. After two tokens the rest is predictable, so a model that learned the
# rule approaches a loss of `ln(3)/15 ≈ 0.07` (only the second token is a guess).

# %%
gen = torch.Generator().manual_seed(0)


def batch(n: int = 32, length: int = 16) -> torch.Tensor:
    start = torch.randint(0, VOCAB, (n, 1), generator=gen)
    step = torch.randint(1, 4, (n, 1), generator=gen)
    return (start + step * torch.arange(length)) % VOCAB


opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
model.train()
losses = []
for _ in range(100):
    ids = batch()
    loss = model(ids, labels=ids).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
model.eval()
print(f"loss: first step {losses[0]:.2f}, mean of the last 10 steps {np.mean(losses[-10:]):.2f}")

# %%
ml.plots.plot_lora_loss(losses)

# %% [markdown]
# The summary lists every adapter at every module with its rank, trainable parameters and
# the Frobenius norm of `ΔW` (computed from two `r × r` Gram matrices, without forming `ΔW`).

# %%
ml.lora.summary(model)

# %% [markdown]
# ## What did the adapter learn? Singular values of ΔW
# `ΔW = s·B·A` has rank at most 8. Its singular values show how many of those directions
# each layer actually uses; they are computed from the small factors through two thin QR
# decompositions.

# %%
spectra = ml.lora.delta_spectra(model)
ml.plots.plot_delta_spectra(spectra)

# %% [markdown]
# The attention queries and the MLP outputs moved most; the value projections barely
# changed. No layer used its 8 directions equally: the largest singular value is several
# times the smallest.

# %%
for path, sv in spectra.items():
    print(f"{path:32s} σ₁ = {sv[0]:6.2f}   σ₁/σ₈ = {sv[0] / sv[-1]:7.1f}")

# %% [markdown]
# ## Merge and unmerge, exactly
# Merging folds `ΔW` into `W` (computed in float32), so inference costs nothing extra.
# Unmerging does not subtract `ΔW` again, which would leave rounding errors behind: the
# original weight tensor is kept and put back, so the base comes back bit for bit.

# %%
ids = batch(4)
base_weights = {k: v.clone() for k, v in make_base().state_dict().items()}
with torch.no_grad():
    unmerged_logits = model(ids).logits
    merge_report = ml.lora.merge(model)
    merged_logits = model(ids).logits
diff = (merged_logits - unmerged_logits).abs().max().item()
print(f"merged {len(merge_report.modules)} modules; max |merged - unmerged logits| < 1e-4: "
      f"{diff < 1e-4}")

for _ in range(5):
    ml.lora.unmerge(model)
    ml.lora.merge(model)
ml.lora.unmerge(model)
restored = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()
            if ".lora_" not in k}
err = max((restored[k] - base_weights[k]).abs().max().item() for k in base_weights)
print(f"after 6 merge/unmerge cycles, max |W - W_original| = {err}")

# %% [markdown]
# Timing on this machine (not compared by the tests; see `benchmarks/bench_lora.py`):

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
ml.lora.merge(model)
t1 = time.perf_counter()
ml.lora.unmerge(model)
t2 = time.perf_counter()
print(f"merge {1e3 * (t1 - t0):.2f} ms, unmerge {1e3 * (t2 - t1):.2f} ms")

# %% [markdown]
# ## Disable, enable, and several adapters
# `disable` runs the base model alone; `enable` brings the adapter back. Several named
# adapters can live side by side; `set_active(model, names, weights)` adds their deltas
# `Σ wᵢ·ΔWᵢ` (it never averages the `A` and `B` matrices, which would be a different model).

# %%
with torch.no_grad():
    ml.lora.disable(model)
    off = model(ids).logits
    ml.lora.enable(model)
    on = model(ids).logits
    fresh = make_base()(ids).logits
print("disabled == base model:", torch.allclose(off, fresh, atol=1e-6))
print("enabled == trained:   ", torch.allclose(on, unmerged_logits, atol=1e-6))

# %%
ml.lora.inject(model, rank=4, alpha=4, targets=["q_proj"], name="other")
ml.lora.set_active(model, ["default", "other"], weights=[1.0, 0.5])
ml.lora.active_adapters(model)

# %%
ml.lora.delete_adapter(model, "other")
ml.lora.set_active(model, "default")

# %% [markdown]
# ## Save in PEFT's format, load it back — also in PEFT
# The folder holds `adapter_config.json` (r, lora_alpha, target_modules, …) and
# `adapter_model.safetensors` with keys `base_model.model.<module>.lora_A.weight`.

# %%
folder = ml.lora.save_peft_adapter(model, work / "counting-adapter")
print(sorted(p.name for p in folder.iterdir()))
cfg = json.loads((folder / "adapter_config.json").read_text())
print({k: cfg[k] for k in ("r", "lora_alpha", "target_modules", "use_rslora")})
with ml.open_weights(folder / "adapter_model.safetensors") as wf:
    print(len(wf), "tensors, e.g.", next(iter(wf)))

# %%
reloaded = make_base()
ml.lora.load_peft_adapter(reloaded, folder)
with torch.no_grad():
    d_ours = (reloaded(ids).logits - unmerged_logits).abs().max().item()
print("reloaded by mlmf_lab, max |Δlogits| < 1e-5:", d_ours < 1e-5)

# %%
from peft import PeftModel  # noqa: E402

peft_model = PeftModel.from_pretrained(make_base(), folder).eval()
with torch.no_grad():
    d_peft = (peft_model(ids).logits - unmerged_logits).abs().max().item()
print("loaded by PEFT,      max |Δlogits| < 1e-5:", d_peft < 1e-5)

# %% [markdown]
# And the trained adapter really does the task: greedy continuation of `4, 7, …`

# %%
prompt = torch.tensor([[4, 7]])
with torch.no_grad():
    out = peft_model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
print(out[0].tolist())

# %% [markdown]
# Clean up: remove the scratch folder this notebook wrote into.

# %%
shutil.rmtree(work)
