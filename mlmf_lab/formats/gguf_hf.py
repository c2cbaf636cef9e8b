"""llama.cpp's GGUF files back into transformers models: names, layouts, config.

A GGUF written by llama.cpp's converter (or by ``gguf_model``) names its tensors
``token_embd.weight``, ``blk.0.attn_q.weight``... and stores llama's Q and K rows in
llama.cpp's rotary order. ``model_view(wf, keys)`` shows such a file under a model's own
names, with the rows put back (``unpermute_qk``, also on the bytes of quantized rows) and
GPT-2's ``Conv1D`` weights transposed back; ``ml.load_into`` goes through it. The names are
matched the way transformers' own GGUF loader matches them: each of the model's names is
looked up in ``gguf``'s tables (``gguf.get_tensor_name_map``).

``config_from_gguf`` rebuilds ``config.json``: the ``mlmf.hf_config`` our writer keeps, else
the keys transformers' GGUF config mapping (``transformers.integrations.ggml``) reads from
llama.cpp's hyperparameters; where both have a key and disagree (beyond float32 rounding),
the hyperparameters llama.cpp runs with win. So does the rotary scaling (``gguf_rope``): the
config's is kept when llama.cpp runs the file with it, else rebuilt from the file's keys and
Llama 3's ``rope_freqs``.
``write_model_hf`` writes a transformers model folder (weights, ``config.json``, tokenizer).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import torch

from ..errors import FormatError, MLMFError, UnsupportedError
from ..quant.base import QTensor
from .base import TensorInfo, WeightFile
from .gguf_arch import ARCHS, SUFFIXES, Arch, HFConfig, arch_named, rope_dimension, unpermute_qk
from .gguf_meta import array_length
from .gguf_model import (
    HF_CONFIG_KEY,
    ModelFile,
    count_types,
    describe_gguf,
    model_type,
    own_metadata,
    read_config,
    write_model_gguf,
)
from .gguf_rope import (
    rope_freqs_name,
    scaling_from_gguf,
    scaling_from_hf,
    scaling_to_hf,
    to_float32,
)
from .gguf_vocab import hf_tokenizer_files, read_vocabulary
from .registry import detect, open_weights


def llama_arch(wf: WeightFile) -> Arch | None:
    """The ``Arch`` of a GGUF file in llama.cpp's layout (a registered architecture and
    llama.cpp's tensor names), else None."""
    if wf.format != "gguf" or "token_embd.weight" not in wf:
        return None
    return arch_named(wf.metadata.get("general.architecture"))


