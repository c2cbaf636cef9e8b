"""Training and measuring the demo models: accuracy per fusion strategy, and where the
caption's cross-attention lands on the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..progress import Progress, bar, stage
from ..tables import Column, Table, fields_dict, fields_row
from .attention import pool_attention
from .config import FusionStrategy, MultiModalConfig
from .demo import IMAGE_ONLY_BOUND, ShapesData, ShapesTask, demo_config, make_dataset
from .model import MultiModalModel

# found by a small sweep (1e-2, 5e-3, 3e-3) at 300 steps: attention between modalities needs a
# gentler step (early fusion at 5e-3 collapsed to one constant answer on seeds 0 and 1 of 0-2)
LEARNING_RATES = {FusionStrategy.EARLY: 3e-3, FusionStrategy.MIDDLE: 3e-3,
                  FusionStrategy.LATE: 5e-3, FusionStrategy.ATTENTION: 5e-3}


def train_classifier(model: MultiModalModel, data: ShapesData, steps: int = 300,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                     progress: Progress = False) -> list[float]:
    """AdamW on cross-entropy over random mini-batches; returns the loss per step.

    The model gets the inputs it reads (a single-modality model only its own).
    ``progress``: a bar, or a function told ``(steps done, steps)``.
    """

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    model.train()
    losses = []
    for _ in bar(range(steps), progress=progress, desc="train", leave=False):
        idx = torch.randint(data.n, (batch_size,), generator=gen)
        loss = F.cross_entropy(model(_read(model, data.inputs(idx))).logits, data.labels[idx])
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
    inputs = {k: v for k, v in _read(model, data.inputs()).items() if k not in drop}
    pred = model(inputs).logits.argmax(-1)
    return float((pred == data.labels).float().mean())


def _read(model: MultiModalModel, inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k in model.config.names}


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

    def as_dict(self) -> dict[str, Any]:
        return {**fields_dict(self), "ratio": self.ratio}

    def rows(self) -> list[dict[str, Any]]:
        return [{**fields_row(self), "ratio": self.ratio}]


@torch.no_grad()
def image_attention(model: MultiModalModel, data: ShapesData,
                    query: str = "caption", key: str = "image") -> torch.Tensor:
    """(N, patches): the ``query`` tokens' attention over the ``key`` patches at the last
    cross-attention layer, pooled over heads and real query tokens (``pool_attention``).

    Raises:
        ConfigError: the model has no cross-attention from ``query`` (not middle fusion).
    """
    model.eval()
    out = model(data.inputs(), output_attentions=True)
    maps = out.attentions.get(f"fusion.{query}")
    if maps is None:
        raise ConfigError(f"no cross-attention from {query!r}: attention over the {key!r} "
                          f"needs a middle-fusion model, this one is {model.config.fusion.value}")
    qmask = data.inputs()[query]
    last = maps.span(key).weights[:, -1]  # (N, heads, queries, patches)
    return pool_attention(last, qmask[1] if isinstance(qmask, tuple) else None)


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

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]


class FusionReport(NamedTuple):
    """Accuracy per fusion strategy on held-out samples, and the trained models."""

    results: list[FusionResult]
    chance: float
    image_only: float  # the best any image-only model can do
    models: dict[str, MultiModalModel]
    losses: dict[str, list[float]]

    def as_dict(self) -> dict[str, Any]:
        """The results, the two baselines and the loss curves (not the models)."""
        return fields_dict(self, exclude=("models",))

    def rows(self) -> list[dict[str, Any]]:
        """One row per strategy, then the chance and best image-only accuracies."""
        return [row for r in self.results for row in r.rows()] + [
            {"strategy": "(chance)", "accuracy": self.chance},
            {"strategy": "(best image-only)", "accuracy": self.image_only}]

    def table(self) -> Table:
        return Table([Column("strategy", "fusion"), Column("accuracy", fmt=".3f"),
                      Column("accuracy_named", "caption names colour", ".3f"),
                      Column("accuracy_spoken", "tone gives colour", ".3f"),
                      Column("final_loss", "final loss", ".3f")], self.rows())

    def __repr__(self) -> str:  # the table, not every model and loss curve
        return f"FusionReport ({len(self.models)} models trained)\n{self.table().markdown()}"

    def _repr_html_(self) -> str:
        return self.table().html()


def compare_fusions(strategies: Sequence[tuple[str, FusionStrategy, str]] | None = None,
                    n_train: int = 2048, n_test: int = 512, steps: int = 300,
                    batch_size: int = 128, dim: int = 32, seed: int = 0,
                    progress: Progress = False,
                    task: ShapesTask | None = None, threads: int = 1,
                    alone: Sequence[str] = ()) -> FusionReport:
    """Train one small model per strategy on the same data; test on held-out samples.

    Args:
        strategies: (label, strategy, late mode); default: early, middle, late (mean,
            weighted, gate), attention.
        n_train, n_test: samples to train on and to test on; steps, batch_size: AdamW steps
            and samples per step (drawn with replacement).
        progress: a bar per model, or a function told ``(steps done, steps)`` over all
            the models.
        alone: inputs (``"caption"``, ``"image"``, ``"tone"``) to also train on their own,
            the same way: the single-modality baselines, labelled ``"<input> alone"``.
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
    runs = [(label, strategy, mode, None) for label, strategy, mode in strategies] + [
        (f"{name} alone", FusionStrategy.LATE, "mean", name) for name in alone]
    rows, models, losses = [], {}, {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # tiny models: one thread is faster and reproducible
    try:
        for i, (label, strategy, mode, only) in enumerate(runs):
            config = demo_config(strategy, task, tok.get_vocab_size(), dim, mode)
            if only is not None:
                config = replace(config, modalities=(config.modality(only),))
            row, model, loss = _train_one(label, config, train, test, steps, batch_size, seed,
                                          stage(progress, i * steps, len(runs) * steps))
            rows.append(row)
            models[label], losses[label] = model, loss
    finally:
        torch.set_num_threads(previous)
    return FusionReport(rows, 1.0 / 3, IMAGE_ONLY_BOUND, models, losses)


def _train_one(label: str, config: MultiModalConfig, train: ShapesData, test: ShapesData,
               steps: int, batch_size: int, seed: int,
               progress: Progress) -> tuple[FusionResult, MultiModalModel, list[float]]:
    torch.manual_seed(seed)
    model = MultiModalModel(config)
    losses = train_classifier(model, train, steps, batch_size=batch_size,
                              lr=LEARNING_RATES[config.fusion], seed=seed, progress=progress)
    with torch.no_grad():
        pred = model(_read(model, test.inputs())).logits.argmax(-1)
    ok = (pred == test.labels).float()
    row = FusionResult(label, float(ok.mean()), float(ok[~test.spoken].mean()),
                       float(ok[test.spoken].mean()), sum(losses[-20:]) / len(losses[-20:]))
    return row, model, losses

