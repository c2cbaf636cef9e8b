"""Interactive views for JupyterLab (anywidget): attention maps, a live cache, lineage graphs,
model comparisons.

>>> ml.views.AttentionView(ml.views.capture_attentions(model, **inputs), tokens)  # doctest: +SKIP
>>> ml.views.CacheView(cache)                                                    # doctest: +SKIP
>>> ml.views.LineageView(lineage, focus="model.gguf")                            # doctest: +SKIP
>>> ml.views.CompareView(ml.compare(base, other, inputs=ids))                    # doctest: +SKIP

Each view is a few synced traitlets over library functions (``multimodal.attention_maps``,
``cache.timeline``, ``provenance.lineage.layout`` and ``graphdata``) plus an ES module and
CSS from ``widgets/``. Each shows a static PNG where no kernel runs and saves itself as one
offline HTML file (``save_html``). Only this package (and ``plots``) imports Jupyter code.
"""

from __future__ import annotations

from .attention import AttentionView
from .base import widgets_dir
from .cache import CacheView
from .capture import capture_attentions
from .compare import CompareView
from .lineage import LineageView

__all__ = ["AttentionView", "CacheView", "CompareView", "LineageView", "capture_attentions",
           "widgets_dir"]
