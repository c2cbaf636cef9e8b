"""ml.compare against formulas written here: numpy norms, a numpy HSIC, torch's KL, scipy's
rank correlations and llama.cpp's definitions spelled out naively."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_tiny import causal_lm, gpt2

import mlmf_lab as ml
from mlmf_lab.compare.activations import linear_cka
from mlmf_lab.compare.outputs import embedding_stats, kendall, spearman, token_stats
from mlmf_lab.compare.sources import read_private
from mlmf_lab.compare.weights import histogram, moments, spectrum, tensor_change


def test_tensor_metrics_match_numpy_also_across_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1000, generator=g)
    b = a.clone()
    b[::3] += torch.randn(334, generator=g) * 0.1
    x, y = a.double().numpy(), b.double().numpy()
    ch = tensor_change(a, b)
    assert ch.rel_change == pytest.approx(np.linalg.norm(y - x) / np.linalg.norm(x), rel=1e-12)
    assert ch.cosine == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), rel=1e-12)
    assert ch.sigma == pytest.approx(np.abs(y - x).sum() / (np.abs(x).sum() + np.abs(y).sum()),
                                     rel=1e-12)
    assert ch.changed == pytest.approx(334 / 1000) and ch.max_abs == np.abs(y - x).max()
    assert moments(a, b, chunk=7) == pytest.approx(moments(a, b))  # chunking changes nothing


def test_spectrum_of_a_low_rank_delta_matches_svd() -> None:
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(300, 4, generator=g) @ torch.randn(4, 200, generator=g)  # rank 4
    s = spectrum(delta, k=8)
    want = torch.linalg.svdvals(delta.double())[:8]
    assert s.energy_rank == 4 and s.top_share == pytest.approx(1.0, rel=1e-6)
    assert list(s.values[:4]) == pytest.approx(want[:4].tolist(), rel=1e-5)
    noise = spectrum(torch.randn(300, 200, generator=g), k=8)
    assert noise.energy_rank is None and noise.top_share < 0.3


def test_histogram_matches_numpy() -> None:
    x = torch.randn(5000, generator=torch.Generator().manual_seed(2))
    counts, lo, hi = histogram(x, 20, chunk=333)
    want, edges = np.histogram(x.numpy(), 20)
    assert counts == want.tolist() and (lo, hi) == pytest.approx((edges[0], edges[-1]))


def numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC with linear kernels and the centering matrix H (Kornblith et al. 2019, eq. 3)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, lg = x @ x.T, y @ y.T

    def hsic(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.trace(p @ h @ q @ h)) / (n - 1) ** 2

    return hsic(k, lg) / math.sqrt(hsic(k, k) * hsic(lg, lg))


@pytest.mark.parametrize("n", [10, 80])  # N×N form and d×d form
def test_linear_cka_matches_a_numpy_hsic(n: int) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 24, generator=g)
    y = torch.tanh(x @ torch.randn(24, 16, generator=g)) + 0.3 * torch.randn(n, 16, generator=g)
    assert linear_cka(x, y) == pytest.approx(numpy_cka(x.double().numpy(), y.double().numpy()),
                                             rel=1e-9)
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_token_stats_follow_torch_and_llama_cpp_definitions() -> None:
    g = torch.Generator().manual_seed(4)
    la = torch.randn(200, 50, generator=g) * 2
    lb = la + 0.3 * torch.randn(200, 50, generator=g)
    t = torch.randint(0, 50, (200,), generator=g)
    s = token_stats(la, lb, t)
    pa, pb = la.double().log_softmax(-1), lb.double().log_softmax(-1)
    kl = torch.nn.functional.kl_div(pb, pa, log_target=True, reduction="none").sum(-1)
    assert s.kl_mean == pytest.approx(float(kl.mean()), rel=1e-9)
    assert s.kl_mean_unc == pytest.approx(float(kl.std()) / math.sqrt(200), rel=1e-6)
    assert s.kl_percentiles["Median"] == pytest.approx(float(np.median(kl.numpy())), rel=1e-6)
    assert s.kl_percentiles["99.0%"] == pytest.approx(float(np.percentile(kl.numpy(), 99)),
                                                      rel=1e-6)
    assert s.kl_percentiles["Maximum"] == pytest.approx(float(kl.max()), rel=1e-6)
    na, nb = -pa.gather(1, t[:, None])[:, 0], -pb.gather(1, t[:, None])[:, 0]
    dp = (torch.exp(-nb) - torch.exp(-na)).numpy()
    assert s.dp_mean == pytest.approx(dp.mean(), rel=1e-9)
    assert s.rms_dp == pytest.approx(math.sqrt((dp**2).mean()), rel=1e-9)
    same = float((la.argmax(-1) == lb.argmax(-1)).double().mean())
    assert s.same_top == same
    assert s.same_top_unc == pytest.approx(math.sqrt(same * (1 - same) / 199))
    # PPL ratio: the difference of two correlated means, its standard error from the paired
    # differences (what √(s_b² + s_a² - 2 cov) is)
    diff = (nb - na).numpy()
    assert s.ln_ppl_ratio == pytest.approx(diff.mean(), rel=1e-9)
    assert s.ln_ppl_ratio_unc == pytest.approx(diff.std() / math.sqrt(199), rel=1e-6)
    assert s.ppl_ratio == pytest.approx(math.exp(diff.mean()))
    assert s.ln_ppl_correlation == pytest.approx(np.corrcoef(nb, na)[0, 1], rel=1e-6)
    same_model = token_stats(la, la, t)
    assert same_model.kl_mean == 0 and same_model.same_top == 1 and same_model.ppl_ratio == 1


def test_rank_agreement_matches_scipy() -> None:
    import scipy.stats as stats
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, generator=g)
    y = x + torch.randn(40, generator=g)
    y[3] = y[4]  # a tie
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-9)
    assert kendall(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, rel=1e-9)
    e = torch.randn(6, 8, generator=g)
    same = embedding_stats(e, e)
    assert same.cosine_mean == pytest.approx(1.0) and same.spearman == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("llama")
    return folder, causal_lm(folder, "llama", tokenizer=False)


def test_hf_against_its_f32_gguf_changes_nothing(tiny_lm, tmp_path: Path) -> None:
    folder, _ = tiny_lm
    ml.convert(folder, tmp_path / "m.gguf")
    c = ml.compare(folder, tmp_path / "m.gguf")
    rows = [t for t in c.weights.tensors if t.status != "only in a"]
    assert len(rows) == 2 * 9 + 3  # llama's Q/K rows were put back: every tensor matches
    assert all(t.rel_change == 0.0 and t.status == "same" for t in rows)
    q8 = ml.compare(folder, tmp_path / "m.gguf", labels=("hf", "gguf"))
    assert q8.a == "hf" and q8.weights.total.rel_change == 0.0


def test_a_model_against_itself_and_its_quantized_copy(tiny_lm) -> None:
    _, model = tiny_lm
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(6))
    same = ml.compare(model, model, ids)
    assert same.weights.total.rel_change == 0.0
    assert all(t.status == "same" for t in same.weights.tensors)
    assert same.activations.cka == pytest.approx((1.0, 1.0))
    assert same.outputs.kl_mean == 0.0 and same.outputs.same_top == 1.0
    assert same.activations.lens_kl == (0.0, 0.0)
    q = copy.deepcopy(model)
    ml.quant.quantize_model(q, "q4_0")
    c = ml.compare(model, q, ids)
    w = c.weights["model.layers.0.mlp.up_proj.weight"]
    assert w.status == "changed" and 0 < w.rel_change < 0.3 and w.energy_rank is None
    assert c.weights["model.norm.weight"].status == "same"
    assert c.outputs.tokens == 2 * 23 and c.outputs.kl_mean > 0
    assert 0 < c.activations.cka[1] < 1 and len(c.activations.cka_matrix) == 2
    by_layer = {r["layer"]: r for r in c.rows()}
    layer0 = [t for t in c.weights.tensors if t.layer == "layer 0"]
    num = math.sqrt(sum(t._moments.sq_d for t in layer0))
    den = math.sqrt(sum(t._moments.sq_a for t in layer0))
    assert by_layer["layer 0"]["rel_change"] == pytest.approx(num / den)
    assert sum(x.share for x in c.weights.layers) == pytest.approx(1.0)
    assert by_layer["layer 1"]["cka"] == c.activations.cka[1]


def test_a_merged_lora_shows_its_rank(tiny_lm) -> None:
    _, model = tiny_lm
    tuned = copy.deepcopy(model)
    ml.lora.inject(tuned, rank=4, alpha=8, targets=["q_proj"])
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(generator=torch.Generator().manual_seed(7))
    tuned = ml.lora.unload(tuned, merge_first=True)
    c = ml.compare(model, tuned)
    q = c.weights["model.layers.1.self_attn.q_proj.weight"]
    assert q.status == "changed" and q.energy_rank <= 4 and len(q.singular_values) == 16
    assert c.weights["model.layers.1.self_attn.k_proj.weight"].status == "same"


def test_bad_inputs_say_what_differs(tiny_lm, tmp_path: Path) -> None:
    folder, model = tiny_lm
    other = tmp_path / "gpt2"
    gpt2(other)
    with pytest.raises(ml.MLMFError, match="different architectures: .* is 'llama', .* is "
                                           "'gpt2'"):
        ml.compare(folder, other)
    with pytest.raises(ml.MLMFError, match=r"no tensor name in common: state dict has 1 "
                                           r"tensors \(x\), state dict has 1 tensors \(y\)"):
        ml.compare({"x": torch.ones(1)}, {"y": torch.ones(1)})
    with pytest.raises(ml.MLMFError, match=r"a \(LlamaForCausalLM\) cannot take these inputs "
                                           r"\(input_ids \(1, 3\)"):
        ml.compare(model, model, torch.tensor([[1, 2, 9999]]), labels=("a", "b"))
    with pytest.raises(ml.MLMFError, match="activations and outputs need a model"):
        ml.compare(model.state_dict(), model, torch.tensor([[1, 2, 3]]))
    with pytest.raises(ml.MLMFError, match="cannot compare a int"):
        ml.compare(3, model)


def test_safetensors_are_read_outside_the_memory_map(tmp_path: Path) -> None:
    state = {"w": torch.randn(4, 5), "h": torch.randn(3).to(torch.bfloat16)}
    ml.save_state_dict(state, tmp_path / "a.safetensors")
    with ml.open_weights(tmp_path / "a.safetensors") as wf:
        for name, t in state.items():
            got = read_private(wf, name)
            assert torch.equal(got, t) and got.dtype == t.dtype
