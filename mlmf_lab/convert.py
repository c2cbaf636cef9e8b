"""Conversions between weight-file formats: read with any registered format, write with any.

``convert`` opens ``src`` with ``open_weights`` (safetensors, HF sharded folder, GGUF,
PyTorch pickle, DCP folder) and writes through ``save_state_dict``, whose writer follows
``dst``'s suffix (``.safetensors``, ``.gguf``, ``.dcp``, or a folder for the HF layout),
with an optional quantization scheme. A new format converts as soon as it is registered.

Between a Hugging Face model folder and llama.cpp, the conversion is at the model level
(``formats.gguf_hf.model_converter``): a folder whose ``config.json`` names an architecture
llama.cpp runs becomes a GGUF file in llama.cpp's layout (names, Q/K rows, hyperparameters,
tokenizer), and such a GGUF file converted to a folder becomes a transformers model folder
(``config.json``, weights under the model's names, tokenizer).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from . import events
from .formats import open_weights, save_state_dict
from .formats.gguf_hf import model_converter
from .formats.gguf_model import ModelFile, model_type


class Conversion(NamedTuple):
    """What ``conversion`` wrote."""

    path: Path  # dst
    # a model-level conversion's record of what it wrote (architecture, tensors, tokenizer),
    # read back from dst by the writer; None for a tensor-by-tensor conversion
    model: ModelFile | None


def carried_metadata(src: Path, dst: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The source's metadata as the destination should get it.

    Into GGUF, ``general.architecture`` comes from the Hugging Face config's ``model_type``
    when the source has a ``config.json`` and no architecture of its own. (Each writer drops
    the other formats' own markers itself.)
    """
    out = dict(metadata)
    if dst.suffix.lower() == ".gguf" and "general.architecture" not in out:
        arch = model_type(src)
        if arch is not None:
            out["general.architecture"] = arch
    return out


def convert(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], quant: str | None = None
) -> Path:
    """Convert ``src`` into ``dst``: the format follows ``dst``'s suffix (a folder = HF sharded).

    Args:
        src: anything ``ml.open_weights`` reads.
        dst: ``x.safetensors``, ``x.gguf``, ``x.dcp`` or a folder.
        quant: a scheme ``dst``'s writer stores (GGUF block types into ``.gguf``, ``int8``
            or ``int4`` into safetensors or a folder).

    Returns:
        ``dst`` as a ``Path`` (``conversion`` also gives a model-level conversion's record).

    Raises:
        MLMFError: ``src`` cannot be read, or ``dst``'s writer refuses the tensors or ``quant``
            (the message names the writers that take it).

    Example:
        >>> ml.convert("model.safetensors", "model.gguf", quant="q8_0")  # doctest: +SKIP
    """
    return conversion(src, dst, quant).path


def conversion(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], quant: str | None = None
) -> Conversion:
    """``convert``, returning the ``ModelFile`` a model-level conversion read back from ``dst``
    (what ``mlmf-lab convert`` prints), so nobody describes ``dst`` a second time.

    Example:
        >>> conversion("model.gguf", "hf_out/").model.lines()  # doctest: +SKIP
    """
    s, d = Path(src), Path(dst)
    model = None
    with open_weights(s) as wf:  # opened once: the choice of path and the path itself read it
        model_level = model_converter(s, d, wf)  # HF model folder <-> llama.cpp's GGUF layout
        params = {"quant": quant, "model": model_level is not None}
        with events.activity("convert", used=[s], params=params) as act:
            if model_level is not None:
                model = model_level(s, d, quant=quant, wf=wf)
            else:
                metadata = carried_metadata(s, d, dict(wf.metadata))
                save_state_dict(wf.state_dict(), d, metadata=metadata, quant=quant)
            act.generated.append(d)
    return Conversion(d, model)
