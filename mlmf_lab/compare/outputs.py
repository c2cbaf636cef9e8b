"""The outputs level: what two models predict on the same inputs, with llama.cpp's numbers.

For language models, ``token_stats(logits_a, logits_b, targets)`` scores every position
against the next token, as ``llama-perplexity --kl-divergence`` does (a = the base model,
b = the other, called Q there):

- KL(a ‖ b) per token, Σ p_a (ln p_a - ln p_b), exact (llama.cpp stores the base log-probs
  in 16 bits and skips ln p_a < -16; the difference is far below its printed digits);
- Δp = p_b(correct) - p_a(correct); RMS Δp = √mean(Δp²);
- "same top p": the share of positions whose arg-max agrees, ± √(p(1-p)/(n-1));
- PPL ratio exp(mean(nll_b) - mean(nll_a)) with the uncertainty of the difference of two
  correlated means, √(s_b² + s_a² - 2 cov), and exp'd.

``mean_and_uncertainty``, ``covariance`` and ``percentile`` are llama.cpp's definitions
(``tools/perplexity/perplexity.cpp``): standard errors are 0 for 10 tokens or fewer, and
percentiles interpolate linearly between sorted values.

For sentence encoders, ``embedding_stats`` gives the cosine between the two models'
embeddings of each input and the rank agreement (Spearman, Kendall) of their similarity
matrices' off-diagonal entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import MLMFError
from ..tables import Column, Table, fields_dict, fields_row

KL_LEVELS = (("Maximum", 1.0), ("99.9%", 0.999), ("99.0%", 0.99), ("95.0%", 0.95),
             ("90.0%", 0.90), ("Median", 0.5), ("10.0%", 0.10), ("5.0%", 0.05), ("1.0%", 0.01),
             ("0.1%", 0.001), ("Minimum", 0.0))
DP_LEVELS = KL_LEVELS[:5] + (("75.0%", 0.75), ("Median", 0.5), ("25.0%", 0.25)) + KL_LEVELS[6:]


def mean_and_uncertainty(total: float, total_sq: float, n: int) -> tuple[float, float]:
    """Mean and its standard error from Σx and Σx² (0 error for n ≤ 10), as llama.cpp."""
    if n < 1:
        return 0.0, 0.0
    f = total / n
    df = total_sq / n - f * f
    return f, math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0


def covariance(total_a: float, total_b: float, total_ab: float, n: int) -> float:
    """Covariance of the two means from Σa, Σb, Σab (0 for n < 10), as llama.cpp."""
    if n < 10:
        return 0.0
    return (total_ab / n - (total_a / n) * (total_b / n)) / (n - 1)


def percentile(values: torch.Tensor, fraction: float) -> float:
    """llama.cpp's percentile of sorted ``values``: linear between neighbours (the median of
    an even count is the mean of the middle two, which this gives at 0.5)."""
    n = values.numel()
    if fraction <= 0:
        return float(values[0])
    if fraction >= 1:
        return float(values[-1])
    p = fraction * (n - 1)
    i = int(p)
    p -= i
    return float((1 - p) * values[i] + p * values[min(i + 1, n - 1)])


@dataclass(frozen=True)
class TokenStats:
    """llama.cpp's ``--kl-divergence`` statistics of model b against base model a."""

    tokens: int
    ppl_a: float
    ppl_a_unc: float
    ppl_b: float
    ppl_b_unc: float
    ln_ppl_correlation: float
    ln_ppl_ratio: float
    ln_ppl_ratio_unc: float
    ppl_ratio: float
    ppl_ratio_unc: float
    ppl_diff: float
    ppl_diff_unc: float
    kl_mean: float
    kl_mean_unc: float
    kl_percentiles: dict[str, float]
    dp_mean: float
    dp_mean_unc: float
    dp_percentiles: dict[str, float]
    rms_dp: float
    rms_dp_unc: float
    same_top: float
    same_top_unc: float
    _kl: torch.Tensor = field(default_factory=lambda: torch.zeros(0), repr=False, compare=False)
    _dp: torch.Tensor = field(default_factory=lambda: torch.zeros(0), repr=False, compare=False)

    @property
    def kl_values(self) -> torch.Tensor:
        """KL(a ‖ b) of every scored token, sorted."""
        return self._kl

    @property
    def dp_values(self) -> torch.Tensor:
        """Δp of every scored token, sorted."""
        return self._dp

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        """llama.cpp's printout as rows: statistic, value, ± uncertainty (probabilities in %)."""
        def r(name: str, value: float, unc: float | None = None,
              pct: bool = False) -> dict[str, Any]:
            k = 100.0 if pct else 1.0
            return {"statistic": name, "value": value * k,
                    "uncertainty": None if unc is None else unc * k, "unit": "%" if pct else ""}

        out = [r("Mean PPL(b)", self.ppl_b, self.ppl_b_unc),
               r("Mean PPL(a)", self.ppl_a, self.ppl_a_unc),
               r("Cor(ln(PPL(b)), ln(PPL(a)))", self.ln_ppl_correlation, pct=True),
               r("Mean ln(PPL(b)/PPL(a))", self.ln_ppl_ratio, self.ln_ppl_ratio_unc),
               r("Mean PPL(b)/PPL(a)", self.ppl_ratio, self.ppl_ratio_unc),
               r("Mean PPL(b)-PPL(a)", self.ppl_diff, self.ppl_diff_unc),
               r("Mean KLD", self.kl_mean, self.kl_mean_unc)]
        out += [r(f"{k} KLD", v) for k, v in self.kl_percentiles.items()]
        out.append(r("Mean Δp", self.dp_mean, self.dp_mean_unc, pct=True))
        out += [r(f"{k} Δp", v, pct=True) for k, v in self.dp_percentiles.items()]
        out += [r("RMS Δp", self.rms_dp, self.rms_dp_unc, pct=True),
                r("Same top p", self.same_top, self.same_top_unc, pct=True)]
        return out

    def table(self) -> Table:
        return Table([Column("statistic"), Column("value", fmt=".6f"),
                      Column("uncertainty", "±", ".6f"), Column("unit", "")],
                     self.rows(), title=f"outputs: {self.tokens} tokens scored, "
                     "b against base a (llama.cpp's --kl-divergence statistics)")

    def _repr_html_(self) -> str:
        return self.table().html()


