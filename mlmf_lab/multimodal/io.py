"""Saving and loading multi-modal models: weights + config (JSON) in the file's metadata.

One file (any format ``ml.save_state_dict`` writes: .safetensors, .gguf when that writer
is present, a sharded folder), or one file per modality plus one for the fusion part
(``save_parts`` / ``load_parts``), so an encoder can be swapped or shared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .. import events
from ..errors import MLMFError, StateDictError
from ..formats import open_weights, save_state_dict
from ..loading import compare_keys, load_into
from .config import MultiModalConfig
from .hf import finish_loading
from .model import MultiModalModel

CONFIG_KEY = "mlmf.multimodal.config"
FUSION_PART = "fusion"


def _tensors(model: MultiModalModel, prefix: str = "") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.detach().contiguous()
            for k, v in model.state_dict().items() if k.startswith(prefix)}


def save_multimodal(model: MultiModalModel, path: str | os.PathLike[str],
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write the weights with the config (JSON) under ``mlmf.multimodal.config``.

    Args:
        model: the model to save.
        path: target file; the suffix picks the format.
        metadata: extra string metadata stored alongside.

    Returns:
        The path written.

    Raises:
        MLMFError: an unsupported suffix (the message lists the supported ones).
    """
    meta = {**(metadata or {}), CONFIG_KEY: model.config.to_json()}
    with events.activity("save", used=[model], params={"kind": "multimodal"}) as act:
        save_state_dict(_tensors(model), path, metadata=meta)
        act.generated.append(os.fspath(path))
    return Path(path)


def read_config(path: str | os.PathLike[str]) -> MultiModalConfig:
    """The config stored in a multi-modal weight file.

    Raises:
        MLMFError: the file holds no multi-modal config (names the key it looked for).
    """
    with open_weights(path) as wf:
        text = wf.metadata.get(CONFIG_KEY)
    if text is None:
        raise MLMFError(f"expected a multi-modal model file with {CONFIG_KEY!r} in its "
                        "metadata, found none; was it saved with save_multimodal?", path)
    if not isinstance(text, str):
        text = json.dumps(text)
    try:
        return MultiModalConfig.from_json(text)
    except MLMFError as exc:
        raise MLMFError(f"the stored multi-modal config is invalid: {exc.message}", path) from None


def _empty(config: MultiModalConfig) -> MultiModalModel:
    with torch.device("meta"):
        return MultiModalModel(config)


def load_multimodal(path: str | os.PathLike[str]) -> MultiModalModel:
    """Rebuild a model saved with ``save_multimodal`` (config from the metadata), copy-free.

    Raises:
        MLMFError: no config in the file; StateDictError: weights that do not fit it.
    """
    config = read_config(path)
    with events.activity("load", used=[os.fspath(path)], params={"kind": "multimodal"}) as act:
        model = _empty(config)
        load_into(model, path)
        finish_loading(model, path)  # buffers no file holds (a pretrained backbone's)
        act.generated.append(model)
    return model.eval()


def save_parts(model: MultiModalModel, folder: str | os.PathLike[str],
               suffix: str = ".safetensors") -> dict[str, Path]:
    """One file per modality encoder (``<name><suffix>``, keys relative to the encoder) and
    ``fusion<suffix>`` with everything else and the config.

    Returns:
        part name -> path, the mapping ``load_parts`` takes.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in model.config.names:
        p = root / f"{name}{suffix}"
        save_state_dict(_tensors(model, f"encoders.{name}."), p,
                        metadata={"mlmf.multimodal.part": name})
        out[name] = p
    rest = {k: v for k, v in _tensors(model).items() if not k.startswith("encoders.")}
    p = root / f"{FUSION_PART}{suffix}"
    save_state_dict(rest, p, metadata={CONFIG_KEY: model.config.to_json(),
                                       "mlmf.multimodal.part": FUSION_PART})
    out[FUSION_PART] = p
    return out


def load_parts(parts: Mapping[str, str | os.PathLike[str]],
               config: MultiModalConfig | None = None) -> MultiModalModel:
    """Assemble a model from separate files.

    Args:
        parts: ``"fusion"`` -> the fusion file (heads, projections, fusion blocks);
            ``"<modality>"`` -> that encoder's weights (keys relative to the encoder);
            ``"<modality>.<submodule>"`` -> weights of a part of an encoder, e.g.
            ``"caption.backbone"`` -> the ``model.safetensors`` of the Hugging Face model
            under a ``"pretrained"`` encoder (an old ``position_ids`` buffer in it is
            skipped, as transformers does).
        config: the model config; by default read from the fusion file's metadata.

    Raises:
        MLMFError: no config; StateDictError: missing or unexpected keys, naming the file
            each key came from.
    """
    if config is None:
        if FUSION_PART not in parts:
            raise MLMFError(f"no config given and no {FUSION_PART!r} part to read it from; "
                            f"parts: {sorted(parts)}")
        config = read_config(parts[FUSION_PART])
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for part, path in parts.items():
        head = part.split(".")[0]
        if part != FUSION_PART and head not in config.names:
            raise MLMFError(f"unknown part {part!r}; expected {FUSION_PART!r} or one of "
                            f"{', '.join(config.names)} (optionally with .<submodule>)", path)
        prefix = "" if part == FUSION_PART else f"encoders.{part}."
        with open_weights(path) as wf:
            for key in wf:
                full = prefix + key
                if full in state:
                    raise StateDictError(f"{full} also comes from {source[full]}", path)
                state[full] = wf.tensor(key)
                source[full] = os.fspath(path)
    model = _empty(config)
    expected = model.state_dict(keep_vars=True)
    # transformers made position_ids non-persistent (4.31): older files still hold them
    state = {k: v for k, v in state.items()
             if k in expected or not (k == "position_ids" or k.endswith(".position_ids"))}
    report = compare_keys(model, state)
    where = ", ".join(sorted({os.fspath(p) for p in parts.values()}))
    if not report.ok:
        raise StateDictError(f"the parts do not make up this model: {report.describe()}", where)
    model.load_state_dict(state, strict=True, assign=True)
    finish_loading(model, where)
    return model.eval()
