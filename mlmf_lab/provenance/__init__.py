"""Metadata and provenance: what a model file is (``describe``) and how it was made (``Lineage``).

>>> desc = ml.describe("model.safetensors")            # doctest: +SKIP
>>> with ml.Lineage("lineage.db") as lin:              # doctest: +SKIP
...     ml.convert("model.safetensors", "model.gguf", quant="q8_0")
>>> print(lin.history("model.gguf"))                   # doctest: +SKIP

``describe`` lives in ``mlmf_lab.provenance.describe``; the model card, a function of a
description (``model_card(desc)``), in ``mlmf_lab.provenance.card``; the store, its queries,
its PROV export and its graph layout in ``mlmf_lab.provenance.lineage``. This module gathers
them.
"""

from __future__ import annotations

from .card import model_card, save_model_card
from .describe import ModelDescription, TensorStats, describe, tensor_stats
from .lineage import (
    Activity,
    ContentHash,
    Entity,
    History,
    HistoryDiff,
    Lineage,
    active_lineages,
    content_hash,
    read_prov,
    state_hash,
)

__all__ = [
    "Activity",
    "ContentHash",
    "Entity",
    "History",
    "HistoryDiff",
    "Lineage",
    "ModelDescription",
    "TensorStats",
    "active_lineages",
    "content_hash",
    "describe",
    "model_card",
    "read_prov",
    "save_model_card",
    "state_hash",
    "tensor_stats",
]
