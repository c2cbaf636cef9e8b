"""Hugging Face architectures as llama.cpp lays them out in GGUF, and back.

One ``Arch`` record per llama.cpp architecture that this lab writes and reads at the model
level, registered by the Hugging Face ``model_type`` values it takes (``ARCHS``). What an
``Arch`` knows is what llama.cpp's own converter (``convert_hf_to_gguf.py``) does for it:

- tensor names: from the ``gguf`` package's tables (``gguf.get_tensor_name_map``, checked
  against ``gguf.MODEL_TENSORS``), never from a table of our own;
- the hyperparameters, written with ``gguf.GGUFWriter``'s ``add_*`` helpers so that each key
  has the type llama.cpp reads (``uint32`` counts, ``float32`` epsilons);
- how a tensor's layout differs: llama.cpp's rotary layout for the Q and K rows of llama
  (``permute_qk``), GPT-2's ``Conv1D`` weights stored transposed, and the tensors llama.cpp
  keeps in F32 whatever the file type.

The way back (a GGUF into a transformers model) is in ``gguf_hf``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import MLMFError, UnsupportedError
from ..files import read_json

if TYPE_CHECKING:
    from gguf import MODEL_ARCH, MODEL_TENSOR, GGUFWriter

SUFFIXES = (".weight", ".bias")


class HFConfig:
    """A Hugging Face ``config.json`` as read, with lookups that name the file when a key
    is missing or has the wrong type."""

    def __init__(self, values: dict[str, Any], path: str | os.PathLike[str] | None) -> None:
        self.values, self.path = values, path

    def get(self, *keys: str, default: Any = None) -> Any:
        """The first of ``keys`` the config has (transformers renamed some over time)."""
        return next((self.values[k] for k in keys if self.values.get(k) is not None), default)

    def int(self, *keys: str, default: int | None = None) -> int:
        value = self.get(*keys, default=default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MLMFError(f"config.json needs {' or '.join(keys)} as a non-negative integer; "
                            f"found {value!r}", self.path)
        return value

    def float(self, *keys: str, default: float | None = None) -> float:
        value = self.get(*keys, default=default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MLMFError(f"config.json needs {' or '.join(keys)} as a number; found "
                            f"{value!r}", self.path)
        return float(value)

    @property
    def rope(self) -> dict[str, Any]:
        """RoPE settings: transformers 5's ``rope_parameters``, else ``rope_scaling`` and
        ``rope_theta`` at the top level (older configs)."""
        rope = self.get("rope_parameters", "rope_scaling", default={})
        rope = dict(rope) if isinstance(rope, dict) else {}
        if "rope_theta" in self.values:
            rope.setdefault("rope_theta", self.values["rope_theta"])
        return rope


# -- llama's rotary layout ------------------------------------------------------------------
def qk_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Where llama.cpp's Q (or K) row ``i`` comes from in the Hugging Face weight.

    Hugging Face rotates the two halves of each head's dimensions together
    (``rotate_half``); llama.cpp rotates adjacent pairs. So within each head of ``d`` rows,
    GGUF row ``2j`` is HF row ``j`` and row ``2j + 1`` is HF row ``j + d/2`` (llama.cpp's
    ``permute``: reshape ``(n_head, 2, d/2)``, swap the last two axes).

    Raises:
        MLMFError: ``n_rows`` does not split into ``n_head`` heads of an even size.
    """
    if n_head <= 0 or n_rows % (2 * n_head):
        raise MLMFError(f"{n_rows} rows do not split into {n_head} heads of an even size")
    half = n_rows // n_head // 2
    return torch.arange(n_rows).reshape(n_head, 2, half).transpose(1, 2).reshape(-1)


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face Q/K rows (weight or bias) -> llama.cpp's order (see ``qk_rows``)."""
    return w[qk_rows(w.shape[0], n_head)]


def unpermute_qk(w: Any, n_head: int) -> Any:
    """llama.cpp's Q/K rows -> Hugging Face's: the inverse of ``permute_qk``.

    Works on anything indexed by rows, so also on the bytes of quantized rows (GGUF blocks
    never straddle rows): ``QTensor.data`` is un-permuted without dequantizing.
    """
    return w[torch.argsort(qk_rows(w.shape[0], n_head))]


