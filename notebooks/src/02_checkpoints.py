# %% [markdown]
# # 02 · Checkpoints: atomic, exact to resume, and never losing the best
#
# A training checkpoint is more than the weights: to continue a run *exactly* you also need
# the optimizer's moments, the learning-rate schedule's position and the state of every random
# generator (dropout masks, data shuffling). `ml.CheckpointManager` saves all of it, without
# pickle, into one folder per step:
#
# | file | holds |
# |---|---|
# | `model.safetensors` | the weights (numbered shards + index above `max_shard_size`) |
# | `optimizer.json` + `.safetensors` | optimizer state: structure as JSON, tensors as safetensors |
# | `scheduler.json` | the LR scheduler's state |
# | `rng.json` + `rng.safetensors` | Python, numpy and torch generator states |
# | `meta.json` | step, time, metrics, `extra`, library versions, git commit |
# | `manifest.json` | size and sha256 of every file, checked on load |
#
# A folder is written under a hidden name, fsynced and renamed into place, so a crash at any
# moment (the tests SIGKILL a saving process two dozen times) leaves earlier checkpoints intact,
# and `list()` never shows a half-written one.

# %%
%matplotlib inline
import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import mlmf_lab as ml

torch.set_num_threads(1)  # one thread: the same float sums on every run, so outputs are stable
random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
work = Path(tempfile.mkdtemp())

# %% [markdown]
# ## A small model and a task
# Two noisy interleaved spirals with only 64 training points, so the model soon overfits: the
# validation loss falls, then rises. A small MLP with dropout, Adam, a cosine LR schedule.

