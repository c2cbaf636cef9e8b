"""Modality sharding: each modality's encoder on its own rank(s), from the file's metadata.

A multi-modal weight file declares its modalities in its metadata under ``modalities``:

- ``{"vision": ["vision_model."], "text": ["text_model."]}``: modality -> name prefixes;
- ``{"vision": "vision_model."}``: one prefix each;
- ``["vision", "text"]``: a tensor belongs to modality m when one of its dotted name
  parts is ``m`` or starts with ``m_`` (``encoders.vision.x``, ``vision_model.x``).

Tensors of no modality (fusion heads, projections) are ``shared``: replicated on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, FormatError
from ..files import loads_json
from ..formats import TensorInfo
from .plans import Layout, Piece, register_strategy, replicated, split_layers

METADATA_KEY = "modalities"


def declared_modalities(metadata: Mapping[str, Any]) -> dict[str, list[str]]:
    """The modality -> prefixes map a file declares (empty prefixes = match by name part).

    Raises:
        ConfigError: when the key is missing or not one of the accepted shapes.
    """
    raw = metadata.get(METADATA_KEY)
    if isinstance(raw, str):
        try:
            raw = loads_json(raw, None, METADATA_KEY)
        except FormatError:  # not JSON: a comma-separated list
            raw = [m.strip() for m in raw.split(",") if m.strip()]
    if raw is None:
        keys = ", ".join(sorted(metadata)) or "none"
        raise ConfigError(
            f"the file declares no modalities: expected a metadata key {METADATA_KEY!r} "
            f"(e.g. {{'vision': ['vision_model.'], 'text': ['text_model.']}}); "
            f"found metadata keys: {keys}"
        )
    if isinstance(raw, list) and raw and all(isinstance(m, str) for m in raw):
        return {m: [] for m in raw}
    if isinstance(raw, dict) and raw:
        out: dict[str, list[str]] = {}
        for m, prefixes in raw.items():
            if isinstance(prefixes, str):
                prefixes = [prefixes]
            if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
                raise ConfigError(f"modality {m!r}: expected a prefix or a list of prefixes, "
                                  f"found {prefixes!r}")
            out[str(m)] = prefixes
        return out
    raise ConfigError(f"metadata {METADATA_KEY!r} must be a list of names or a map of "
                      f"modality -> prefixes; found {raw!r}")


def modality_of(name: str, declared: Mapping[str, list[str]]) -> str | None:
    """The modality a tensor belongs to (longest matching prefix wins), or None."""
    best: tuple[int, str] | None = None
    parts = name.split(".")
    for m, prefixes in declared.items():
        if prefixes:
            for p in prefixes:
                if name.startswith(p) and (best is None or len(p) > best[0]):
                    best = (len(p), m)
        elif any(part == m or part.startswith(m + "_") for part in parts):
            if best is None:
                best = (0, m)
    return best[1] if best else None


def default_assignment(sizes: Mapping[str, int], world_size: int) -> dict[str, list[int]]:
    """Ranks per modality: one each (extra ranks to the heaviest per rank), or bin-packing."""
    names = sorted(sizes, key=lambda m: -sizes[m])
    if world_size >= len(names):
        count = dict.fromkeys(names, 1)
        for _ in range(world_size - len(names)):
            heaviest = max(names, key=lambda m: sizes[m] / count[m])
            count[heaviest] += 1
        out, nxt = {}, 0
        for m in names:
            out[m] = list(range(nxt, nxt + count[m]))
            nxt += count[m]
        return out
    load = [0] * world_size
    packed: dict[str, list[int]] = {}
    for m in names:  # largest first onto the least loaded rank
        r = min(range(world_size), key=lambda i: load[i])
        load[r] += sizes[m]
        packed[m] = [r]
    return packed


def _check_assignment(assign: Mapping[str, Sequence[int]], declared: Mapping[str, Any],
                      world_size: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m, ranks in assign.items():
        if m not in declared:
            raise ConfigError(f"assign names modality {m!r}; the file declares: "
                              f"{', '.join(declared)}")
        ranks = [ranks] if isinstance(ranks, int) else list(ranks)
        bad = [r for r in ranks if not 0 <= r < world_size]
        if not ranks or bad:
            raise ConfigError(f"modality {m!r}: ranks {ranks} must be non-empty and within "
                              f"0..{world_size - 1}")
        out[m] = ranks
    missing = [m for m in declared if m not in out]
    if missing:
        raise ConfigError(f"assign gives no ranks to modality {', '.join(missing)}; "
                          "every declared modality needs at least one rank")
    return out


def _modality(
    infos: Sequence[TensorInfo],
    world_size: int,
    metadata: dict[str, Any],
    assign: Mapping[str, Sequence[int]] | None = None,
) -> Layout:
    declared = declared_modalities(metadata)
    members: dict[str, list[TensorInfo]] = {m: [] for m in declared}
    shared: list[TensorInfo] = []
    for info in infos:
        m = modality_of(info.name, declared)
        (members[m] if m is not None else shared).append(info)
    empty = [m for m, v in members.items() if not v]
    if empty:
        raise ConfigError(f"modality {', '.join(empty)} matches no tensor "
                          f"(declared: {declared}); check the metadata's prefixes")
    sizes = {m: sum(i.nbytes for i in v) for m, v in members.items()}
    ranks_of = (_check_assignment(assign, declared, world_size) if assign is not None
                else default_assignment(sizes, world_size))
    pieces: list[Piece] = []
    held: dict[int, list[str]] = {r: [] for r in range(world_size)}
    for m, ranks in ranks_of.items():
        part, labels = split_layers(members[m], ranks)
        pieces.extend(part)
        for r in ranks:
            held[r].append(m if len(ranks) == 1 else f"{m} ({labels[r]})")
    for info in shared:
        pieces.extend(replicated(info, world_size, "shared"))
    labels_out = [", ".join(held[r]) or "shared only" for r in range(world_size)]
    detail = ("modality -> ranks: " + "; ".join(f"{m}: {v}" for m, v in ranks_of.items())
              + f"; {len(shared)} shared tensor(s) replicated")
    return Layout(pieces, labels_out, detail)


register_strategy("modality", _modality)