def _meta_int(wf: WeightFile, arch: Arch, key: str, default: int | None = None) -> int:
    value = wf.metadata.get(f"{arch.name}.{key}", default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FormatError(f"{arch.name}.{key} must be a positive integer; found {value!r}",
                          wf.path)
    return value


class ModelView(WeightFile):
    """A llama.cpp GGUF file seen under a transformers model's tensor names.

    Tensors the model has no name for keep their GGUF names (``ml.load_into`` reports them
    as unexpected), except Llama 3's ``rope_freqs``, which transformers computes from the
    config (``config_from_gguf`` reads it). Quantized Q/K weights come back from ``raw()`` as
    ``QTensor``s whose rows are put back in place, still quantized.
    """

    format = "gguf"

    def __init__(self, wf: WeightFile, arch: Arch, keys: Iterable[str]) -> None:
        from gguf import get_tensor_name_map

        n_blocks = _meta_int(wf, arch, "block_count")
        if n_blocks > len(wf):  # each block has tensors; the name table grows with the count
            raise FormatError(f"{arch.name}.block_count is {n_blocks} but the file holds only "
                              f"{len(wf)} tensors", wf.path)
        table = get_tensor_name_map(arch.model_arch, n_blocks)
        found = {}  # gguf name -> (model name, kind)
        for key in keys:
            hit = table.get_type_and_name(key, try_suffixes=SUFFIXES)
            if hit is not None and hit[1] in wf:
                found[hit[1]] = (key, hit[0].name)
        self.source, self.arch = wf, arch
        self._from: dict[str, str] = {}
        self._kind: dict[str, str] = {}
        infos = {}
        derived = rope_freqs_name()  # Llama 3's divisors: transformers computes them
        for info in wf.infos():
            if info.name == derived:
                continue
            name, kind = found.get(info.name, (info.name, ""))
            shape = info.shape  # GPT-2's Conv1D weights are shown transposed back
            if kind in arch.transposed and info.name.endswith(".weight"):
                shape = tuple(reversed(shape))
            infos[name] = TensorInfo(name, shape, info.dtype, info.nbytes, info.file, info.offset,
                                     info.quant)
            self._from[name], self._kind[name] = info.name, kind
        self.heads = _meta_int(wf, arch, "attention.head_count") if arch.rotary_rows else 0
        self.kv_heads = (_meta_int(wf, arch, "attention.head_count_kv", self.heads)
                         if arch.rotary_rows else 0)
        super().__init__(path=wf.path, metadata=wf.metadata, _infos=infos)

    def source_name(self, name: str) -> str:
        """The GGUF name of the tensor shown as ``name``."""
        return self._from[name]

    def hf_name(self, gguf_name: str) -> str:
        """The name under which GGUF tensor ``gguf_name`` is shown."""
        return next(k for k, v in self._from.items() if v == gguf_name)

    def _rows(self, name: str) -> int:
        """The heads to un-permute ``name``'s rows by; 0 for tensors left as they are."""
        kind = self._kind[name]
        return {"ATTN_Q": self.heads, "ATTN_K": self.kv_heads}.get(kind, 0)

    def _transposed(self, name: str) -> bool:
        return self._kind[name] in self.arch.transposed and name.endswith(".weight")

    def _read(self, info: TensorInfo) -> torch.Tensor:
        t = self.source.tensor(self._from[info.name])
        if self._rows(info.name):
            t = unpermute_qk(t, self._rows(info.name))
        return t.t().contiguous() if self._transposed(info.name) else t

    def raw(self, name: str) -> Any:
        stored = self.source.raw(self._from[name])
        if not isinstance(stored, QTensor) or self._transposed(name):
            return self.tensor(name)  # floats, or blocks that would need transposing
        if self._rows(name):
            stored = QTensor(stored.scheme, stored.shape,
                             unpermute_qk(stored.data, self._rows(name)))
        return stored

    def close(self) -> None:
        self.source.close()


def model_view(wf: WeightFile, keys: Iterable[str]) -> WeightFile:
    """``wf`` under the model names ``keys`` when it is a llama.cpp GGUF file, else ``wf``."""
    arch = llama_arch(wf)
    return wf if arch is None else ModelView(wf, arch, keys)


# -- config.json back -------------------------------------------------------------------------
def agree(a: Any, b: Any) -> bool:
    """Equal, or the same number once stored as GGUF's float32."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return to_float32(a) == to_float32(b)
    return bool(a == b)


def _from_hyperparameters(arch: Arch, metadata: dict[str, Any], tied: bool,
                          tokens: bool) -> dict[str, Any]:
    """Config keys from llama.cpp's hyperparameters (and with ``tokens``, the special token
    ids of its tokenizer), through transformers' GGUF mapping."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    mappings = cast(dict[str, dict[str, Any]], GGUF_CONFIG_MAPPING)  # gguf suffix -> config key
    mapping, tokenizer = mappings.get(arch.name), mappings["tokenizer"]
    if mapping is None:
        return {}
    out: dict[str, Any] = {"tie_word_embeddings": tied}
    for key in metadata:  # only the mapped values are read: the vocabulary stays undecoded
        prefix, _, rest = key.partition(".")
        table = mapping if prefix == arch.name else (
            tokenizer if prefix == "tokenizer" and tokens else {})
        target = table.get(rest)
        if isinstance(target, str):
            out[target] = metadata[key]
    n_tokens = array_length(metadata, "tokenizer.ggml.tokens")
    if "vocab_size" not in out and n_tokens is not None:
        out["vocab_size"] = n_tokens
    return out


