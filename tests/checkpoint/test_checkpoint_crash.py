"""Crash safety: a process saving checkpoints in a loop is SIGKILLed at random moments.

After every kill, every checkpoint ``list()`` shows must verify against its
manifest and load (weights, optimizer, scheduler, RNG), and nothing
half-written may be listed. The savers are forked from a forkserver that has
imported torch once, so two dozen fresh processes cost a few seconds, not minutes.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from torch import nn

import mlmf_lab as ml

TRIALS = 24
POLICY = {"keep_last": 2, "keep_best": 1, "metric": "val_loss", "mode": "min",
          "max_shard_size": 8192}  # ~17 KB of weights -> 3 shards + an index


def build() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)


def save_forever(root: str, seed: int, ready: Connection) -> None:
    """The victim: train and save as fast as it can until it is killed."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    metrics = random.Random(seed)
    model, opt, sched = build()
    cm = ml.CheckpointManager(root, **POLICY)  # type: ignore[arg-type]
    last = cm.latest()
    step = last.step + 1 if last else 0
    while True:
        loss = model(torch.randn(8, 32)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        cm.save(model, step, optimizer=opt, scheduler=sched,
                metrics={"val_loss": metrics.random()}, extra={"seed": seed})
        if not ready.closed:
            ready.send(step)  # warm now: the kill lands in a later save
            ready.close()
        step += 1


def test_sigkill_during_saves_never_breaks_a_listed_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    ctx = mp.get_context("forkserver")
    # Effective only if no forkserver runs yet (this file sorts before the distributed tests,
    # which share the server: their modules are preloaded too; missing ones are skipped).
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed",
                                "mlmf_lab.checkpoint.manager", "mlmf_lab.distributed", __name__])
    timing = random.Random(0)
    interrupted = 0
    best_so_far, latest_so_far = math.inf, -1
    model, opt, sched = build()
    for trial in range(TRIALS):
        ready, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=save_forever, args=(str(root), trial, child_end), daemon=True)
        proc.start()
        child_end.close()
        assert ready.poll(120), "the saver did not start"
        time.sleep(timing.uniform(0.0, 0.2))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        ready.close()

        names = os.listdir(root)
        interrupted += any(n.startswith(".") for n in names)  # the kill hit a save or a delete
        cm = ml.CheckpointManager(root, **POLICY)  # type: ignore[arg-type]
        records = cm.list()
        assert {n for n in names if not n.startswith(".")} == {r.name for r in records}
        for record in records:
            cm.load(model, record, optimizer=opt, scheduler=sched)  # verifies every sha256
            assert record.extra["seed"] <= trial
        assert not [n for n in os.listdir(root) if n.startswith(".")]  # leftovers cleaned
        if records:
            # Retention never dropped the best or went back in time, whatever the kill hit.
            best = cm.best()
            assert best is not None and best.metrics["val_loss"] <= best_so_far
            assert records[-1].step >= latest_so_far
            best_so_far, latest_so_far = best.metrics["val_loss"], records[-1].step
    assert latest_so_far >= TRIALS, "every saver finishes at least one save before the kill"
    assert interrupted >= TRIALS // 4, f"only {interrupted} kills landed inside a save"
