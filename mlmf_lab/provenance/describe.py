"""``ml.describe``: what a model file (or a live model) is, from its own metadata.

Everything shown is read, not guessed, unless labelled: the architecture comes from the
file's metadata (GGUF ``general.architecture``) or the Hugging Face ``config.json`` beside
it; modalities come from declarations (sub-configs, GGUF ``clip.has_*_encoder`` keys,
tokenizer/preprocessor files); only when nothing declares them is a guess made from
tensor names, and it is marked as a guess.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MLMFError
from ..files import read_json
from ..formats import open_weights
from ..formats.base import dtype_name
from ..formats.gguf_meta import LazyMetadata
from ..tables import Column, Table, fields_dict
from ..units import human_bytes
from .hashing import file_tensor_hash, state_hash, unique_tensors
from .tensorstats import STATS_COLUMNS, TensorStats, tensor_stats

_GUESS = {
    "text": re.compile(r"embed_tokens|word_embeddings|\bwte\b|token_embd|tok_embeddings|lm_head"),
    "vision": re.compile(r"vision|visual|patch_embed|pixel|image|\bvit\b"),
    "audio": re.compile(r"audio|speech|\bmel\b|wav2vec|whisper|feature_extractor"),
}
_SUBCONFIGS = {"text_config": "text", "vision_config": "vision", "audio_config": "audio",
               "speech_config": "audio"}
_GGUF_ENCODERS = {"clip.has_text_encoder": "text", "clip.has_vision_encoder": "vision",
                  "clip.has_audio_encoder": "audio"}


@dataclass(frozen=True)
class ModelDescription:
    """What a model is, as its files declare it.

    Attributes:
        source: the file path, or ``"<ClassName> (in memory)"``.
        format: ``"safetensors"``, ``"gguf"``, ``"pytorch"`` or ``"in-memory"``.
        architecture: e.g. ``"BertModel (bert)"`` or ``"llama"``; None when nothing declares it.
        architecture_source: where ``architecture`` was read (``"config.json"``, ...).
        num_parameters, num_tensors, nbytes: totals over the stored tensors.
        bytes_by_type: bytes per storage type (dtype, or quant type such as ``"Q8_0"``).
        modalities: e.g. ``("text",)``.
        modalities_source: where they were declared, or ``"guess from tensor names"``.
        content_hash: sha256 tensor hash (see ``mlmf_lab.provenance.hashing``), or None.
        base_model: the base model the metadata names, if any.
        is_adapter: a PEFT adapter (``adapter_config.json`` beside the weights).
        metadata: the file's own metadata; config: the ``config.json`` beside it.
        stats: per-tensor statistics when asked for (``stats=True``).
    """

    source: str
    format: str
    architecture: str | None
    architecture_source: str | None
    num_parameters: int
    num_tensors: int
    nbytes: int
    bytes_by_type: dict[str, int]
    modalities: tuple[str, ...]
    modalities_source: str
    content_hash: str | None
    base_model: str | None = None
    is_adapter: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    config: dict[str, Any] | None = field(default=None, repr=False)
    stats: tuple[TensorStats, ...] | None = field(default=None, repr=False)

    @property
    def modalities_guessed(self) -> bool:
        return self.modalities_source.startswith("guess")

    @property
    def name(self) -> str:
        p = Path(self.source)
        return p.parent.name if p.name in ("model.safetensors", "adapter_model.safetensors") \
            else p.stem if self.format != "in-memory" else self.source.split()[0]

    def as_dict(self) -> dict[str, Any]:
        """Everything described, as JSON data (the file's metadata and config included)."""
        return {**fields_dict(self), "name": self.name,
                "modalities_guessed": self.modalities_guessed}

    def rows(self) -> list[dict[str, Any]]:
        """(field, value) rows in words, for the table and the model card."""
        arch = self.architecture or "not declared"
        if self.architecture_source:
            arch += f" (from {self.architecture_source})"
        mods = ", ".join(self.modalities) or "none"
        types = ", ".join(f"{k}: {human_bytes(v)}" for k, v in self.bytes_by_type.items())
        out = [("source", self.source), ("format", self.format), ("architecture", arch),
               ("parameters", f"{self.num_parameters:,}"), ("tensors", str(self.num_tensors)),
               ("size", f"{human_bytes(self.nbytes)} ({types})"),
               ("modalities", f"{mods} ({self.modalities_source})")]
        if self.base_model:
            out.append(("base model (declared)", self.base_model))
        if self.content_hash:
            out.append(("content sha256", self.content_hash))
        return [{"field": k, "value": v} for k, v in out]

    def table(self) -> Table:
        return Table([Column("field"), Column("value", code=True)], self.rows(), title=self.name)

    def stats_table(self, max_rows: int | None = None) -> Table:
        """The per-tensor statistics (``stats=True``), one row per tensor."""
        return Table(STATS_COLUMNS, [r for s in self.stats or () for r in s.rows()],
                     max_rows=max_rows, noun="tensors")

    def __str__(self) -> str:
        return self.table().text()

    def _repr_html_(self) -> str:
        stats = self.stats_table(max_rows=40).html() if self.stats else ""
        return self.table().html() + stats


def json_beside(p: Path) -> dict[str, Any] | None:
    """The JSON object in ``p`` (``config.json`` and the like beside the weights), or None
    when there is no such file; an ``MLMFError`` naming it when it is not a JSON object."""
    if not p.exists():
        return None
    doc: dict[str, Any] = read_json(p, "the JSON beside the weights", expect=dict)
    return doc


def _architecture(meta: dict[str, Any], config: dict[str, Any] | None,
                  adapter: dict[str, Any] | None) -> tuple[str | None, str | None]:
    for key in ("general.architecture", "architecture", "model_type"):
        if isinstance(meta.get(key), str) and meta[key]:
            return meta[key], f"file metadata {key!r}"
    if adapter is not None:
        return f"{adapter.get('peft_type', 'PEFT')} adapter", "adapter_config.json"
    if config:
        archs = config.get("architectures")
        mtype = config.get("model_type")
        if isinstance(archs, list) and archs:
            return (f"{archs[0]} ({mtype})" if mtype else str(archs[0])), "config.json"
        if isinstance(mtype, str):
            return mtype, "config.json"
    return None, None


def _declared_modalities(meta: dict[str, Any], config: dict[str, Any] | None,
                         folder: Path | None) -> tuple[tuple[str, ...], str]:
    found: list[str] = []
    sources: list[str] = []

    def add(mod: str, source: str) -> None:
        if mod not in found:
            found.append(mod)
        if source not in sources:
            sources.append(source)

    declared = meta.get("modalities")
    if isinstance(declared, str):
        declared = [m.strip() for m in declared.split(",") if m.strip()]
    if isinstance(declared, list):
        for m in declared:
            add(str(m), "file metadata 'modalities'")
    for key, mod in _GGUF_ENCODERS.items():
        if meta.get(key) is True:
            add(mod, f"GGUF {key}")
    if "tokenizer.ggml.model" in meta:
        add("text", "GGUF tokenizer")
    for key, mod in _SUBCONFIGS.items():
        if config and isinstance(config.get(key), dict):
            add(mod, f"config.json {key}")
    if folder is not None:
        if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
            add("text", "tokenizer beside the file")
        pre = json_beside(folder / "preprocessor_config.json") or {}
        if any(k.startswith("image_") for k in pre):
            add("vision", "preprocessor_config.json")
        if "sampling_rate" in pre:
            add("audio", "preprocessor_config.json")
    return tuple(found), "declared: " + "; ".join(sources) if sources else ""


def guess_modalities(names: list[str]) -> tuple[str, ...]:
    """Modalities suggested by tensor names alone (a guess; prefer declared metadata)."""
    return tuple(m for m, rx in _GUESS.items() if any(rx.search(n) for n in names))


def _base_model(meta: dict[str, Any], config: dict[str, Any] | None,
                adapter: dict[str, Any] | None) -> str | None:
    for key in ("base_model", "general.base_model.0.repo_url", "general.base_model.0.name"):
        if isinstance(meta.get(key), str) and meta[key]:
            return str(meta[key])
    if adapter and isinstance(adapter.get("base_model_name_or_path"), str):
        return str(adapter["base_model_name_or_path"])
    if config and isinstance(config.get("_name_or_path"), str) and config["_name_or_path"]:
        return str(config["_name_or_path"])
    return None


def _describe_module(model: nn.Module, stats: bool, hash_: bool) -> ModelDescription:
    state = unique_tensors(model.state_dict())
    by_type: dict[str, int] = {}
    for t in state.values():
        key = dtype_name(t.dtype)
        by_type[key] = by_type.get(key, 0) + t.nbytes
    cfg = getattr(model, "config", None)
    archs = getattr(cfg, "architectures", None)
    mtype = getattr(cfg, "model_type", None)
    if archs:
        arch, source = (f"{archs[0]} ({mtype})" if mtype else str(archs[0])), "model.config"
    else:
        arch, source = type(model).__name__, "model class"
    mods = guess_modalities(list(state))
    return ModelDescription(
        f"{type(model).__name__} (in memory)", "in-memory", arch, source,
        sum(t.numel() for t in state.values()), len(state), sum(by_type.values()), by_type,
        mods, "guess from tensor names" if mods else "none declared",
        state_hash(state).sha256 if hash_ else None,
        stats=tuple(tensor_stats(model)) if stats else None)


def describe(x: str | os.PathLike[str] | nn.Module, stats: bool = False,
             hash: bool = True) -> ModelDescription:  # noqa: A002 - reads best at call sites
    """Describe a weight file, HF folder, or live model from its own metadata.

    Args:
        x: anything ``ml.open_weights`` reads, or an ``nn.Module``.
        stats: also compute per-tensor statistics (reads every tensor once).
        hash: compute the content hash (streams every byte once; skip for a quick look).

    Returns:
        A ``ModelDescription`` (shows as a table in notebooks; ``model_card(desc)`` in
        ``mlmf_lab.provenance.card`` turns it into a Hugging Face model card).

    Raises:
        MLMFError: unreadable weights, or an invalid ``config.json`` beside them.

    Example:
        >>> ml.describe(ml.examples.minilm_path()).architecture  # doctest: +SKIP
        'BertModel (bert)'
    """
    if isinstance(x, nn.Module):
        return _describe_module(x, stats, hash)
    if isinstance(x, torch.Tensor) or not isinstance(x, (str, os.PathLike)):
        raise MLMFError(f"describe() takes a path or an nn.Module, got {type(x).__name__}")
    with open_weights(x) as wf:
        # a GGUF file's metadata is this open's own (LazyMetadata): kept as it is, its
        # vocabulary is decoded only if someone reads it; a copy would decode it now
        meta = wf.metadata if isinstance(wf.metadata, LazyMetadata) else dict(wf.metadata)
        fmt = wf.format
        names = list(wf)
        n_params, nbytes, by_type = wf.num_parameters, wf.nbytes, wf.bytes_by_type()
        path = Path(wf.path)
    folder = Path(x) if Path(x).is_dir() else path.parent
    config = json_beside(folder / "config.json")
    # the adapter's config describes the adapter's weights only, not a model beside them
    adapter = json_beside(folder / "adapter_config.json") if path.name.startswith(
        "adapter_model") else None
    arch, arch_source = _architecture(meta, config, adapter)
    mods, mod_source = _declared_modalities(meta, config, folder)
    if not mods:
        mods = guess_modalities(names)
        mod_source = "guess from tensor names" if mods else "none declared"
    return ModelDescription(
        os.fspath(Path(x)), fmt, arch, arch_source, n_params, len(names), nbytes, by_type,
        mods, mod_source, file_tensor_hash(x).sha256 if hash else None,
        _base_model(meta, config, adapter), adapter is not None, meta, config,
        tuple(tensor_stats(x)) if stats else None)