def config_from_gguf(wf: WeightFile) -> dict[str, Any]:
    """The transformers ``config.json`` of a llama.cpp GGUF file.

    Raises:
        UnsupportedError: an architecture this lab does not map, one transformers has no
            config mapping for when the file carries no ``mlmf.hf_config``, or a rotary
            scaling transformers has no ``rope_type`` for.
    """
    metadata, path = wf.metadata, wf.path
    arch = arch_named(metadata.get("general.architecture"))
    if arch is None:
        raise UnsupportedError(f"general.architecture {metadata.get('general.architecture')!r} "
                               "has no transformers layout in this lab", path)
    carried = metadata.get(HF_CONFIG_KEY)
    config = dict(carried) if isinstance(carried, dict) else {}
    # a carried config keeps its own token ids: the tokenizer's may differ and need not win
    derived = _from_hyperparameters(arch, metadata, "output.weight" not in wf, tokens=not config)
    if not config and not derived:
        raise UnsupportedError(f"transformers has no config mapping for {arch.name!r} GGUF files "
                               f"and the file carries no {HF_CONFIG_KEY}", path)
    config.setdefault("model_type", arch.model_types[0])
    config.setdefault("architectures", [arch.hf_class])
    if config["model_type"] not in arch.model_types:
        raise FormatError(f"{HF_CONFIG_KEY} says model_type {config['model_type']!r}, which is "
                          f"not written as {arch.name!r}", path)
    rope = config.get("rope_parameters")
    for key, value in derived.items():
        where = rope if key == "rope_theta" and isinstance(rope, dict) else config
        if key in where and not agree(where[key], value):
            where[key] = value  # the hyperparameters llama.cpp runs with win
        elif key not in where and not isinstance(carried, dict):
            where[key] = value  # a carried config is complete as it is
    if arch.rope_scalings:
        _settle_rope(config, arch, wf)
    return config


def _settle_rope(config: dict[str, Any], arch: Arch, wf: WeightFile) -> None:
    """Make the config's rotary scaling the one llama.cpp runs the file with: kept when it
    is (the carried config's, Llama 3's parameters as written), else rebuilt from the file."""
    name = rope_freqs_name()
    running = scaling_from_gguf(wf.metadata, arch.name, wf.tensor(name) if name in wf else None,
                                wf.path)
    c = HFConfig(config, wf.path)
    try:
        said = scaling_from_hf(c, rope_dimension(c), arch.rope_scalings)
    except MLMFError:
        said = None
    if said is not None and said.same(running):
        return
    key = "rope_scaling" if "rope_scaling" in config and "rope_parameters" not in config \
        else "rope_parameters"
    theta = c.rope.get("rope_theta", 10000.0)
    config.pop("rope_theta", None)  # transformers 5 keeps it beside the scaling
    config[key] = {"rope_theta": theta, **scaling_to_hf(running, float(theta), rope_dimension(c),
                                                         wf.path)}


def hf_model_keys(config: dict[str, Any],
                  path: str | os.PathLike[str] | None = None) -> tuple[list[str], set[str]]:
    """The state-dict names of the transformers model ``config`` describes, and those of them
    tied to an earlier name (built on the meta device: no memory, no initialisation)."""
    import transformers

    name = (config.get("architectures") or ["?"])[0]
    cls = getattr(transformers, str(name), None)
    # the name comes from the file: only a model class of the file's own type is built
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
            and getattr(cls.config_class, "model_type", None) == config.get("model_type")):
        raise UnsupportedError(f"{name!r} is not a transformers model class for model_type "
                               f"{config.get('model_type')!r}", path)
    settings = {k: v for k, v in config.items() if k != "model_type"}
    cfg = transformers.AutoConfig.for_model(config["model_type"], **settings)
    with torch.device("meta"):
        model = cls(cfg)
    seen: set[int] = set()
    tied: set[str] = set()
    for key, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(key)
        seen.add(id(p))
    return list(model.state_dict()), tied