def token_stats(logits_a: torch.Tensor, logits_b: torch.Tensor,
                targets: torch.Tensor) -> TokenStats:
    """llama.cpp's KL-divergence statistics over ``N`` scored positions.

    Args:
        logits_a: (N, V) logits of the base model at each scored position.
        logits_b: (N, V) logits of the other model.
        targets: (N,) the correct next token at each position.

    Raises:
        MLMFError: shapes that disagree, or no position to score.
    """
    if logits_a.shape != logits_b.shape or logits_a.ndim != 2 or \
            targets.shape != logits_a.shape[:1]:
        raise MLMFError(f"the two models' logits differ in shape: {tuple(logits_a.shape)} vs "
                        f"{tuple(logits_b.shape)} (targets {tuple(targets.shape)}); the models "
                        "must share a vocabulary")
    n = int(targets.numel())
    if n == 0:
        raise MLMFError("no token to score: the inputs need at least two tokens per sequence")
    la = torch.log_softmax(logits_a.double(), -1)
    lb = torch.log_softmax(logits_b.double(), -1)
    idx = targets.long()[:, None]
    nll_a, nll_b = -la.gather(1, idx)[:, 0], -lb.gather(1, idx)[:, 0]
    kl = (la.exp() * (la - lb)).sum(-1)
    dp = torch.exp(-nll_b) - torch.exp(-nll_a)
    same = int((logits_a.argmax(-1) == logits_b.argmax(-1)).sum())

    def s(x: torch.Tensor) -> float:
        return float(x.sum())

    lp_b = mean_and_uncertainty(s(nll_b), s(nll_b**2), n)
    lp_a = mean_and_uncertainty(s(nll_a), s(nll_a**2), n)
    cov = covariance(s(nll_b), s(nll_a), s(nll_b * nll_a), n)
    cor = cov / (lp_b[1] * lp_a[1]) if lp_b[1] and lp_a[1] else math.nan
    ratio = lp_b[0] - lp_a[0]
    ratio_unc = math.sqrt(max(0.0, lp_b[1] ** 2 + lp_a[1] ** 2 - 2 * cov))
    ppl_b, ppl_a = math.exp(lp_b[0]), math.exp(lp_a[0])
    ppl_b_unc, ppl_a_unc = ppl_b * lp_b[1], ppl_a * lp_a[1]
    ppl_cov = ppl_b * ppl_a * cov
    kl_m = mean_and_uncertainty(s(kl), s(kl**2), n)
    dp_m = mean_and_uncertainty(s(dp), s(dp**2), n)
    mse = mean_and_uncertainty(s(dp**2), s(dp**4), n)
    rms = math.sqrt(mse[0])
    top = same / n
    kl_sorted, dp_sorted = kl.sort().values, dp.sort().values
    return TokenStats(
        n, ppl_a, ppl_a_unc, ppl_b, ppl_b_unc, cor, ratio, ratio_unc, math.exp(ratio),
        math.exp(ratio) * ratio_unc, ppl_b - ppl_a,
        math.sqrt(max(0.0, ppl_b_unc**2 + ppl_a_unc**2 - 2 * ppl_cov)), *kl_m,
        {k: percentile(kl_sorted, f) for k, f in KL_LEVELS}, *dp_m,
        {k: percentile(dp_sorted, f) for k, f in DP_LEVELS}, rms,
        0.5 / rms * mse[1] if rms else 0.0, top,
        math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0,
        _kl=kl_sorted.float(), _dp=dp_sorted.float())


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``x`` (1-D), ties sharing their mean rank (as ``scipy.stats.rankdata``)."""
    order = torch.argsort(x, stable=True)
    sx = x[order]
    r = torch.empty(x.numel(), dtype=torch.float64)
    i, n = 0, x.numel()
    while i < n:
        j = i
        while j + 1 < n and sx[j + 1] == sx[i]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks."""
    rx, ry = ranks(x) - (x.numel() + 1) / 2, ranks(y) - (y.numel() + 1) / 2
    den = math.sqrt(float((rx**2).sum()) * float((ry**2).sum()))
    return float((rx * ry).sum()) / den if den else math.nan