# %%
def spirals(n: int, noise: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.rand(n) * 3 * torch.pi + 0.5
    label = torch.randint(0, 2, (n,))
    sign = 1 - 2 * label.float()
    x = torch.stack([t * torch.cos(t) * sign, t * torch.sin(t) * sign], dim=1) / 5
    return x + noise * torch.randn_like(x) / 5, label


x_train, y_train = spirals(64)
x_val, y_val = spirals(256)


def make_run(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(128, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=600)
    return model, opt, sched


def train_step(model, opt, sched) -> float:
    model.train()
    idx = torch.randint(0, len(x_train), (32,))  # a random batch: uses torch's generator
    loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


@torch.no_grad()
def val_loss(model) -> float:
    model.eval()
    return nn.functional.cross_entropy(model(x_val), y_val).item()


model, opt, sched = make_run()
print(model)

# %% [markdown]
# ## Train, checkpointing every 20 steps
# `keep_last=2, keep_best=1, metric="val_loss"`: after each save the manager keeps the two
# newest checkpoints and the one with the lowest validation loss, and deletes the rest. The
# newest and the best are never deleted, and steps are compared as numbers (so `step-1000`
# comes after `step-999`: the string-sorting bug of transformers#27138 cannot happen here).

# %%
ckpts = ml.CheckpointManager(work / "run", keep_last=2, keep_best=1, metric="val_loss")
history = []  # every record save() returned, including checkpoints retired later
for step in range(1, 301):
    loss = train_step(model, opt, sched)
    if step % 20 == 0:
        metrics = {"train_loss": round(loss, 6), "val_loss": round(val_loss(model), 6)}
        history.append(ckpts.save(model, step, optimizer=opt, scheduler=sched,
                                  metrics=metrics, extra={"lr": sched.get_last_lr()[0]}))
print("saved:", [r.step for r in history])
print("kept: ", ckpts.list().steps, "| best:", ckpts.best().step,
      f"(val_loss {ckpts.best().metrics['val_loss']:.4f})")

# %% [markdown]
# `list()` returns records (step, time, metrics, size, path); in a notebook it shows as a
# table, the best one starred.

# %% tags=["nbval-ignore-output"]
ckpts.list()

# %% [markdown]
# ## The metrics across checkpoints
# Filled markers are still on disk; hollow ones were retired by the retention policy.

# %%
fig = ml.plots.plot_checkpoint_metrics(history, kept=ckpts.list().steps,
                                       best_step=ckpts.best().step, best_metric="val_loss")
fig

# %% [markdown]
# ## What is inside a checkpoint
# Every file is JSON or safetensors; the manifest lists each file's sha256.

# %%
best = ckpts.best()
print(sorted(best.files))
skeleton = json.loads((best.path / "optimizer.json").read_text())
print(json.dumps(skeleton["param_groups"][0]["betas"]), "|",
      json.dumps(skeleton["state"]["$items"][0][1]))
with ml.open_weights(best.path / "optimizer.safetensors") as wf:
    print(list(wf)[:3], "...")

# %% [markdown]
# ## How did the weights move from the best checkpoint to the last?
# `diff(a, b)` compares tensor by tensor: relative change ‖b − a‖/‖a‖, cosine similarity, the
# largest absolute difference, and any tensors added, removed or reshaped.

# %%
d = ckpts.diff("best", "latest")
print(d.summary())
d

# %%
ml.plots.plot_checkpoint_diff(d)

# %% [markdown]
# ## Resume from the best checkpoint
# A brand-new model, optimizer and scheduler (think: a new process after a crash). `load`
# verifies every file's sha256, then restores the weights, the optimizer, the scheduler and
# the random generators. The restored model reproduces the recorded validation loss exactly.

# %%
model2, opt2, sched2 = make_run(seed=123)
record = ckpts.load(model2, "best", optimizer=opt2, scheduler=sched2)
print("resumed at step", record.step, "| lr", f"{sched2.get_last_lr()[0]:.6f}",
      "| extra", {k: round(v, 6) for k, v in record.extra.items()})
print("val_loss recorded:", record.metrics["val_loss"], "| now:", round(val_loss(model2), 6))

# %% [markdown]
# ## Resume is exact, bit for bit
# Continue the resumed run for 40 steps; separately, replay the original run from the same
# checkpoint. Same checkpoint, same restored generators: identical weights, not merely close.
# (The test suite checks the same across a fresh Python process.)

# %%
for _ in range(40):
    train_step(model2, opt2, sched2)

model3, opt3, sched3 = make_run(seed=7)
ckpts.load(model3, record.step, optimizer=opt3, scheduler=sched3)
for _ in range(40):
    train_step(model3, opt3, sched3)
print("bit-identical:", all(torch.equal(a, b) for a, b in
                            zip(model2.state_dict().values(), model3.state_dict().values())))

# %% [markdown]
# Leave out one piece of state (here, the generators) and the runs part ways:

# %%
model4, opt4, sched4 = make_run(seed=7)
ckpts.load(model4, record.step, optimizer=opt4, scheduler=sched4, restore_rng=False)
for _ in range(40):
    train_step(model4, opt4, sched4)
print("bit-identical without the RNG state:", all(
    torch.equal(a, b) for a, b in zip(model2.state_dict().values(), model4.state_dict().values())))

# %% [markdown]
# ## A damaged file is caught and named
# Flip one bit in a copy of the best checkpoint's weights and load it.

# %%
damaged = ml.CheckpointManager(work / "damaged")
shutil.copytree(best.path, work / "damaged" / best.name)
weights = work / "damaged" / best.name / "model.safetensors"
data = bytearray(weights.read_bytes())
data[-1] ^= 0x01
weights.write_bytes(bytes(data))
try:
    damaged.load(model3)
except ml.errors.ChecksumError as e:
    print(type(e).__name__, "in", Path(e.path).name, "->", e.message.split(";")[0])

# %% [markdown]
# ## A bare state dict works too
# No `nn.Module` needed: save a dict of tensors, load it back into a dict (filled in place).

# %%
plain = ml.CheckpointManager(work / "plain", keep_last=1)
state = {"embedding": torch.randn(4, 3), "scale": torch.tensor(0.5)}
plain.save(state, 10, metrics={"val_loss": 1.0})
target = {k: torch.zeros_like(v) for k, v in state.items()}
plain.load(target)
print(all(torch.equal(target[k], v) for k, v in state.items()), plain.list().steps)

# %%
shutil.rmtree(work)
