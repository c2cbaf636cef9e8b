"""Comparing two models: weights (always), activations and outputs (with inputs).

>>> c = ml.compare("minilm/model.safetensors", "minilm-q4_0.gguf")          # doctest: +SKIP
>>> c = ml.compare(base_model, quantized_model, inputs=token_ids)            # doctest: +SKIP

``weights`` holds the maths of one tensor pair (``tensor_change``, ``spectrum``), ``sources``
the two sides and their name matching, ``tensors`` the weights level, ``activations`` CKA /
cosine / logit lens, ``outputs`` llama.cpp's KL statistics and embedding agreement,
``record`` the ``Comparison``, ``api`` the function. ``diff`` is the ``CheckpointDiff`` of
``CheckpointManager.diff``, on the same ``tensor_change``.

``ml.compare`` is the function (bound in ``mlmf_lab/__init__`` over this package's name).
"""

from __future__ import annotations

from .activations import ActivationStats, linear_cka
from .api import compare, load_model
from .diff import STATUSES, CheckpointDiff, TensorDiff, diff_state_dicts
from .outputs import EmbeddingStats, TokenStats, embedding_stats, token_stats
from .record import Comparison
from .tensors import LayerComparison, TensorComparison, WeightComparison, compare_weights
from .weights import Spectrum, TensorChange, spectrum, tensor_change

__all__ = ["STATUSES", "ActivationStats", "CheckpointDiff", "Comparison", "EmbeddingStats",
           "LayerComparison", "Spectrum", "TensorChange", "TensorComparison", "TensorDiff",
           "TokenStats", "WeightComparison", "compare", "compare_weights", "diff_state_dicts",
           "embedding_stats", "linear_cka", "load_model", "spectrum", "tensor_change",
           "token_stats"]
