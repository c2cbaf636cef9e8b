"""Distributed loading on torch.distributed: plans from headers, each rank reads its bytes.

>>> plan = ml.distributed.plan("model.safetensors", "layers", world_size=4)  # doctest: +SKIP
>>> rank, world_size = ml.distributed.setup()          # under torchrun  # doctest: +SKIP
>>> shard = ml.distributed.load_shard("model.safetensors", plan)       # doctest: +SKIP
>>> full = ml.distributed.gather_state_dict(shard)     # on rank 0      # doctest: +SKIP

Modules: ``plans`` (ShardPlan, layers/replicate), ``rules`` (tensor parallel rule tables),
``modality`` (modality -> ranks), ``read`` (counted byte-range reads), ``spans`` (a plan's
byte ranges, for the figure and the view), ``load`` (load_shard, broadcast mode, gather),
``tp`` (tensor-parallel forward), ``runtime`` (setup, fail-fast checks), ``heartbeat`` (a
hung or dead rank noticed within seconds), ``launcher`` (local N-rank runs). DCP folders are
a weight format (``ml.open_weights``, ``ml.save_state_dict``).
"""

from __future__ import annotations

from . import modality, rules  # noqa: F401  (each registers its strategy)
from .launcher import RankResult, launch
from .load import MODES, Shard, gather_state_dict, load_shard
from .modality import declared_modalities
from .plans import STRATEGIES, Piece, ShardPlan, local_shape, plan, register_strategy
from .read import RangeReader
from .rules import ARCH_RULES, Rule
from .runtime import DEFAULT_HEARTBEAT, DEFAULT_TIMEOUT, setup, teardown, world
from .spans import ByteSpan, byte_spans
from .tp import TensorParallelStack, tp_linear_stack

__all__ = [
    "ARCH_RULES",
    "ByteSpan",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_TIMEOUT",
    "MODES",
    "STRATEGIES",
    "Piece",
    "RangeReader",
    "RankResult",
    "Rule",
    "Shard",
    "ShardPlan",
    "TensorParallelStack",
    "byte_spans",
    "declared_modalities",
    "gather_state_dict",
    "launch",
    "load_shard",
    "local_shape",
    "plan",
    "register_strategy",
    "setup",
    "teardown",
    "tp_linear_stack",
    "world",
]
