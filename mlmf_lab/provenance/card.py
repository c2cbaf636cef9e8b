"""Hugging Face style model cards: README.md with YAML front matter, from a description.

``base_model`` and ``base_model_relation`` (``adapter``, ``merge``, ``quantized``,
``finetune``, as the Hub defines them) come from, in order: the arguments, the
lineage store's history of the file, the file's own metadata. A base that sits in a
Hugging Face cache (``.../models--org--name/snapshots/<rev>/...``) is named by its Hub id
(``org/name``), which is what the Hub links; anything else by its file name.

The YAML is written as UTF-8 text: a tag like ``"🤗"`` is stored as the character, not as
the JSON escape ``"\ud83e\udd17"`` (YAML reads such a pair as two lone surrogates).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import atomic
from ..errors import MLMFError
from ..tables import Column, Table

if TYPE_CHECKING:
    from .describe import ModelDescription
    from .lineage import History, Lineage

RELATIONS = ("adapter", "merge", "quantized", "finetune")
_TUNING = {"lora-inject", "lora-train", "lora-load", "merge", "checkpoint"}


def relation_from_history(history: History) -> str | None:
    """The Hub relation a chain of activities amounts to (training beats quantization)."""
    names = {a.name for a in history.steps}
    if history.steps and history.steps[-1].name == "lora-save":
        return "adapter"
    if names & _TUNING:
        return "finetune"
    quantized = "quantize" in names or any(
        a.params.get("quant") for a in history.steps if a.name in ("convert", "save"))
    return "quantized" if quantized else None


_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def hub_model_id(path: str | os.PathLike[str] | None) -> str | None:
    """The Hub id of a file or folder in a Hugging Face cache, else None.

    The cache keeps ``org/name`` in ``models--org--name/snapshots/<rev>/<file>``, whose
    files link to ``models--org--name/blobs/<sha>`` (where a resolved path points). Hub
    names never hold ``--``, so the folder name splits back into the id.

    Example:
        >>> hub_model_id("/hf/models--openai--clip-vit-base-patch32/snapshots/3d/m.safetensors")
        'openai/clip-vit-base-patch32'
        >>> hub_model_id("/data/model.safetensors") is None
        True
    """
    if path is None:
        return None
    parts = Path(path).parts
    for folder, below in zip(parts, parts[1:], strict=False):
        if folder.startswith("models--") and below in ("snapshots", "blobs"):
            repo = folder.removeprefix("models--").split("--")
            if len(repo) <= 2 and all(_HUB_NAME.fullmatch(p) for p in repo):
                return "/".join(repo)
    return None


def _printable(code: int) -> bool:
    """Characters YAML lets stand unescaped in a double-quoted scalar on one line."""
    return (0x20 <= code <= 0x7E or 0xA0 <= code <= 0xD7FF
            or (0xE000 <= code <= 0xFFFD and code != 0xFEFF) or 0x10000 <= code <= 0x10FFFF)


def _yaml_scalar(v: Any) -> str:
    """A YAML double-quoted string in UTF-8 (escapes only where YAML needs them); numbers
    and booleans as JSON writes them, which YAML reads the same."""
    if not isinstance(v, str):
        return json.dumps(v)
    out = []
    for ch in v:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif _printable(code):
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")  # lone surrogates too: readable, never written raw
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def front_matter(fields: dict[str, Any]) -> str:
    """``---`` YAML block for the given fields (strings, numbers, lists of strings)."""
    lines = ["---"]
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines += [f"- {_yaml_scalar(v)}" for v in value]
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    lines.append("---")
    return "\n".join(lines) + "\n"


def model_card(
    desc: ModelDescription,
    base_model: str | None = None,
    base_model_relation: str | None = None,
    lineage: Lineage | None = None,
    license: str | None = None,  # noqa: A002 - the Hub's field name
    tags: list[str] | None = None,
) -> str:
    """README.md text for ``desc``: YAML front matter, a description table, the provenance.

    Args:
        desc: from ``ml.describe``.
        base_model, base_model_relation: override what lineage and metadata say.
        lineage: a store that recorded how the file was made (adds its history).
        license: e.g. ``"apache-2.0"``.
        tags: extra Hub tags.

    Raises:
        MLMFError: an unknown ``base_model_relation``.

    Example:
        >>> desc = ml.describe("model.safetensors")                       # doctest: +SKIP
        >>> text = ml.provenance.model_card(desc, license="apache-2.0")   # doctest: +SKIP
    """
    history = None
    if lineage is not None and desc.format != "in-memory":
        history = lineage.history(desc.source)
        roots = [e for e in history.origins if e.path and e.id != history.target.id]
        if base_model is None and roots:
            base_model = hub_model_id(roots[0].path) or roots[0].label
        if base_model_relation is None and base_model is not None:
            base_model_relation = relation_from_history(history)
    if base_model is None and desc.base_model is not None:
        base_model = hub_model_id(desc.base_model) or desc.base_model  # may be a local path
    if base_model_relation is None and base_model is not None:
        if desc.is_adapter:
            base_model_relation = "adapter"
        elif any(k.upper() == k and not k.startswith("F") for k in desc.bytes_by_type):
            base_model_relation = "quantized"  # GGUF block types: Q8_0, Q4_K, ...
    if base_model_relation is not None and base_model_relation not in RELATIONS:
        raise MLMFError(f"unknown base_model_relation {base_model_relation!r}; "
                        f"supported: {', '.join(RELATIONS)}")
    arch = desc.architecture.split(" ")[0] if desc.architecture else None
    arch = None if arch == "unknown" else arch  # GGUF writers' placeholder, not a name
    fields: dict[str, Any] = {
        "library_name": "mlmf_lab" if desc.format != "gguf" else "gguf",
        "license": license,
        "base_model": base_model,
        "base_model_relation": base_model_relation if base_model else None,
        "tags": ["mlmf-lab", *([arch] if arch else []), *(tags or [])],
    }
    storage = Table([Column("type"), Column("bytes", fmt="bytes")],
                    [{"type": k, "bytes": v} for k, v in desc.bytes_by_type.items()])
    body = [f"# {desc.name}", "", dataclasses.replace(desc.table(), title="").markdown(),
            "", "## Storage", "", storage.markdown()]
    if desc.modalities_guessed:
        body += ["", "Modalities are a guess from tensor names; nothing in the files "
                 "declares them."]
    if history is not None:
        body += ["", "## Provenance", "", "Recorded by the mlmf_lab lineage store:", "", "```",
                 str(history), "```"]
    if desc.content_hash:
        body += ["", f"Content sha256 (tensor hash): `{desc.content_hash}`"]
    return front_matter(fields) + "\n" + "\n".join(body) + "\n"


def save_model_card(desc: ModelDescription, path: str | os.PathLike[str],
                    **kwargs: Any) -> Path:
    """Write ``model_card(desc, **kwargs)`` atomically (a folder gets ``README.md``).

    Returns:
        The file written.

    Raises:
        MLMFError: the folder does not exist, or as ``model_card``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "README.md"
    if not p.parent.is_dir():
        raise MLMFError("the folder for the model card does not exist", p)
    text = model_card(desc, **kwargs)
    with atomic.replacing(p) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return p
