"""Conversions between weight-file layouts, first matching converter wins.

The generic converter reads anything ``open_weights`` reads and writes anything
``save_state_dict`` writes (safetensors, HF sharded folder, GGUF),
with an optional quantization scheme. Other converters (e.g. PyTorch DCP folders)
register themselves in ``CONVERTERS`` from their own module, listed in ``PLUGINS``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from . import events
from .errors import MLMFError, UnsupportedError
from .formats import open_weights, save_state_dict
from .formats.registry import read_all
from .provenance.describe import read_json


class Converter(NamedTuple):
    name: str
    matches: Callable[[Path, Path], bool]
    run: Callable[..., None]


CONVERTERS: list[Converter] = []
# Modules that register extra converters when imported (missing ones are skipped).
PLUGINS: list[str] = ["mlmf_lab.formats.dcp"]


def _model_type(src: Path) -> str | None:
    """``model_type`` from the Hugging Face ``config.json`` beside (or inside) ``src``."""
    try:  # a broken config.json does not stop a conversion: the architecture stays unknown
        config = read_json((src if src.is_dir() else src.parent) / "config.json") or {}
    except (OSError, MLMFError):
        return None
    value = config.get("model_type")
    return value if isinstance(value, str) and value else None


def carried_metadata(src: Path, dst: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """The source's metadata as the destination should get it.

    Into GGUF, ``general.architecture`` comes from the Hugging Face config's ``model_type``
    when the source has a ``config.json`` and no architecture of its own. (Each writer drops
    the other formats' own markers itself.)
    """
    out = dict(metadata)
    if dst.suffix.lower() == ".gguf":
        arch = _model_type(src)
        if arch is not None:
            out.setdefault("general.architecture", arch)
    return out


def _generic(src: Path, dst: Path, quant: str | None = None, **_: Any) -> None:
    with open_weights(src) as wf:  # opened once: a GGUF header can take a while to parse
        metadata = carried_metadata(src, dst, dict(wf.metadata))
        state = read_all(wf)
    save_state_dict(state, dst, metadata=metadata, quant=quant)


def convert(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], quant: str | None = None
) -> Path:
    """Convert ``src`` into ``dst`` (format by ``dst``'s suffix; a folder = HF sharded).

    Raises:
        MLMFError: when ``src`` cannot be read or no converter handles the pair.
    """
    s, d = Path(src), Path(dst)
    for module in PLUGINS:
        importlib.import_module(module)
    for conv in [*CONVERTERS, Converter("weights", lambda a, b: True, _generic)]:
        if conv.matches(s, d):
            with events.activity(
                "convert", used=[s], params={"quant": quant, "via": conv.name}
            ) as act:
                conv.run(s, d, quant=quant)
                act.generated.append(d)
            return d
    raise UnsupportedError(f"no converter from {s} to {d}")
