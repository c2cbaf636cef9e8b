"""CompareView without a browser: state from the Comparison, clicks as traitlet changes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.models import MiniLM

TEXTS = ["A cat sleeps on the sofa.", "Dogs bark at night.", "The stock market fell today.",
         "A kitten naps on a couch."]


@pytest.fixture(scope="module")
def comparison() -> ml.compare.Comparison:  # type: ignore[name-defined]
    lm = MiniLM.from_pretrained(ml.examples.minilm_dir())
    q = copy.deepcopy(lm)
    ml.quant.quantize_model(q, "q8_0")
    return ml.compare(lm, q, TEXTS)


def test_state_comes_from_the_comparison(comparison) -> None:
    view = ml.views.CompareView(comparison)
    labels = [x["label"] for x in view.layers]
    assert labels == [f"layer {i}" for i in range(6)] + ["other"]
    top = max(comparison.weights.layers, key=lambda x: x.share)
    assert view.layer == top.layer  # starts on the layer with the largest share of Σ|ΔW|
    assert view.cka_shape == [6, 6]
    cka = np.frombuffer(view.cka, dtype=np.float32).reshape(6, 6)
    assert np.allclose(np.diag(cka), comparison.activations.cka, atol=1e-6)
    assert view.kl_counts == []  # a sentence encoder: no per-token KL
    assert comparison.outputs.cosine_mean > 0.99 and comparison.outputs.spearman > 0.9


def test_a_layer_click_sends_its_tensors_and_the_detail(comparison) -> None:
    view = ml.views.CompareView(comparison, metric="sigma")
    view.layer = "layer 2"
    names = [r["name"] for r in view.tensors]
    assert names and all(n.startswith("encoder.layer.2.") for n in names)
    assert view.tensor in names
    row = comparison.weights[view.tensor]
    hist = np.frombuffer(view.hist, dtype=np.float32).reshape(3, -1)
    assert hist.sum(1).tolist() == [float(np.prod(row.shape_a))] * 2 + [hist[2].sum()]
    assert view.spectrum == pytest.approx(list(row.singular_values))
    view.tensor = names[0]
    assert view.spectrum == pytest.approx(list(comparison.weights[names[0]].singular_values))
    assert repr(view) == (f"CompareView(MiniLM -> MiniLM: 7 layers, metric sigma; layer "
                          f"layer 2, tensor {names[0]})")


def test_bad_choices_name_the_choices(comparison) -> None:
    view = ml.views.CompareView(comparison)
    with pytest.raises(ml.MLMFError, match="unknown metric 'bogus'; choose one of rel_change"):
        view.metric = "bogus"
    with pytest.raises(ml.MLMFError, match="no layer 'layer 9'; the comparison has layer 0"):
        view.layer = "layer 9"
    with pytest.raises(ml.MLMFError, match="no tensor named 'nope'; the comparison MiniLM -> "
                                           "MiniLM has 104 tensors"):
        view.tensor = "nope"


def test_fallback_png_and_saved_page(comparison, tmp_path) -> None:
    view = ml.views.CompareView(comparison)
    data, _ = view._repr_mimebundle_()
    assert data["image/png"].startswith("iVBOR") and data["text/plain"] == repr(view)
    page = view.save_html(tmp_path / "compare.html").read_text(encoding="utf-8")
    assert 'root.dataset.view = "compare"' in page and "encoder.layer.5.output.dense.weight" in page


def test_a_language_model_shows_its_kl_distribution() -> None:
    torch.manual_seed(0)

    class LM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(32, 8)
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))
            self.head = torch.nn.Linear(8, 32)

        def forward(self, input_ids, attention_mask):  # noqa: ANN001, ANN201
            x = self.embed(input_ids)
            for b in self.blocks:
                x = torch.tanh(b(x))
            return type("Out", (), {"logits": self.head(x)})()

    a = LM()
    b = copy.deepcopy(a)
    b.head.weight.data.mul_(1.2)
    c = ml.compare(a, b, torch.randint(0, 32, (3, 10)))
    view = ml.views.CompareView(c)
    assert sum(view.kl_counts) == c.outputs.tokens == 27
