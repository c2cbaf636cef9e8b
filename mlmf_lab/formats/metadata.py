"""Structured metadata in safetensors' string-to-string ``__metadata__``.

safetensors only stores strings. mlmf_lab writes other JSON-able values as JSON
text and lists their keys under ``mlmf.json`` (a JSON list), so they come back as
numbers, lists and dicts. Tied weights that were written once are listed under
``mlmf.tied`` (JSON object alias -> stored name); quantized tensors under ``mlmf.quant``
(see ``safetensors_quant``). ``format: pt`` is always set,
as transformers requires it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import FormatError, MLMFError
from ..files import loads_json

JSON_KEYS = "mlmf.json"
TIED_KEY = "mlmf.tied"
QUANT_KEY = "mlmf.quant"  # int8/int4 tensors and their layout (see safetensors_quant)
QUANTIZATION_VERSION_KEY = "general.quantization_version"  # GGUF's block-layout version
RESERVED = (JSON_KEYS, TIED_KEY, QUANT_KEY)


def encode_metadata(
    metadata: dict[str, Any] | None, aliases: dict[str, str] | None = None
) -> dict[str, str]:
    """User metadata -> safetensors header strings (non-strings as JSON)."""
    out: dict[str, str] = {"format": "pt"}
    json_keys: list[str] = []
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or key in RESERVED:
            raise MLMFError(f"metadata key {key!r} must be a string other than {RESERVED}")
        if isinstance(value, str):
            out[key] = value
            continue
        try:
            out[key] = json.dumps(value, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise MLMFError(f"metadata {key!r} is not JSON-serializable: {e}") from None
        json_keys.append(key)
    if json_keys:
        out[JSON_KEYS] = json.dumps(json_keys)
    if aliases:
        out[TIED_KEY] = json.dumps(aliases, sort_keys=True)
    return out


def decode_metadata(
    raw: dict[str, str], path: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """safetensors header strings -> (metadata with JSON values decoded, tied aliases)."""
    # Sorted: safetensors stores metadata in a hash map, so the order on disk varies.
    meta: dict[str, Any] = {k: raw[k] for k in sorted(raw) if k not in RESERVED}
    json_keys = loads_json(raw.get(JSON_KEYS, "[]"), path, JSON_KEYS, expect=list)
    for key in json_keys:
        if isinstance(key, str) and key in meta:
            meta[key] = loads_json(meta[key], path, f"structured metadata {key!r}")
    return meta, decode_aliases(raw.get(TIED_KEY, "{}"), path)


def decode_aliases(text: Any, path: str | os.PathLike[str] | None) -> dict[str, str]:
    """The ``mlmf.tied`` listing (JSON object alias -> stored name), checked to hold names."""
    if not isinstance(text, str):
        raise FormatError(f"{TIED_KEY} must be a JSON text, found {type(text).__name__}", path)
    aliases = loads_json(text, path, TIED_KEY)
    if not isinstance(aliases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()
    ):
        raise FormatError(f"{TIED_KEY} must be a JSON object of names (alias -> stored name)",
                          path)
    return aliases