def kendall(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kendall's τ-b (ties counted as scipy does), O(n²) over pairs: for similarity matrices
    of a few hundred inputs."""
    dx = torch.sign(x[:, None] - x[None, :]).double()
    dy = torch.sign(y[:, None] - y[None, :]).double()
    upper = torch.triu(torch.ones_like(dx, dtype=torch.bool), 1)
    s = float((dx * dy)[upper].sum())
    nx, ny = float((dx != 0)[upper].sum()), float((dy != 0)[upper].sum())
    return s / math.sqrt(nx * ny) if nx and ny else math.nan


@dataclass(frozen=True)
class EmbeddingStats:
    """How two sentence encoders agree on the same inputs."""

    inputs: int
    cosine_mean: float  # cos(e_a(x), e_b(x)) over the inputs
    cosine_min: float
    spearman: float  # rank agreement of the off-diagonal similarities
    kendall: float
    same_neighbour: float  # share of inputs whose nearest other input is the same for both
    _cosines: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return fields_dict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [fields_row(self)]

    def table(self) -> Table:
        return Table([Column("inputs"), Column("cosine_mean", "mean cos(e_a, e_b)", ".6f"),
                      Column("cosine_min", "min cos", ".6f"),
                      Column("spearman", "Spearman ρ of similarities", ".4f"),
                      Column("kendall", "Kendall τ", ".4f"),
                      Column("same_neighbour", "same nearest neighbour", ".1%")],
                     self.rows(), title="outputs: sentence embeddings, b against a")

    def _repr_html_(self) -> str:
        return self.table().html()


def embedding_stats(emb_a: torch.Tensor, emb_b: torch.Tensor) -> EmbeddingStats:
    """Cosine per input and rank agreement of the similarity matrices of (N, d) embeddings.

    Raises:
        MLMFError: different numbers of inputs, or fewer than 3 (no ranking to compare).
    """
    if emb_a.shape[0] != emb_b.shape[0] or emb_a.ndim != 2 or emb_b.ndim != 2:
        raise MLMFError(f"embeddings of different inputs: {tuple(emb_a.shape)} vs "
                        f"{tuple(emb_b.shape)}")
    n = emb_a.shape[0]
    if n < 3:
        raise MLMFError(f"rank agreement needs at least 3 inputs; got {n}")
    ea = torch.nn.functional.normalize(emb_a.double(), dim=-1)
    eb = torch.nn.functional.normalize(emb_b.double(), dim=-1)
    cos = (ea * eb).sum(-1) if ea.shape == eb.shape else torch.full((n,), math.nan)
    sa, sb = ea @ ea.T, eb @ eb.T
    off = ~torch.eye(n, dtype=torch.bool)
    iu = torch.triu_indices(n, n, 1)
    xa, xb = sa[iu[0], iu[1]], sb[iu[0], iu[1]]
    na = sa.masked_fill(~off, -math.inf).argmax(-1)
    nb = sb.masked_fill(~off, -math.inf).argmax(-1)
    return EmbeddingStats(n, float(cos.mean()), float(cos.min()), spearman(xa, xb),
                          kendall(xa, xb), float((na == nb).double().mean()),
                          tuple(float(c) for c in cos))


__all__ = ["DP_LEVELS", "EmbeddingStats", "KL_LEVELS", "TokenStats", "covariance",
           "embedding_stats", "kendall", "mean_and_uncertainty", "percentile", "ranks",
           "spearman", "token_stats"]