# -- hyperparameters --------------------------------------------------------------------------
def rope_dimension(c: HFConfig) -> int:
    """The rotary dimensions of a head: ``head_dim``, else hidden size / heads."""
    return c.int("head_dim", default=c.int("hidden_size") // c.int("num_attention_heads"))


def _text_hparams(c: HFConfig, w: GGUFWriter) -> None:
    """What llama.cpp's converter writes for any decoder (its ``TextModel``)."""
    n_head = c.int("num_attention_heads")
    w.add_context_length(c.int("max_position_embeddings"))
    w.add_embedding_length(c.int("hidden_size"))
    w.add_block_count(c.int("num_hidden_layers"))
    w.add_feed_forward_length(c.int("intermediate_size"))
    w.add_head_count(n_head)
    w.add_head_count_kv(c.int("num_key_value_heads", default=n_head))
    w.add_layer_norm_rms_eps(c.float("rms_norm_eps"))
    if "head_dim" in c.values:  # else llama.cpp takes hidden / heads, as transformers does
        w.add_key_length(c.int("head_dim"))
        w.add_value_length(c.int("head_dim"))
    w.add_rope_freq_base(float(c.rope.get("rope_theta", 10000.0)))  # the scaling: gguf_rope


def _llama_hparams(c: HFConfig, w: GGUFWriter) -> None:
    _text_hparams(c, w)
    w.add_vocab_size(c.int("vocab_size"))
    w.add_rope_dimension_count(rope_dimension(c))


def _gpt2_hparams(c: HFConfig, w: GGUFWriter) -> None:
    n_embd = c.int("n_embd", "hidden_size")
    w.add_block_count(c.int("n_layer", "num_hidden_layers"))
    w.add_context_length(c.int("n_ctx", "n_positions"))
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(c.int("n_inner", default=4 * n_embd))
    w.add_head_count(c.int("n_head", "num_attention_heads"))
    w.add_layer_norm_eps(c.float("layer_norm_epsilon"))


def _bert_hparams(c: HFConfig, w: GGUFWriter) -> None:
    from gguf import PoolingType

    w.add_block_count(c.int("num_hidden_layers"))
    w.add_context_length(c.int("max_position_embeddings"))
    w.add_embedding_length(c.int("hidden_size"))
    w.add_feed_forward_length(c.int("intermediate_size"))
    w.add_head_count(c.int("num_attention_heads"))
    w.add_layer_norm_eps(c.float("layer_norm_eps"))
    w.add_causal_attention(False)
    w.add_token_type_count(c.int("type_vocab_size", default=1))
    pooling = _sentence_pooling(c)
    if pooling is not None:  # else llama.cpp returns one embedding per token
        w.add_pooling_type(getattr(PoolingType, pooling))


def _sentence_pooling(c: HFConfig) -> str | None:
    """The pooling a sentence-transformers folder declares (``modules.json``), as a
    ``gguf.PoolingType`` name, like llama.cpp's converter reads it."""
    folder = Path(c.path).parent if c.path is not None else None
    if folder is None or not (folder / "modules.json").is_file():
        return None
    try:
        modules = read_json(folder / "modules.json", "modules.json", expect=list)
        entry = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
        pooling = read_json(folder / str(entry["path"]) / "config.json", "the pooling config",
                            expect=dict)
    except (MLMFError, TypeError, KeyError, AttributeError, StopIteration):
        return None
    for key, kind in (("pooling_mode_mean_tokens", "MEAN"), ("pooling_mode_cls_token", "CLS"),
                      ("pooling_mode_lasttoken", "LAST")):
        if pooling.get(key):
            return kind
    return None


# -- the registry --------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """How one architecture is written the llama.cpp way.

    Attributes:
        name: llama.cpp's architecture name (``general.architecture``), a key of
            ``gguf.MODEL_ARCH_NAMES``' values.
        model_types: the Hugging Face ``model_type`` values written as this architecture.
        hf_class: the transformers class a GGUF of it becomes when its config names none.
        hparams: writes the hyperparameters from the config with ``GGUFWriter.add_*``.
        rotary_rows: Q and K rows are permuted to llama.cpp's rotary layout (``permute_qk``).
        transposed: tensor kinds stored transposed by Hugging Face (GPT-2's ``Conv1D``).
        float32: tensor kinds llama.cpp keeps in F32 whatever the file type (as its
            quantizer does).
        dropped: Hugging Face tensors llama.cpp has no place for (a file with extra tensors
            is refused by llama.cpp), by name prefix.
        rope_scalings: the ``rope_type`` values llama.cpp runs for this architecture (see
            ``gguf_rope``); empty without rotary embeddings.
    """

    name: str
    model_types: tuple[str, ...]
    hf_class: str
    hparams: Callable[[HFConfig, GGUFWriter], None]
    rotary_rows: bool = False
    transposed: frozenset[str] = field(default_factory=frozenset)
    float32: frozenset[str] = field(default_factory=frozenset)
    dropped: tuple[str, ...] = ()
    rope_scalings: frozenset[str] = frozenset()

    @property
    def model_arch(self) -> MODEL_ARCH:
        from gguf import MODEL_ARCH_NAMES

        return next(a for a, n in MODEL_ARCH_NAMES.items() if n == self.name)

    def kinds(self) -> set[MODEL_TENSOR]:
        """The tensor kinds llama.cpp's loader knows for this architecture."""
        from gguf import MODEL_TENSORS

        return set(MODEL_TENSORS[self.model_arch])


ARCHS: dict[str, Arch] = {}  # Hugging Face model_type -> Arch


def register_arch(arch: Arch) -> None:
    for model_type in arch.model_types:
        ARCHS[model_type] = arch


def arch_for(model_type: Any, path: str | os.PathLike[str] | None = None) -> Arch:
    """The ``Arch`` for a Hugging Face ``model_type``; an error lists the supported ones."""
    if model_type not in ARCHS:
        raise UnsupportedError(f"model_type {model_type!r} has no llama.cpp layout in this lab; "
                               f"supported: {', '.join(sorted(ARCHS))}", path)
    return ARCHS[model_type]


def arch_named(name: Any) -> Arch | None:
    """The ``Arch`` whose llama.cpp name is ``name`` (``general.architecture``), if any."""
    return next((a for a in ARCHS.values() if a.name == name), None)


# llama.cpp's llama loads Llama 3's rope_freqs; its qwen2 does not
register_arch(Arch("llama", ("llama", "mistral"), "LlamaForCausalLM", _llama_hparams,
                   rotary_rows=True,
                   rope_scalings=frozenset({"default", "linear", "yarn", "llama3"})))
register_arch(Arch("qwen2", ("qwen2",), "Qwen2ForCausalLM", _text_hparams,
                   rope_scalings=frozenset({"default", "linear", "yarn"})))
register_arch(Arch("gpt2", ("gpt2",), "GPT2LMHeadModel", _gpt2_hparams,
                   transposed=frozenset({"ATTN_QKV", "ATTN_OUT", "FFN_UP", "FFN_DOWN"}),
                   float32=frozenset({"POS_EMBD"})))
register_arch(Arch("bert", ("bert",), "BertModel", _bert_hparams,
                   float32=frozenset({"POS_EMBD", "TOKEN_TYPES"}),
                   dropped=("pooler.", "cls.", "embeddings.position_ids")))


# -- tensor names ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorName:
    """One tensor's llama.cpp name and kind (``gguf.MODEL_TENSOR`` member name)."""

    gguf: str
    kind: str


def gguf_names(arch: Arch, names: Iterable[str], n_blocks: int,
               path: str | os.PathLike[str] | None = None) -> dict[str, TensorName]:
    """Hugging Face tensor name -> its llama.cpp name and kind, through ``gguf``'s tables.

    Names in ``arch.dropped`` are left out.

    Raises:
        UnsupportedError: names the tables do not map, or map to a kind llama.cpp's loader
            does not have for this architecture (listing the first few).
    """
    from gguf import get_tensor_name_map

    table = get_tensor_name_map(arch.model_arch, n_blocks)
    known = arch.kinds()
    out: dict[str, TensorName] = {}
    unknown: list[str] = []
    for name in names:
        if name.startswith(arch.dropped):
            continue
        found = table.get_type_and_name(name, try_suffixes=SUFFIXES)
        if found is None or found[0] not in known:
            unknown.append(name)
            continue
        out[name] = TensorName(found[1], found[0].name)  # the suffix carried over
    if unknown:
        raise UnsupportedError(
            f"{len(unknown)} tensors have no place in llama.cpp's {arch.name!r} layout: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}", path)
    return out


def kind_of(arch: Arch, gguf_name: str, n_blocks: int) -> str | None:
    """The ``gguf.MODEL_TENSOR`` member name of a llama.cpp tensor name, if it is one."""
    from gguf import TENSOR_NAMES

    base = next((gguf_name[: -len(s)] for s in SUFFIXES if gguf_name.endswith(s)), gguf_name)
    for kind in arch.kinds():
        pattern = TENSOR_NAMES[kind]
        if "{bid}" not in pattern:
            if pattern == base:
                return kind.name
            continue
        head, _, tail = pattern.partition("{bid}")
        bid = base[len(head): len(base) - len(tail)] if base.startswith(head) and \
            base.endswith(tail) else ""
        if bid.isdecimal() and int(bid) < n_blocks and pattern.format(bid=int(bid)) == base:
            return kind.name
    return None


__all__ = ["ARCHS", "Arch", "HFConfig", "TensorName", "arch_for", "arch_named", "gguf_names",
           "kind_of", "permute_qk", "qk_rows", "register_arch", "rope_dimension", "unpermute_qk"]
