"""The lineage store: automatic provenance of model files and live models (SQLite, W3C PROV)."""

from ..hashing import ContentHash, content_hash, file_tensor_hash, state_hash
from .export import read_prov
from .records import Activity, Entity, History, HistoryDiff
from .store import Lineage, active_lineages

__all__ = [
    "Activity",
    "ContentHash",
    "Entity",
    "History",
    "HistoryDiff",
    "Lineage",
    "active_lineages",
    "content_hash",
    "file_tensor_hash",
    "read_prov",
    "state_hash",
]
