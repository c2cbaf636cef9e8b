"""CompareView: where two models differ, layer by layer, with one tensor's detail a click away.

>>> ml.views.CompareView(ml.compare(base, quantized, inputs=ids))   # doctest: +SKIP

The page draws per-layer bars of a chosen metric (``metric``), the CKA heatmap and the
per-token KL distribution; a click on a layer's bar selects it (``layer``), Python picks its
most changed tensor (``tensor``, or any tensor of the layer clicked in the list) and sends
the histograms of both tensors and of ΔW and the ΔW spectrum, all computed by
``ml.compare`` while it streamed the weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets as t

from ..compare import Comparison, TokenStats
from ..errors import MLMFError
from ..plots.compare import METRICS
from ..tables import plain
from .base import View


def _tensor_detail(row: Any) -> dict[str, Any]:
    """What the page shows for one tensor: three histograms and the ΔW spectrum."""
    hist = np.asarray([h[0] for h in row._hist], dtype=np.float32) if row._hist else \
        np.zeros((0,), np.float32)
    return {"hist": hist.tobytes(), "hist_ranges": [[h[1], h[2]] for h in row._hist],
            "spectrum": list(row.singular_values),
            "energy_rank": -1 if row.energy_rank is None else int(row.energy_rank)}


class CompareView(View):
    """A ``Comparison`` (``ml.compare``) as per-layer bars, CKA heatmap and KL distribution.

    Args:
        comparison: what ``ml.compare`` returned.
        metric: the bars' metric, one of ``ml.plots.compare.METRICS``.
        title: shown above the view.

    Raises:
        MLMFError: an unknown metric, layer or tensor (listing the choices).
    """

    view_name = "compare"

    title = t.Unicode("").tag(sync=True)
    metric = t.Unicode("rel_change").tag(sync=True)
    metrics = t.List(t.List()).tag(sync=True)  # [key, label]
    layers = t.List(t.Dict()).tag(sync=True)  # per layer: label and every metric
    layer = t.Unicode("").tag(sync=True)  # the selected layer, "" = none
    tensors = t.List(t.Dict()).tag(sync=True)  # the selected layer's tensors
    tensor = t.Unicode("").tag(sync=True)  # the selected tensor
    hist = t.Bytes(b"").tag(sync=True)  # float32 (3, bins): a, b, ΔW
    hist_ranges = t.List(t.List()).tag(sync=True)  # [low, high] of each histogram
    spectrum = t.List(t.Float()).tag(sync=True)
    energy_rank = t.Int(-1).tag(sync=True)  # -1: more than the values kept
    cka = t.Bytes(b"").tag(sync=True)  # float32 (layers of a, layers of b)
    cka_shape = t.List(t.Int()).tag(sync=True)
    kl_counts = t.List(t.Int()).tag(sync=True)  # histogram of log10 KL per token
    kl_range = t.List(t.Float()).tag(sync=True)
    summary = t.Unicode("").tag(sync=True)

    def __init__(self, comparison: Comparison, metric: str = "rel_change",
                 title: str = "") -> None:
        self._c = comparison
        w = comparison.weights
        layers = [plain({**x.as_dict(), "label": x.layer}) for x in w.layers]
        state: dict[str, Any] = {}
        acts = comparison.activations
        if acts is not None and acts.cka_matrix:
            m = np.asarray(acts.cka_matrix, dtype=np.float32)
            state |= {"cka": np.nan_to_num(m).tobytes(), "cka_shape": list(m.shape)}
            cka = dict(zip(acts.layers, acts.cka, strict=True))
            for row in layers:
                row["cka"] = plain(cka.get(row["label"]))
        if isinstance(comparison.outputs, TokenStats) and comparison.outputs.tokens:
            kl = comparison.outputs.kl_values.clamp(min=1e-12).log10().numpy()
            counts, edges = np.histogram(kl, bins=40)
            state |= {"kl_counts": [int(c) for c in counts],
                      "kl_range": [float(edges[0]), float(edges[-1])]}
        super().__init__(title=title or f"{comparison.b} vs {comparison.a}",
                         metrics=[[k, v] for k, v in METRICS.items()], layers=layers,
                         summary=comparison.summary(), **state)
        self.metric = metric
        if layers:
            top = max(w.layers, key=lambda x: x.share)
            self.layer = top.layer

    def _rows_of(self, layer: str) -> list[Any]:
        return [r for r in self._c.weights.tensors if r.layer == layer
                and r.status in ("changed", "same")]

    @t.validate("metric")
    def _known_metric(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if value not in METRICS:
            raise MLMFError(f"unknown metric {value!r}; choose one of {', '.join(METRICS)}")
        return value

    @t.validate("layer")
    def _known_layer(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        known = [x["label"] for x in self.layers]
        if value and value not in known:
            raise MLMFError(f"no layer {value!r}; the comparison has {', '.join(known)}")
        return value

    @t.validate("tensor")
    def _known_tensor(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if value:
            self._c.weights[value]  # an MLMFError naming the closest names
        return value

    @t.observe("layer")
    def _on_layer(self, _: Any) -> None:
        rows = self._rows_of(self.layer)
        with self.hold_sync():
            self.tensors = [plain({k: r.as_dict()[k] for k in
                                   ("name", "shape_a", "rel_change", "sigma", "energy_rank")})
                            for r in rows]
            if rows and self.tensor not in {r.name for r in rows}:
                self.tensor = max(rows, key=lambda r: r._moments.abs_d).name

    @t.observe("tensor")
    def _on_tensor(self, _: Any) -> None:
        if self.tensor:
            detail = _tensor_detail(self._c.weights[self.tensor])
            with self.hold_sync():
                for k, v in detail.items():
                    setattr(self, k, v)

    def _standalone_extra(self) -> dict[str, Any]:
        """Every layer's tensor list and every tensor's detail, so clicks work offline."""
        layers = {x["label"]: [plain({k: r.as_dict()[k] for k in
                                      ("name", "shape_a", "rel_change", "sigma", "energy_rank")})
                               for r in self._rows_of(x["label"])] for x in self.layers}
        details = {r.name: _tensor_detail(r) for rows in
                   (self._rows_of(x["label"]) for x in self.layers) for r in rows}
        return {"layers": layers, "details": details}

    def __repr__(self) -> str:
        return (f"CompareView({self._c.a} -> {self._c.b}: {len(self.layers)} layers, "
                f"metric {self.metric}" + (f"; layer {self.layer}" if self.layer else "")
                + (f", tensor {self.tensor}" if self.tensor else "") + ")")

    def _fallback_figure(self) -> Any:
        from ..plots.compare import plot_comparison

        return plot_comparison(self._c, self.metric)


__all__ = ["CompareView"]
