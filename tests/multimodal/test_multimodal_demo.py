"""The demo task and every fusion strategy, cheaply: a few dozen steps on 64 samples each.

The task's truth is checked against the pictures and the tones. Each strategy must learn
(its loss falls), and the strategies must differ in what they compute (weights across
modalities, cross-attention maps, outputs). The full comparison (300 steps on 2048 samples:
every strategy above chance, middle fusion above any image-only model, the caption's
attention on the shape it names) is notebook 08's, whose check cells run under nbval.
"""

from __future__ import annotations

import pytest
import torch

from mlmf_lab.errors import ConfigError
from mlmf_lab.multimodal import demo, train
from mlmf_lab.multimodal.config import FusionStrategy
from mlmf_lab.multimodal.train import FusionReport

STRATEGIES = [("early", FusionStrategy.EARLY, "mean"), ("middle", FusionStrategy.MIDDLE, "mean"),
              ("late (mean)", FusionStrategy.LATE, "mean"),
              ("late (weighted)", FusionStrategy.LATE, "weighted"),
              ("late (gate)", FusionStrategy.LATE, "gate"),
              ("attention", FusionStrategy.ATTENTION, "mean")]
N = 64


@pytest.fixture(scope="module")
def report() -> FusionReport:
    return train.compare_fusions(STRATEGIES, n_train=N, n_test=N, steps=40, batch_size=N, seed=0)


@pytest.fixture(scope="module")
def test_data() -> demo.ShapesData:
    return demo.make_dataset(N, seed=1)  # what compare_fusions tested on


def test_task_truth_matches_the_pictures() -> None:
    samples = demo.make_samples(50, seed=7)
    data = demo.make_dataset(50, seed=7)
    task = demo.ShapesTask()
    colours = {k: torch.tensor(v, dtype=torch.float32) / 255 for k, v in demo.COLOURS.items()}
    mean = torch.tensor(task.image.mean).view(3, 1, 1)
    std = torch.tensor(task.image.std).view(3, 1, 1)
    for i, s in enumerate(samples):
        # the named colour is the one that dominates the target patch
        r, c = divmod(int(data.target_cell[i]), task.grid)
        p = task.patch
        cell = data.image.pixels[i, :, r * p:(r + 1) * p, c * p:(c + 1) * p] * std + mean
        bright = cell.flatten(1)[:, cell.flatten(1).sum(0) > 0.6]  # object pixels
        nearest = min(colours, key=lambda k: float((bright.mean(1) - colours[k]).norm()))
        assert nearest == s.colour
        assert s.answer == s.shapes[list(demo.COLOURS).index(s.colour)]
        assert (s.colour in s.caption) != s.spoken
    # the tone's pitch: its loudest mel band grows with the colour's frequency
    tones = {k: [] for k in demo.COLOURS}
    for i, s in enumerate(samples):
        if s.spoken:
            valid = data.audio.mel[i][:, data.audio.mask[i]]
            tones[s.colour].append(int(valid.mean(1).argmax()))
    bands = [sum(v) / len(v) for v in tones.values() if v]
    assert bands == sorted(bands) and len(bands) >= 2


def test_every_fusion_strategy_learns(report: FusionReport,
                                      test_data: demo.ShapesData) -> None:
    print("\n" + str(report.table()))
    assert [r.strategy for r in report.results] == [label for label, _, _ in STRATEGIES]
    for label, losses in report.losses.items():
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < first - 0.05, f"{label}: loss {first:.3f} -> {last:.3f}"
    for r in report.results:  # each row is its model's accuracy on the held-out samples
        assert r.accuracy == pytest.approx(train.accuracy(report.models[r.strategy], test_data))
    shown = repr(report)  # the table, not the models and loss curves
    assert shown.splitlines()[0] == "FusionReport (6 models trained)"
    assert report.table().markdown() in shown and len(shown) < 2000


@torch.no_grad()
def test_the_strategies_compute_different_things(report: FusionReport,
                                                 test_data: demo.ShapesData) -> None:
    out = {label: m(test_data.inputs(), output_attentions=True)
           for label, m in report.models.items()}
    labels = list(out)
    for i, a in enumerate(labels):  # six different functions of the same inputs
        for b in labels[i + 1:]:
            assert not torch.allclose(out[a].logits, out[b].logits, atol=1e-3), (a, b)
    # every encoder reports its self-attention; the fusions that attend report theirs
    fusion_maps = {label: sorted(k for k in out[label].attentions if k.startswith("fusion"))
                   for label in labels}
    assert fusion_maps == {"early": ["fusion"], "middle": ["fusion.caption", "fusion.image",
                                                           "fusion.tone"],
                           "late (mean)": [], "late (weighted)": [], "late (gate)": [],
                           "attention": ["fusion"]}
    assert all({"caption", "image", "tone"} <= set(out[label].attentions) for label in labels)
    # early and middle weigh no modality
    assert out["early"].modality_weights is None and out["middle"].modality_weights is None
    weights = {label: out[label].modality_weights for label in labels[2:]}
    for label, w in weights.items():  # every sample has all three inputs: weights sum to 1
        assert w is not None and torch.allclose(w.sum(-1), torch.ones(N), atol=1e-5), label
    assert torch.equal(weights["late (mean)"], torch.full((N, 3), 1 / 3))
    learned = weights["late (weighted)"]  # one learned set, the same for every sample
    assert torch.allclose(learned, learned[:1].expand(N, 3))
    assert not torch.allclose(learned[0], torch.full((3,), 1 / 3), atol=1e-4)
    for label in ("late (gate)", "attention"):  # chosen per sample
        assert float(weights[label].std(0).max()) > 1e-4, label


def test_caption_attention_over_the_image(report: FusionReport,
                                          test_data: demo.ShapesData) -> None:
    middle = report.models["middle"]
    maps = train.image_attention(middle, test_data)
    assert maps.shape == (N, 9) and (maps >= 0).all()
    assert torch.allclose(maps.sum(-1), torch.ones(N), atol=1e-5)
    mass = train.attention_mass(middle, test_data)
    # the same numbers, sample by sample
    target = [float(maps[i, test_data.target_cell[i]]) for i in range(N)]
    others = [(float(maps[i, test_data.cells[i]].sum()) - target[i]) / 2 for i in range(N)]
    assert mass.target == pytest.approx(sum(target) / N)
    assert mass.distractors == pytest.approx(sum(others) / N)
    assert mass.uniform == pytest.approx(1 / 9) and mass.ratio == pytest.approx(9 * mass.target)
    with pytest.raises(ConfigError, match="no cross-attention from 'caption': attention over "
                                          "the 'image' needs a middle-fusion model, this one "
                                          "is early"):
        train.image_attention(report.models["early"], test_data)