def write_model_hf(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                   quant: str | None = None, wf: WeightFile | None = None) -> ModelFile:
    """Write the llama.cpp GGUF file ``src`` as a transformers model folder ``dst``.

    Args:
        src: a GGUF file in llama.cpp's layout.
        dst: the folder: weights in the Hugging Face layout, ``config.json``, and the
            tokenizer files when the GGUF has a tokenizer (rebuilt by transformers).
        quant: ``"int8"``/``"int4"`` stores the weights quantized that way (see
            ``safetensors_quant``); None writes them dequantized (GGUF blocks as float32).
        wf: ``src`` already open (``ml.convert`` passes the file it opened, so its header
            is parsed once); None opens ``src``. Left open either way it came.

    Returns:
        The ``ModelFile`` record of the folder.

    Raises:
        MLMFError: not a llama.cpp GGUF file, or an architecture without a mapping.
    """
    from .sharded import save_sharded
    from .write import json_bytes

    s, d = Path(src), Path(dst)
    with nullcontext(wf) if wf is not None else open_weights(s) as wf:
        arch = llama_arch(wf)
        if arch is None:
            raise UnsupportedError("not a GGUF file in llama.cpp's layout (a registered "
                                   "general.architecture and llama.cpp's tensor names)", s)
        config = config_from_gguf(wf)
        keys, tied = hf_model_keys(config, s)
        view = ModelView(wf, arch, keys)
        state = {k: view.tensor(k) for k in view if k in keys}
        if not config.get("tie_word_embeddings", True) and "lm_head.weight" in keys and \
                "output.weight" not in wf:  # llama.cpp reuses the embedding as the output
            state["lm_head.weight"] = view.tensor(view.hf_name("token_embd.weight")).clone()
        dropped = [view.source_name(k) for k in view if k not in keys]
        absent = [k for k in keys if k not in state and k not in tied]
        has_tokenizer = read_vocabulary(wf.metadata).model != "none"
        carried = own_metadata(wf.metadata, arch)
    if dropped:
        warnings.warn(f"{s}: {config['architectures'][0]} has no place for "
                      f"{', '.join(dropped)}; not written", stacklevel=2)
    if absent:
        warnings.warn(f"{s}: the file has no {', '.join(absent)} (llama.cpp does not use "
                      "them); transformers will initialize them at random", stacklevel=2)
    files = {"config.json": json_bytes(config, indent=2)}  # as transformers writes it
    if has_tokenizer:
        try:
            files.update(hf_tokenizer_files(s, arch.name))
        except MLMFError as e:
            warnings.warn(f"no tokenizer written: {e}", stacklevel=2)
    save_sharded(state, d, metadata=carried, quant=quant, extra=files)
    return describe_hf(d)


def describe_hf(folder: Path) -> ModelFile:
    """The ``ModelFile`` record of a transformers model folder, read back from it."""
    config = read_config(folder)
    with open_weights(folder) as wf:
        types = count_types(i.quant or i.dtype for i in wf.infos())
        n = len(wf)
    tokenizer = sorted(p.name for p in folder.iterdir() if p.name.startswith("tokenizer"))
    notes = () if tokenizer else ("no tokenizer files",)
    return ModelFile(os.fspath(folder), "hf", str(config.get("model_type")), n, types,
                     ", ".join(tokenizer) or "none", notes)


def model_converter(src: Path, dst: Path, wf: WeightFile) -> Callable[..., ModelFile] | None:
    """The model-level conversion for ``src`` (open as ``wf``) -> ``dst``, if one applies.

    - a Hugging Face model folder (or its weight file beside a ``config.json`` whose
      ``model_type`` is registered in ``gguf_arch``) into a ``.gguf`` file: ``write_model_gguf``;
    - a GGUF file in llama.cpp's layout into a folder: ``write_model_hf``.

    Both take ``wf=`` (the source is read once). Anything else converts tensor by tensor
    (``ml.convert``'s generic path).
    """
    if dst.suffix.lower() == ".gguf" and not dst.is_dir():
        kind = model_type(src)
        if kind in ARCHS:
            return write_model_gguf
        if kind is not None:
            warnings.warn(f"{src}: model_type {kind!r} has no llama.cpp layout in this lab "
                          f"(supported: {', '.join(sorted(ARCHS))}); its tensors are written "
                          "under their own names, which llama.cpp does not run", stacklevel=3)
        return None
    if dst.suffix and not dst.is_dir():
        return None
    return write_model_hf if llama_arch(wf) is not None else None


def describe_model(path: str | os.PathLike[str]) -> ModelFile | None:
    """The ``ModelFile`` of a llama.cpp GGUF file or a transformers model folder, else None."""
    p = Path(path)
    try:
        if p.is_dir() and (p / "config.json").is_file():
            return describe_hf(p)
        if _is_gguf(p):
            with open_weights(p) as wf:  # read once: checked, then described
                return describe_gguf(p, wf) if llama_arch(wf) is not None else None
    except MLMFError:
        return None
    return None


def _is_gguf(path: Path) -> bool:
    try:
        return detect(path).name == "gguf"
    except MLMFError:
        return False


__all__ = ["ModelView", "agree", "config_from_gguf", "describe_hf", "describe_model",
           "hf_model_keys", "llama_arch", "model_converter", "model_view", "write_model_hf"]
