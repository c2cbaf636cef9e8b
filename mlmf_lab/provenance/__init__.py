"""Metadata and provenance: what a model file is (``describe``) and how it was made (``Lineage``).

>>> desc = ml.describe("model.safetensors")            # doctest: +SKIP
>>> with ml.Lineage("lineage.db") as lin:              # doctest: +SKIP
...     ml.convert("model.safetensors", "model.gguf", quant="q8_0")
>>> print(lin.history("model.gguf"))                   # doctest: +SKIP

``describe`` and the model card live in ``mlmf_lab.provenance.describe``; the store, its
queries and its PROV export in ``mlmf_lab.provenance.lineage``. This module gathers both.
"""

from __future__ import annotations

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
    "read_prov",
    "state_hash",
    "tensor_stats",
]
