"""Encoders from Hugging Face folders, on transformers' own model classes.

``load_encoder(folder, modality)`` reads the folder's ``config.json``, finds its
``model_type`` in ``HF_ENCODERS`` (an unknown type is refused with the list of known ones),
builds the model class of the wanted tower on the meta device and fills it with
``ml.load_into``: the weights are memory-mapped, never held twice. Whatever sits around the
tower in the file (a decoder, a classifier, the other tower of a CLIP) is found by its key
prefix and left out.

Checkpoints saved by current transformers no longer hold non-persistent buffers
(``embeddings.position_ids`` since transformers 4.31); ``finish_loading`` rebuilds them as
``from_pretrained`` does: every loaded tensor is marked initialized and the model's own
``initialize_weights`` fills the rest. transformers is imported only when a folder is read.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .. import events
from ..errors import ConfigError, MLMFError, StateDictError
from ..files import read_json
from ..formats import open_weights
from ..loading import compare_keys, in_dtype, load_into, rebuild_buffers
from .config import Modality

Builder = Callable[[Any], nn.Module]


class HFEncoder(NamedTuple):
    """One registered architecture: the ``model_type`` values it covers and, per modality,
    the transformers class that encodes it (built from the folder's config)."""

    model_types: tuple[str, ...]
    towers: dict[Modality, Builder]


def _auto(config: Any) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_config(config)


def _with_projection(cls_name: str, part: str) -> Builder:
    """A CLIP tower with its projection; the sub-config learns the folder's projection width
    (CLIPConfig keeps ``projection_dim`` at the top, the towers' own default is 512)."""

    def build(config: Any) -> nn.Module:
        import transformers

        sub = copy.deepcopy(getattr(config, part))
        sub.projection_dim = config.projection_dim
        return getattr(transformers, cls_name)(sub)

    return build


def _plain(cls_name: str, **kwargs: Any) -> Builder:
    def build(config: Any) -> nn.Module:
        import transformers

        return getattr(transformers, cls_name)(config, **kwargs)

    return build


def _whisper_encoder(config: Any) -> nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder(config)


HF_ENCODERS: list[HFEncoder] = [
    HFEncoder(("bert", "roberta", "xlm-roberta", "distilbert", "electra"),
              {Modality.TEXT: _auto}),
    HFEncoder(("clip",), {Modality.TEXT: _with_projection("CLIPTextModelWithProjection",
                                                          "text_config"),
                          Modality.IMAGE: _with_projection("CLIPVisionModelWithProjection",
                                                           "vision_config")}),
    HFEncoder(("clip_text_model",), {Modality.TEXT: _plain("CLIPTextModel")}),
    HFEncoder(("clip_vision_model",), {Modality.IMAGE: _plain("CLIPVisionModel")}),
    HFEncoder(("vit",), {Modality.IMAGE: _plain("ViTModel", add_pooling_layer=False)}),
    HFEncoder(("whisper",), {Modality.AUDIO: _whisper_encoder}),
]


def supported_types() -> str:
    return ", ".join(t for entry in HF_ENCODERS for t in entry.model_types)


def model_type(folder: str | os.PathLike[str]) -> str:
    """The ``model_type`` in ``folder/config.json``.

    Raises:
        MLMFError: no readable config.json, or one without a model_type.
    """
    path = Path(folder) / "config.json"
    if not path.exists():
        raise MLMFError("expected a Hugging Face model folder with a config.json, found none",
                        folder)
    kind = read_json(path, "config.json", expect=dict).get("model_type")
    if not isinstance(kind, str):
        raise MLMFError("expected a \"model_type\" string in config.json, found none", path)
    return kind


def tower_builder(folder: str | os.PathLike[str],
                  modality: Modality | str | None = None) -> tuple[Builder, Modality]:
    """The builder of ``folder``'s encoder for ``modality`` (the only one when None).

    Raises:
        ConfigError: a model_type with no registered encoder (listing the known ones), or a
            modality the architecture does not encode (listing the ones it does).
    """
    kind = model_type(folder)
    entry = next((e for e in HF_ENCODERS if kind in e.model_types), None)
    if entry is None:
        raise ConfigError(f"no encoder for model_type {kind!r}; supported: {supported_types()}",
                          folder)
    if modality is None:
        if len(entry.towers) != 1:
            raise ConfigError(f"a {kind} folder holds several encoders; pass modality= one of "
                              f"{', '.join(m.value for m in entry.towers)}", folder)
        modality = next(iter(entry.towers))
    modality = Modality(modality)
    if modality not in entry.towers:
        raise ConfigError(f"a {kind} folder has no {modality.value} encoder; it encodes: "
                          f"{', '.join(m.value for m in entry.towers)}", folder)
    return entry.towers[modality], modality


def _read_config(folder: str | os.PathLike[str]) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(os.fspath(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise MLMFError(f"transformers cannot read this config.json ({exc})", folder) from None


def empty_encoder(folder: str | os.PathLike[str],
                  modality: Modality | str | None = None) -> nn.Module:
    """The encoder's skeleton on the meta device (no weights), e.g. to load a saved model."""
    build, _ = tower_builder(folder, modality)
    config = _read_config(folder)
    with torch.device("meta"):
        return build(config)


def load_encoder(folder: str | os.PathLike[str],
                 modality: Modality | str | None = None) -> nn.Module:
    """An encoder from a Hugging Face folder, on transformers' own class, weights mapped.

    Args:
        folder: what ``save_pretrained`` writes (``config.json`` and the weights: one
            safetensors file, a sharded index, or ``pytorch_model.bin``).
        modality: the tower of a multi-tower folder (a CLIP's ``"text"`` or ``"image"``);
            None for a folder with one encoder.

    Returns:
        The transformers model in eval mode: ``BertModel`` (and relatives, through
        ``AutoModel``), ``CLIPTextModelWithProjection`` / ``CLIPVisionModelWithProjection``,
        ``CLIPTextModel``, ``CLIPVisionModel``, ``ViTModel`` (no pooler) or
        ``WhisperEncoder``.

    Raises:
        ConfigError: an unknown model_type or a tower the folder lacks.
        StateDictError: the file lacks tensors of the encoder, or holds some of other
            shapes or layers the config does not declare.

    Example:
        >>> vision = load_encoder("clip-folder", "image")  # doctest: +SKIP
        >>> vision(pixel_values=pixels).image_embeds  # doctest: +SKIP
    """
    model = empty_encoder(folder, modality)
    with open_weights(folder) as wf:
        names = list(wf)
    rename = _renamer(model)
    renamed = {rename(n): n for n in names}  # model-side name -> file name
    prefix = _prefix(model, list(renamed), folder)
    if all(k == v for k, v in renamed.items()):
        report = load_into(_nest(model, prefix), folder, strict=False)
        missing, unexpected = report.missing, report.unexpected
        mismatched = [(k.removeprefix(prefix), a, b) for k, a, b in report.mismatched]
    else:
        missing, unexpected, mismatched = _load_renamed(model, folder, renamed, prefix)
    missing = [k.removeprefix(prefix) for k in missing]
    if missing and all(k.startswith("pooler.") for k in missing) and hasattr(model, "pooler"):
        model.pooler = None  # type: ignore[assignment]  # a masked-LM checkpoint has none
        missing = []
    own = {name for name, _ in model.named_children()}
    extra = [k.removeprefix(prefix) for k in unexpected if k.startswith(prefix)]
    extra = [k for k in extra if k.split(".")[0] in own and not k.endswith("position_ids")
             and not k.startswith("pooler.")]
    if missing or extra or mismatched:
        parts = ([f"missing: {', '.join(missing[:8])}"] if missing else []) + (
            [f"not in this config: {', '.join(extra[:8])}"] if extra else []) + [
            f"{k}: model {list(a)}, file {list(b)}" for k, a, b in mismatched[:8]]
        raise StateDictError(f"the {type(model).__name__} built from config.json and the "
                             f"weights disagree ({'; '.join(parts)})", folder)
    finish_loading(model, folder)
    return model.eval()


def _renamer(model: nn.Module) -> Callable[[str], str]:
    """File name -> module name, by transformers' own renamings for this class.

    transformers 5 renamed some modules (ViT's ``encoder.layer.N.attention.attention.query``
    is ``layers.N.attention.q_proj``) but saves files under the old names, and maps them back
    on load (``conversion_mapping``); old checkpoints' ``LayerNorm.gamma`` is the same kind of
    rename. Conversions that merge or split tensors cannot be done copy-free: refused.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, WeightRenaming, apply_renamings

    transforms = get_model_conversion_mapping(model)  # type: ignore[arg-type]
    renames = [t for t in transforms if isinstance(t, WeightRenaming)
               and not isinstance(t, PrefixChange)]  # prefixes: _prefix finds them
    others = sorted({type(t).__name__ for t in transforms if not isinstance(t, WeightRenaming)})
    if others:
        raise ConfigError(f"{type(model).__name__} checkpoints need transformers' tensor "
                          f"conversions ({', '.join(others)}), which a copy-free load cannot do")
    return lambda name: apply_renamings(name, renames)


def _load_renamed(model: nn.Module, folder: str | os.PathLike[str], renamed: dict[str, str],
                  prefix: str) -> tuple[list[str], list[str], list[Any]]:
    """``load_into``'s steps under renamed keys: mapped tensors assigned, none copied
    (unless the dtype differs). Returns (missing, unexpected, mismatched) as its report."""
    with events.activity("load", used=[folder], params={"into": type(model).__name__}) as act:
        wf = open_weights(folder)  # tensors stay mapped after the reader is dropped
        state = {k.removeprefix(prefix): wf.tensor(f) for k, f in renamed.items()
                 if k.startswith(prefix)}
        report = compare_keys(model, state)
        expected = model.state_dict(keep_vars=True)
        bad = {k for k, _, _ in report.mismatched} | set(report.unexpected)
        model.load_state_dict({k: in_dtype(v, expected[k].dtype) for k, v in state.items()
                               if k not in bad}, strict=False, assign=True)
        act.generated.append(model)
    return report.missing, [prefix + k for k in report.unexpected], report.mismatched


def _prefix(model: nn.Module, names: list[str], folder: str | os.PathLike[str]) -> str:
    """The prefix under which ``model``'s tensors sit in the file (``"model.encoder."`` for
    a Whisper encoder, ``"vit."`` in a classifier checkpoint, ``""`` for a bare model)."""
    keys = list(model.state_dict())
    present = set(names)
    first = keys[0]
    candidates = {n[: len(n) - len(first)] for n in names
                  if n == first or n.endswith("." + first)}
    best = max(candidates, key=lambda p: sum(p + k in present for k in keys), default=None)
    if best is None:
        raise StateDictError(f"expected the tensors of a {type(model).__name__} (e.g. "
                             f"{first!r}), found none among the file's {len(names)}; was it "
                             "saved by transformers' save_pretrained?", folder)
    return best


def _nest(model: nn.Module, prefix: str) -> nn.Module:
    """``model`` placed at ``prefix`` inside empty containers, so its keys match the file's."""
    if not prefix:
        return model
    root = holder = nn.Module()
    *outer, last = prefix.rstrip(".").split(".")
    for name in outer:
        child = nn.Module()
        holder.add_module(name, child)
        holder = child
    holder.add_module(last, model)
    return root


def _meta_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            yield name, t


def finish_loading(model: nn.Module, source: str | os.PathLike[str]) -> None:
    """Rebuild the buffers no file holds (``loading.rebuild_buffers``, as ``from_pretrained``
    does), then check nothing is left on the meta device.

    Raises:
        StateDictError: tensors still without data (named), with ``source`` in the message.
    """
    rebuild_buffers(model, source)
    left = [name for name, _ in _meta_tensors(model)]
    if left:
        raise StateDictError(f"{len(left)} tensors were not loaded and cannot be rebuilt: "
                             f"{', '.join(left[:8])}", source)

@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` (a transformers model) with eager attention inside the block: SDPA
    returns no attention weights (transformers #40597)."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before not in (None, "eager")
    if switch:
        model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)  # type: ignore[operator]


def hidden_size(model: nn.Module) -> int:
    """Width of the encoder's token states (``hidden_size``, or ``d_model`` for Whisper)."""
    config = model.config  # type: ignore[union-attr]
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if not isinstance(width, int):
        raise ConfigError(f"{type(model).__name__}'s config gives no hidden_size or d_model")
    return width
