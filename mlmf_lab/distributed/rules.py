"""Tensor parallelism (Megatron-style): which weights split by column, which by row.

A column-parallel linear ``y = x Wᵀ`` splits W's output features (each rank computes a
slice of ``y``); the row-parallel linear after it splits its input features (each rank
computes a partial sum, then one all-reduce). Embeddings split by vocabulary rows.
Norms, position tables and row-parallel biases are replicated.

``ARCH_RULES`` holds the rule table of common architectures; ``rules=`` adds your own
(tried first). The first rule whose pattern is found in a tensor's name wins. GGUF files
name tensors by kind (``blk.3.attn_q.weight``) whatever the architecture: their table,
``ARCH_RULES["gguf"]``, gives each kind its role and takes the names from the gguf
package's own tables (``gguf.TENSOR_NAMES``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import gguf

from ..errors import ConfigError
from ..formats import TensorInfo
from .plans import Layout, Piece, register_strategy, replicated, split_bounds

ROLES = ("column", "row", "vocab", "replicate")
_DEFAULT_DIM = {"column": 0, "vocab": 0, "row": 1, "replicate": None}


class Rule(NamedTuple):
    """How to split the tensors whose name matches ``pattern`` (``re.search``).

    Attributes:
        pattern: regular expression searched in the tensor name.
        role: ``column`` | ``row`` | ``vocab`` | ``replicate``.
        dim: the dimension to split; default 0 for column/vocab, 1 for row (``nn.Linear``
            stores ``[out, in]``; GPT-2's ``Conv1D`` stores ``[in, out]`` and flips them).
        parts: fused projections (GPT-2 ``c_attn`` = q, k, v): each of ``parts`` equal
            blocks along ``dim`` is split separately, so rank r holds its slice of each.
    """

    pattern: str
    role: str
    dim: int | None = None
    parts: int = 1

    @property
    def split_dim(self) -> int | None:
        if self.dim is not None or self.role == "replicate":
            return self.dim
        return _DEFAULT_DIM[self.role]


_LINEAR_BIAS = r"\.bias$"
ARCH_RULES: dict[str, list[Rule]] = {
    "llama": [  # also Mistral, Qwen2, Gemma: same module names
        Rule(r"\.(q|k|v|gate|up)_proj\.(weight|bias)$", "column"),
        Rule(r"\.(o|down)_proj\.weight$", "row"),
        Rule(r"embed_tokens\.weight$", "vocab"),
        Rule(r"lm_head\.weight$", "column"),
    ],
    "gpt2": [  # Conv1D weights are [in, out]
        Rule(r"\.attn\.c_attn\.weight$", "column", dim=1, parts=3),
        Rule(r"\.attn\.c_attn\.bias$", "column", dim=0, parts=3),
        Rule(r"\.mlp\.c_fc\.weight$", "column", dim=1),
        Rule(r"\.mlp\.c_fc\.bias$", "column", dim=0),
        Rule(r"\.(attn|mlp)\.c_proj\.weight$", "row", dim=0),
        Rule(r"(^|\.)wte\.weight$", "vocab"),
        Rule(r"lm_head\.weight$", "column"),
    ],
    "bert": [
        Rule(r"\.attention\.self\.(query|key|value)\.(weight|bias)$", "column"),
        Rule(r"\.attention\.output\.dense\.weight$", "row"),
        Rule(r"\.intermediate\.dense\.(weight|bias)$", "column"),
        Rule(r"\.layer\.\d+\.output\.dense\.weight$", "row"),
        Rule(r"word_embeddings\.weight$", "vocab"),
    ],
}
# Roles of GGUF tensor kinds. GGUF stores dims innermost first and the readers hand them
# over outermost first, so a linear weight is [out, in] as in nn.Linear. Fused QKV
# (ATTN_QKV) is left replicated: its split differs by architecture (Falcon's multi-query
# block is not three equal parts); pass rules= for it.
GGUF_ROLES = {"ATTN_Q": "column", "ATTN_K": "column", "ATTN_V": "column",
              "FFN_GATE": "column", "FFN_UP": "column", "ATTN_OUT": "row", "FFN_DOWN": "row",
              "TOKEN_EMBD": "vocab", "OUTPUT": "column"}


def gguf_rules() -> list[Rule]:
    """Rules for GGUF tensor names, built from ``gguf.TENSOR_NAMES`` (``blk.{bid}.attn_q``)."""
    out = []
    for kind, role in GGUF_ROLES.items():
        name = re.escape(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[kind]]).replace(
            re.escape("{bid}"), r"\d+")
        suffix = r"\.weight$" if role == "row" else r"\.(weight|bias)$"  # row biases: whole
        out.append(Rule(f"^{name}{suffix}", role))
    return out


ARCH_RULES["gguf"] = gguf_rules()
# metadata values (HF model_type, GGUF general.architecture) -> rule table
ARCH_ALIASES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma": "llama",
                "gpt2": "gpt2", "bert": "bert", "roberta": "bert"}


def as_rules(rules: Iterable[Rule | Sequence[Any]]) -> list[Rule]:
    """Accept ``Rule``s or plain tuples ``(pattern, role[, dim[, parts]])``; validate them."""
    out: list[Rule] = []
    for r in rules:
        rule = r if isinstance(r, Rule) else Rule(*r)
        if rule.role not in ROLES:
            raise ConfigError(f"rule {rule.pattern!r}: unknown role {rule.role!r}; "
                              f"supported: {', '.join(ROLES)}")
        if rule.parts < 1:
            raise ConfigError(f"rule {rule.pattern!r}: parts must be >= 1, got {rule.parts}")
        try:
            re.compile(rule.pattern)
        except re.error as e:
            raise ConfigError(f"rule {rule.pattern!r} is not a regular expression ({e})") from None
        out.append(rule)
    return out


def detect_arch(infos: Sequence[TensorInfo], metadata: dict[str, Any]) -> str | None:
    """The rule table named by the metadata, else the one matching the most tensor names.

    A GGUF file (``general.architecture`` in its metadata) whose names are GGUF names gets
    the ``gguf`` table, whatever its architecture.
    """
    if "general.architecture" in metadata and any(
            re.search(r.pattern, i.name) for i in infos for r in ARCH_RULES["gguf"]):
        return "gguf"
    for key in ("model_type", "general.architecture", "architecture"):
        value = str(metadata.get(key, "")).lower()
        if value in ARCH_ALIASES:
            return ARCH_ALIASES[value]
    scores = {
        arch: sum(1 for i in infos if any(re.search(r.pattern, i.name) for r in table))
        for arch, table in ARCH_RULES.items()
    }
    best = max(scores, key=lambda a: scores[a])
    return best if scores[best] else None


def split_tensor(info: TensorInfo, rule: Rule, world_size: int) -> list[Piece]:
    """The pieces of one tensor under ``rule`` (every element in exactly one primary piece)."""
    dim = rule.split_dim
    if rule.role == "replicate" or dim is None or world_size == 1 and rule.parts == 1:
        return replicated(info, world_size, "replicate" if rule.role == "replicate" else rule.role)
    if not -len(info.shape) <= dim < len(info.shape):
        raise ConfigError(f"rule {rule.pattern!r} splits dim {dim} of {info.name!r}, "
                          f"which has shape {list(info.shape)}")
    dim %= len(info.shape)
    unit = 1  # quantized blocks run along the last dim: cut there only between whole blocks
    if info.quant is not None and dim != 0:
        unit = _block_size(info.quant) if dim == len(info.shape) - 1 else 0
        if not unit or info.shape[dim] % (unit * rule.parts):
            return replicated(info, world_size)
    n = info.shape[dim] // unit
    if unit > 1 and n // rule.parts < world_size:  # fewer blocks than ranks
        return replicated(info, world_size)
    if n % rule.parts or n // rule.parts < world_size:
        raise ConfigError(
            f"{info.name!r}: dim {dim} has {n} entries, which cannot be cut into {rule.parts} "
            f"part(s) x {world_size} ranks; expected a multiple of {rule.parts} that is at "
            f"least {rule.parts * world_size}. Use fewer ranks or a rule with role 'replicate'"
        )
    block = n // rule.parts
    per_rank: list[list[tuple[int, int]]] = [[] for _ in range(world_size)]
    for part in range(rule.parts):
        for r, (a, b) in enumerate(split_bounds(block, world_size)):
            per_rank[r].append(((part * block + a) * unit, (part * block + b) * unit))
    n *= unit
    pieces = []
    for r, spans in enumerate(per_rank):
        count = sum(b - a for a, b in spans)
        nbytes = info.nbytes * count // n
        pieces.append(Piece(info.name, r, dim, tuple(spans), nbytes, rule.role, True))
    return pieces


def _block_size(quant: str) -> int:
    """Weights per block of a GGUF quant type (0 when unknown)."""
    from ..quant.ggml import BLOCK_TYPES

    bt = BLOCK_TYPES.get(quant)
    return bt.block_size if bt is not None else 0


def _tensor(
    infos: Sequence[TensorInfo],
    world_size: int,
    metadata: dict[str, Any],
    rules: Iterable[Rule | Sequence[Any]] = (),
    arch: str | None = "auto",
) -> Layout:
    table = as_rules(rules)
    chosen = detect_arch(infos, metadata) if arch == "auto" else arch
    if chosen is not None:
        if chosen not in ARCH_RULES:
            raise ConfigError(f"unknown architecture {chosen!r}; rule tables: "
                              f"{', '.join(ARCH_RULES)} (or arch=None with your own rules=)")
        table += ARCH_RULES[chosen]
    pieces: list[Piece] = []
    matched = 0
    for info in infos:
        rule = next((r for r in table if re.search(r.pattern, info.name)), None)
        if rule is not None and rule.role != "replicate":
            matched += 1
        pieces.extend(split_tensor(info, rule or Rule("", "replicate"), world_size))
    if not matched:
        raise ConfigError(
            f"no tensor-parallel rule matches any tensor (architecture: {chosen}); known "
            f"architectures: {', '.join(ARCH_RULES)}. Pass rules=[(pattern, 'column'|'row'), ...]"
        )
    roles = {p.role for p in pieces}
    labels = [f"1/{world_size} of {', '.join(sorted(roles - {'replicate'}))}"
              + (" + replicas" if "replicate" in roles else "")] * world_size
    detail = (f"rules: {chosen or 'user'}"
              + (f" + {len(table) - len(ARCH_RULES.get(chosen or '', []))} user rule(s)"
                 if chosen and len(table) > len(ARCH_RULES[chosen]) else "")
              + f"; {matched} of {len(infos)} tensors split")
    return Layout(pieces, labels, detail)


register_strategy("tensor", _tensor)
