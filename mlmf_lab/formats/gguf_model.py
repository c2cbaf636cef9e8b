"""A Hugging Face model folder -> a GGUF file that llama.cpp runs.

``write_model_gguf`` does what llama.cpp's ``convert_hf_to_gguf.py`` does for the
architectures registered in ``gguf_arch``: ``general.*`` metadata (``gguf.Metadata`` reads
the folder's model card and config, as the converter does), the hyperparameters with
llama.cpp's types, llama.cpp's tensor names and layouts, the rotary scaling (``gguf_rope``:
keys, and Llama 3's ``rope_freqs`` tensor) and the tokenizer (``gguf_vocab``).
The tensors are written by ``gguf.write_gguf``: the block encodings are byte-identical to
llama.cpp's for F32, F16, Q8_0 and Q4_0 (the tests check it against its converter and its
quantizer). The folder's ``config.json`` travels whole under ``mlmf.hf_config``, so the way
back (``gguf_hf``) gives the same config, not one rebuilt from llama.cpp's keys alone.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import MLMFError
from ..files import read_json
from .base import WeightFile
from .gguf import write_gguf
from .gguf_arch import (
    Arch,
    HFConfig,
    TensorName,
    arch_for,
    gguf_names,
    permute_qk,
    rope_dimension,
)
from .gguf_rope import scaling_from_hf, write_scaling
from .gguf_vocab import read_vocabulary, write_vocabulary
from .registry import open_weights

if TYPE_CHECKING:
    from gguf import GGUFWriter

HF_CONFIG_KEY = "mlmf.hf_config"  # the source config.json, whole (a JSON object)
FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ModelFile:
    """A model file or folder as a model-level conversion wrote it (read back from it).

    Attributes:
        path: the file or folder.
        format: ``"gguf"`` (llama.cpp's layout) or ``"hf"`` (a transformers model folder).
        architecture: llama.cpp's name (GGUF) or the ``model_type`` (Hugging Face).
        tensors: how many tensors.
        types: storage type -> how many tensors of it.
        tokenizer: the tokenizer it carries, in a few words (``"none"`` without one).
        notes: what a runtime cannot do with it (no tokenizer, ...).
    """

    path: str
    format: str
    architecture: str
    tensors: int
    types: dict[str, int]
    tokenizer: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "architecture": self.architecture,
                "tensors": self.tensors, "types": dict(self.types), "tokenizer": self.tokenizer,
                "notes": list(self.notes)}

    def lines(self) -> list[str]:
        """The record as the CLI prints it."""
        types = ", ".join(f"{n} {k}" for k, n in sorted(self.types.items()))
        return [f"wrote {self.path} ({self.format}, architecture {self.architecture})",
                f"  tensors: {self.tensors} ({types})", f"  tokenizer: {self.tokenizer}",
                *(f"  note: {n}" for n in self.notes)]


def count_types(types: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in types:
        out[t] = out.get(t, 0) + 1
    return out


def read_config(folder: Path) -> HFConfig:
    """The folder's ``config.json`` (a JSON object), with errors naming the file."""
    path = folder / "config.json"
    if not path.exists():
        raise MLMFError("no config.json: a model folder needs one to be converted to GGUF",
                        folder)
    return HFConfig(read_json(path, "config.json", expect=dict), path)


def model_type(src: Path) -> str | None:
    """The ``model_type`` of the folder holding (or being) ``src``, if it has a readable one."""
    folder = src if src.is_dir() else src.parent
    try:
        value = read_config(folder).get("model_type")
    except MLMFError:
        return None
    return value if isinstance(value, str) and value else None


def _llama_layout(arch: Arch, name: TensorName, t: torch.Tensor, c: HFConfig) -> torch.Tensor:
    """One Hugging Face tensor in llama.cpp's layout."""
    if arch.rotary_rows and name.kind in ("ATTN_Q", "ATTN_K"):
        heads = c.int("num_attention_heads")
        if name.kind == "ATTN_K":
            heads = c.int("num_key_value_heads", default=heads)
        t = permute_qk(t, heads)
    if name.kind in arch.transposed and name.gguf.endswith(".weight"):
        t = t.t()
    return t.contiguous()


def file_type(quant: str | None, tensors: dict[str, torch.Tensor]) -> int:
    """``general.file_type`` (a ``gguf.LlamaFileType``): the quantization asked for, else
    the type most weight matrices have. A K-quant written whole is llama.cpp's ``_S`` mix."""
    from gguf import LlamaFileType

    if quant is None:
        matrices = [t.dtype for t in tensors.values() if t.dim() >= 2]
        dtype = max(set(matrices), key=matrices.count) if matrices else torch.float32
        quant = {torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, "f32")
    members = LlamaFileType.__members__
    name = "ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}"
    return int(members.get(name, members.get(name + "_S", LlamaFileType.GUESSED)))


def _general(w: GGUFWriter, folder: Path, tensors: dict[str, torch.Tensor],
             quant: str | None) -> None:
    """``general.*``: what llama.cpp's converter writes, from the same ``gguf.Metadata``."""
    from gguf import GGUFType, Metadata, size_label

    n_params = sum(t.numel() for t in tensors.values())
    meta = Metadata.load(None, folder, None, n_params)
    meta.name = meta.name or folder.resolve().name
    if meta.size_label is None and n_params > 0:
        meta.size_label = size_label(n_params, 0, 0, 0)
    w.add_type(GGUFType.MODEL)
    meta.set_gguf_meta_model(w)
    w.add_file_type(file_type(quant, tensors))


def own_metadata(metadata: dict[str, Any], arch: Arch) -> dict[str, Any]:
    """The metadata that is neither llama.cpp's (``general.*``, ``tokenizer.*``, the
    architecture's keys) nor the carried config: provenance and the like, which travels.
    Only those values are read: a vocabulary not decoded yet stays so."""
    own = ("general.", "tokenizer.", f"{arch.name}.", HF_CONFIG_KEY)
    return {k: metadata[k] for k in metadata if not k.startswith(own)}


def write_model_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                     quant: str | None = None, wf: WeightFile | None = None) -> ModelFile:
    """Write the Hugging Face model in ``src`` as a GGUF file llama.cpp runs.

    Args:
        src: a model folder (``config.json`` + safetensors, with ``tokenizer.json`` or
            ``tokenizer.model`` when it has one), or its weight file.
        dst: the ``.gguf`` file to write.
        quant: a GGUF type for the weight matrices (``"f16"``, ``"q8_0"``, ``"q4_k"``, ...);
            None keeps their dtype. Norms and position embeddings stay F32.
        wf: ``src``'s weights already open (``ml.convert`` passes the file it opened, so
            its header is read once); None opens ``src``. Left open either way it came.

    Returns:
        The ``ModelFile`` record of what was written.

    Raises:
        MLMFError: no readable ``config.json``, an architecture or a tensor llama.cpp's
            layout has no place for (the message lists the supported ones), bad weights.

    Example:
        >>> write_model_gguf("hf_llama/", "model.gguf", quant="q8_0").lines()  # doctest: +SKIP
    """
    from gguf import GGUFWriter

    s, d = Path(src), Path(dst)
    folder = s if s.is_dir() else s.parent
    config = read_config(folder)
    arch = arch_for(config.get("model_type"), config.path)
    with nullcontext(wf) if wf is not None else open_weights(s) as source:
        source_meta = dict(source.metadata)
        state = source.state_dict()
    n_blocks = config.int("num_hidden_layers", "n_layer")
    if n_blocks > len(state):  # each layer has tensors; the name tables grow with the count
        raise MLMFError(f"config.json says {n_blocks} layers but the weights hold only "
                        f"{len(state)} tensors", config.path)
    names = gguf_names(arch, state, n_blocks, folder)
    tied = bool(config.get("tie_word_embeddings", default=True))
    tensors: dict[str, torch.Tensor] = {}
    keep: set[str] = set()
    for hf_name, name in names.items():
        if name.kind == "OUTPUT" and tied:
            continue  # llama.cpp uses token_embd when output is absent
        t = _llama_layout(arch, name, state[hf_name], config)
        if t.dim() <= 1 or name.gguf.endswith("_norm.weight") or name.kind in arch.float32:
            t = t.float()
            keep.add(name.gguf)
        elif t.dtype not in FLOAT_TYPES:  # llama.cpp's float types, else F32 as its converter
            t = t.float()
        tensors[name.gguf] = t
    if "token_embd.weight" not in tensors:
        raise MLMFError("the weights have no token embedding", s)
    w = GGUFWriter(None, arch.name)  # collects the typed metadata; write_gguf writes the file
    scaling = (scaling_from_hf(config, rope_dimension(config), arch.rope_scalings)
               if arch.rope_scalings else None)  # refused before anything is written
    _general(w, folder, tensors, quant)
    arch.hparams(config, w)
    if scaling is not None:
        extra = write_scaling(scaling, config.rope, w)  # Llama 3's divisors, kept in F32
        tensors.update(extra)
        keep.update(extra)
    vocab = write_vocabulary(folder, w, tensors["token_embd.weight"].shape[0])
    if vocab.note:
        warnings.warn(f"{folder}: {vocab.note}", stacklevel=2)
    dropped = [n for n in state if n not in names]
    if dropped:
        warnings.warn(f"{folder}: llama.cpp's {arch.name!r} layout has no place for "
                      f"{', '.join(dropped)}; not written", stacklevel=2)
    metadata = {**own_metadata(source_meta, arch), **dict(w.kv_data[0]),
                HF_CONFIG_KEY: config.values}
    write_gguf(tensors, d, metadata, quant, keep=keep)
    return describe_gguf(d)


def describe_gguf(path: Path, wf: WeightFile | None = None) -> ModelFile:
    """The ``ModelFile`` record of a GGUF file, read back from it (from ``wf`` when it is
    open already). The vocabulary is counted, not decoded."""
    names = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
    with nullcontext(wf) if wf is not None else open_weights(path) as source:
        types = count_types(i.quant or names.get(i.dtype, i.dtype) for i in source.infos())
        v = read_vocabulary(source.metadata)
        tokenizer = "none" if v.model == "none" else (
            f"{v.model}, {v.tokens} tokens" + (f", {v.merges} merges" if v.merges else ""))
        return ModelFile(os.fspath(path), "gguf",
                         str(source.metadata.get("general.architecture")), len(source), types,
                         tokenizer, (v.note,) if v.note else ())


__all__ = ["HF_CONFIG_KEY", "ModelFile", "count_types", "describe_gguf", "file_type", "model_type",
           "own_metadata", "read_config", "write_model_gguf"]
