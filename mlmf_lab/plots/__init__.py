"""Static matplotlib figures of the lab's data (reports, nbval, export).

One module per capability; each function takes library records and returns a
``matplotlib.figure.Figure``. Import matplotlib only here, never below the line.
"""

from __future__ import annotations

from .attention import plot_attention_head
from .cache import plot_cache_timeline
from .checkpoint import plot_checkpoint_diff, plot_checkpoint_metrics
from .compare import plot_comparison, plot_tensor_change
from .distributed import plot_shard_plan
from .lineage import plot_lineage
from .loading import plot_memory_trace
from .lora import plot_delta_spectra, plot_lora_loss
from .multimodal import (
    plot_attention_overlay,
    plot_frame_strip,
    plot_fusion_accuracy,
    plot_losses,
    plot_mel,
    plot_patch_grid,
    plot_token_attention,
)
from .quant import plot_bits_vs_error, plot_error_histogram, plot_layer_errors

__all__ = ["plot_checkpoint_diff", "plot_checkpoint_metrics", "plot_comparison",
           "plot_tensor_change",
           "plot_lineage", "plot_shard_plan", "plot_cache_timeline", "plot_memory_trace",
           "plot_lora_loss", "plot_delta_spectra",
           "plot_bits_vs_error", "plot_error_histogram", "plot_layer_errors",
           "plot_attention_head", "plot_attention_overlay", "plot_frame_strip",
           "plot_fusion_accuracy", "plot_losses",
           "plot_mel", "plot_patch_grid", "plot_token_attention"]
