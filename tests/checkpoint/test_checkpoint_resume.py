"""Exact resume: N steps straight == K steps, save, load in a fresh process, N - K more.

The model has dropout on, the optimizer is Adam with a one-cycle LR schedule,
and each batch draws from torch's, numpy's and Python's generators, so every
piece of restored state matters. Run as a script, this file is the fresh
process: ``python test_checkpoint_resume.py ROOT OUT N``.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mlmf_lab as ml

N, K = 14, 6


Trio = tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


def build(seed: int) -> Trio:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32),
                          nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=N)
    return model, opt, sched


def train(model: nn.Module, opt: torch.optim.Optimizer, sched: object, steps: int) -> None:
    model.train()
    for _ in range(steps):
        batch = random.choice([8, 12, 16])  # Python's generator
        x = torch.randn(batch, 8)  # torch's generator (and dropout's)
        y = x.sum(dim=1, keepdim=True) + torch.from_numpy(
            np.random.normal(0.0, 0.1, (batch, 1))).float()  # numpy's generator
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()  # type: ignore[attr-defined]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the fresh process uses one thread too: same float reductions
    yield
    torch.set_num_threads(n)


def test_resume_in_a_fresh_process_is_bit_identical(tmp_path: Path) -> None:
    seed_all(0)
    straight, opt, sched = build(0)
    train(straight, opt, sched, N)

    seed_all(0)
    model, opt, sched = build(0)
    train(model, opt, sched, K)
    cm = ml.CheckpointManager(tmp_path / "ck")
    cm.save(model, K, optimizer=opt, scheduler=sched, metrics={"val_loss": 1.0})

    out = tmp_path / "resumed.safetensors"
    proc = subprocess.run([sys.executable, __file__, str(tmp_path / "ck"), str(out), str(N)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = ml.load_state_dict(out)
    expected = straight.state_dict()
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), f"{name} differs after resume"

    # Controls: the comparison is sharp enough to see a missing piece of state.
    for missing in ("rng", "optimizer", "scheduler"):
        seed_all(123)
        other, o2, s2 = build(1)
        cm.load(other, optimizer=None if missing == "optimizer" else o2,
                scheduler=None if missing == "scheduler" else s2, restore_rng=missing != "rng")
        train(other, o2, s2, N - K)
        assert any(not torch.equal(other.state_dict()[k], v) for k, v in expected.items()), missing


def main(root: str, out: str, n: int) -> None:
    torch.set_num_threads(1)
    seed_all(999)  # anything: the checkpoint must overwrite every generator
    model, opt, sched = build(seed=999)  # a different init: the checkpoint must overwrite it
    record = ml.CheckpointManager(root).load(model, optimizer=opt, scheduler=sched)
    train(model, opt, sched, n - record.step)
    ml.save_state_dict(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
