"""Static matplotlib figures of the lab's data (reports, nbval, export).

One module per capability; each function takes library records and returns a
``matplotlib.figure.Figure``. Import matplotlib only here, never below the line.
"""

from __future__ import annotations

from .cache import plot_cache_timeline
from .distributed import plot_shard_plan
from .lineage import plot_lineage
from .loading import plot_memory_trace

__all__ = ["plot_lineage", "plot_shard_plan", "plot_cache_timeline", "plot_memory_trace"]
