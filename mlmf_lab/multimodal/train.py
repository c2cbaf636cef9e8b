"""Training and measuring the demo models: accuracy per fusion strategy, and where the
caption's cross-attention lands on the image.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..progress import bar
from .config import FusionStrategy
from .demo import IMAGE_ONLY_BOUND, ShapesData, ShapesTask, demo_config, make_dataset
from .model import MultiModalModel

# found by a small sweep (1e-2, 5e-3, 3e-3) at 300 steps: cross-attention needs a gentler step
LEARNING_RATES = {FusionStrategy.EARLY: 5e-3, FusionStrategy.MIDDLE: 3e-3,
                  FusionStrategy.LATE: 5e-3, FusionStrategy.ATTENTION: 5e-3}


def train_classifier(model: MultiModalModel, data: ShapesData, steps: int = 300,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                     progress: bool = False) -> list[float]:
    """AdamW on cross-entropy over random mini-batches; returns the loss per step."""

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    model.train()
    losses = []
    for _ in bar(range(steps), hide=not progress, desc="train", leave=False):
        idx = torch.randint(data.n, (batch_size,), generator=gen)
        loss = F.cross_entropy(model(data.inputs(idx)).logits, data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: MultiModalModel, data: ShapesData, drop: Sequence[str] = ()) -> float:
    """Share of correct answers; ``drop`` leaves those inputs out (missing modalities)."""
    model.eval()
    inputs = {k: v for k, v in data.inputs().items() if k not in drop}
    pred = model(inputs).logits.argmax(-1)
    return float((pred == data.labels).float().mean())


class AttentionMass(NamedTuple):
    """Share of the caption's attention over the image that falls on each object's patch.

    target: on the patch of the shape meant. distractors: mean over the two other shapes.
    uniform: what attention spread evenly would give (1 / number of patches).
    """

    target: float
    distractors: float
    uniform: float

    @property
    def ratio(self) -> float:
        return self.target / self.uniform


@torch.no_grad()
def image_attention(model: MultiModalModel, data: ShapesData,
                    query: str = "caption", key: str = "image") -> torch.Tensor:
    """(N, patches): the ``query`` tokens' attention over the ``key`` patches at the last
    cross-attention layer, averaged over heads and real query tokens, renormalised to 1."""
    model.eval()
    out = model(data.inputs(), need_weights=True)
    maps = [m for m in out.cross if m.query == query]
    if not maps:
        raise ValueError("no cross-attention maps: attention mass needs middle fusion")
    w = maps[-1].span(key).mean(dim=1)  # (N, Nq, patches)
    qmask = data.inputs()[query]
    qm = qmask[1] if isinstance(qmask, tuple) else torch.ones(w.shape[:2], dtype=torch.bool)
    w = (w * qm[..., None]).sum(1) / qm.sum(1, keepdim=True)
    return w / w.sum(-1, keepdim=True)


def attention_mass(model: MultiModalModel, data: ShapesData) -> AttentionMass:
    """Attention mass of the caption on the named shape's patch vs the other shapes and
    the uniform baseline."""
    w = image_attention(model, data)
    n = torch.arange(data.n)
    target = w[n, data.target_cell]
    on_objects = w.gather(1, data.cells).sum(1)
    return AttentionMass(float(target.mean()), float(((on_objects - target) / 2).mean()),
                         1.0 / w.shape[1])


class FusionResult(NamedTuple):
    """One row of the comparison."""

    strategy: str
    accuracy: float
    accuracy_named: float  # caption names the colour
    accuracy_spoken: float  # the tone gives the colour
    final_loss: float


class FusionReport(NamedTuple):
    """Accuracy per fusion strategy on held-out samples, and the trained models."""

    rows: list[FusionResult]
    chance: float
    image_only: float  # the best any image-only model can do
    models: dict[str, MultiModalModel]
    losses: dict[str, list[float]]

    def table(self) -> str:
        """Markdown table."""
        lines = ["| fusion | accuracy | caption names colour | tone gives colour | final loss |",
                 "|---|---|---|---|---|"]
        lines += [f"| {r.strategy} | {r.accuracy:.3f} | {r.accuracy_named:.3f} | "
                  f"{r.accuracy_spoken:.3f} | {r.final_loss:.3f} |" for r in self.rows]
        lines.append(f"| (chance) | {self.chance:.3f} | | | |")
        lines.append(f"| (best image-only) | {self.image_only:.3f} | | | |")
        return "\n".join(lines)

    def __repr__(self) -> str:  # the table, not every model and loss curve
        return f"FusionReport ({len(self.models)} models trained)\n{self.table()}"

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td>{html.escape(r.strategy)}</td><td>{r.accuracy:.3f}</td>"
            f"<td>{r.accuracy_named:.3f}</td><td>{r.accuracy_spoken:.3f}</td>"
            f"<td>{r.final_loss:.3f}</td></tr>" for r in self.rows)
        return ("<table><tr><th>fusion</th><th>accuracy</th><th>caption names colour</th>"
                f"<th>tone gives colour</th><th>final loss</th></tr>{body}"
                f"<tr><td><i>chance</i></td><td>{self.chance:.3f}</td></tr>"
                f"<tr><td><i>best image-only</i></td><td>{self.image_only:.3f}</td></tr></table>")


def compare_fusions(strategies: Sequence[tuple[str, FusionStrategy, str]] | None = None,
                    n_train: int = 2048, n_test: int = 512, steps: int = 300,
                    dim: int = 32, seed: int = 0, progress: bool = False,
                    task: ShapesTask | None = None, threads: int = 1) -> FusionReport:
    """Train one small model per strategy on the same data; test on held-out samples.

    Args:
        strategies: (label, strategy, late mode); default: early, middle, late (mean,
            weighted, gate), attention.
    """
    task = task or ShapesTask()
    strategies = strategies or [
        ("early", FusionStrategy.EARLY, "mean"), ("middle", FusionStrategy.MIDDLE, "mean"),
        ("late (mean)", FusionStrategy.LATE, "mean"),
        ("late (weighted)", FusionStrategy.LATE, "weighted"),
        ("late (gate)", FusionStrategy.LATE, "gate"),
        ("attention", FusionStrategy.ATTENTION, "mean")]
    tok = task.tokenizer()
    train = make_dataset(n_train, seed, task, tok)
    test = make_dataset(n_test, seed + 1, task, tok)
    rows, models, losses = [], {}, {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # tiny models: one thread is faster and reproducible
    try:
        for label, strategy, mode in strategies:
            row, model, loss = _train_one(label, strategy, mode, task, tok.get_vocab_size(),
                                          train, test, steps, dim, seed, progress)
            rows.append(row)
            models[label], losses[label] = model, loss
    finally:
        torch.set_num_threads(previous)
    return FusionReport(rows, 1.0 / 3, IMAGE_ONLY_BOUND, models, losses)


def _train_one(label: str, strategy: FusionStrategy, mode: str, task: ShapesTask, vocab: int,
               train: ShapesData, test: ShapesData, steps: int, dim: int, seed: int,
               progress: bool) -> tuple[FusionResult, MultiModalModel, list[float]]:
    torch.manual_seed(seed)
    model = MultiModalModel(demo_config(strategy, task, vocab, dim, mode))
    losses = train_classifier(model, train, steps, batch_size=128, lr=LEARNING_RATES[strategy],
                              seed=seed, progress=progress)
    with torch.no_grad():
        pred = model(test.inputs()).logits.argmax(-1)
    ok = (pred == test.labels).float()
    row = FusionResult(label, float(ok.mean()), float(ok[~test.spoken].mean()),
                       float(ok[test.spoken].mean()), sum(losses[-20:]) / 20)
    return row, model, losses

