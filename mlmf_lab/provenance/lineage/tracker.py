"""Identify the things an activity used or generated: files by content, live objects by identity.

A live model has no file to hash, so the tracker remembers, per store and per process,
which entity each object currently is (``id(obj)`` guarded by a weak reference) and
which entity each tensor storage belongs to (``data_ptr`` guarded by a weak reference to
the tensor). ``model.state_dict()`` shares storage with the model's parameters, so a
state dict handed to ``save_state_dict`` is recognised as the model it came from (the
entity most of its shared tensors belong to). A state dict sharing nothing (all weights
dequantized afresh) is matched by its key set against the live tracked modules.
"""

from __future__ import annotations

import os
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Activity -> kind of the files it generates (anything else: by content).
FILE_KINDS = {"lora-save": "adapter", "checkpoint": "checkpoint"}


@dataclass
class Item:
    """What the store needs to know about one used/generated thing, gathered before writing."""

    obj: Any
    kind: str
    label: str
    path: str | None = None
    exists: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)
    known: str | None = None  # entity id the tracker already associates with a live object

    @property
    def live(self) -> bool:
        return self.path is None


def is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def tensors_of(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors that make up a live object (parameters and buffers of a module)."""
    if isinstance(obj, nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        yield from (v for v in obj.values() if isinstance(v, torch.Tensor))


def _ptr(t: torch.Tensor) -> int:
    if t.device.type == "meta" or t.numel() == 0:
        return 0
    return int(t.data_ptr())


class Tracker:
    """In-process map from live objects and tensor storages to entity ids."""

    def __init__(self) -> None:
        self._objects: dict[int, tuple[weakref.ref[Any], str, int]] = {}  # id -> (ref, ent, ver)
        self._storages: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}

    def lookup(self, obj: Any) -> str | None:
        """The entity ``obj`` is known as: by identity, else by the storages it shares."""
        entry = self._objects.get(id(obj))
        if entry is not None and entry[0]() is obj:
            return entry[1]
        found = self._by_storage(obj)
        if found is None and isinstance(obj, Mapping):
            found = self._by_keys(obj)
        return found

    def version(self, obj: Any) -> int:
        entry = self._objects.get(id(obj))
        return entry[2] if entry is not None and entry[0]() is obj else 0

    def _by_storage(self, obj: Any) -> str | None:
        votes: Counter[str] = Counter()
        for t in tensors_of(obj):
            ptr = _ptr(t)
            if not ptr:
                continue
            hit = self._storages.get(ptr)
            if hit is not None:
                alive = hit[0]()
                if alive is not None and _ptr(alive) == ptr:
                    votes[hit[1]] += 1
        top = votes.most_common(2)
        if not top or (len(top) == 2 and top[0][1] == top[1][1]):
            return None  # nothing shared, or two candidates equally likely
        return top[0][0]

    def _by_keys(self, state: Mapping[Any, Any]) -> str | None:
        """The one live module whose state dict has exactly these keys.

        A quantized layer's ``state_dict()`` dequantizes into fresh tensors that share no
        storage with the model; the key set still names the model it came from. Two live
        candidates with the same keys are ambiguous, and then nothing is linked.
        """
        keys = set(state)
        hits = [entry[1] for entry in self._objects.values()
                if isinstance(m := entry[0](), nn.Module)
                and set(m.state_dict(keep_vars=True)) == keys]
        return hits[0] if len(hits) == 1 else None

    def remember(self, obj: Any, entity: str) -> None:
        """From now on ``obj`` (and the storages of its tensors) is ``entity``."""
        try:
            ref = weakref.ref(obj)
        except TypeError:  # dicts and other non-weakref-able objects: storages only
            pass
        else:
            self._objects[id(obj)] = (ref, entity, self.version(obj) + 1)
        for t in tensors_of(obj):
            ptr = _ptr(t)
            if ptr:
                self._storages[ptr] = (weakref.ref(t), entity)
        if len(self._storages) > 4096 + 4 * len(self._objects):
            self._prune()

    def _prune(self) -> None:
        self._storages = {p: v for p, v in self._storages.items() if v[0]() is not None}
        self._objects = {i: v for i, v in self._objects.items() if v[0]() is not None}


def describe_item(obj: Any, activity: str, generated: bool, tracker: Tracker) -> Item:
    """Gather kind, label and attributes of one used/generated thing (no database access)."""
    if is_path(obj):
        p = Path(obj).resolve()
        kind = FILE_KINDS.get(activity, "") if generated else ""
        return Item(obj, kind, p.name or str(p), path=str(p), exists=p.exists())
    known = tracker.lookup(obj)
    if isinstance(obj, nn.Module):
        n = sum(p.numel() for p in obj.parameters())
        version = tracker.version(obj) + (1 if generated else 0)
        name = type(obj).__name__
        label = name if version <= 1 else f"{name} v{version}"
        return Item(obj, "model", label, attrs={"class": name, "parameters": n}, known=known)
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Item(obj, "state_dict", f"state dict ({len(obj)} tensors)",
                    attrs={"tensors": len(obj)}, known=known)
    if isinstance(obj, torch.Tensor):
        return Item(obj, "tensor", f"tensor {list(obj.shape)}",
                    attrs={"shape": list(obj.shape), "dtype": str(obj.dtype)}, known=known)
    return Item(obj, "object", type(obj).__name__, attrs={"class": type(obj).__name__},
                known=known)
