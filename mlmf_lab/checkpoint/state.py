"""Training state without pickle: nested Python objects split into JSON + named tensors.

Optimizer and scheduler ``state_dict()``s are trees of dicts, lists, tuples,
numbers and tensors. ``split_state`` turns such a tree into a JSON-able skeleton
in which every tensor is replaced by a reference to a name, plus a flat
``name -> tensor`` dict that goes into a safetensors file. ``join_state`` is the
exact inverse: tuples stay tuples, integer dict keys stay integers, and
non-finite floats survive (as tagged strings, so the JSON stays standard).

The random number generators (Python, numpy, torch CPU and CUDA when present)
are captured the same way by ``capture_rng`` and restored by ``restore_rng``.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch

from ..errors import FormatError, MLMFError

TENSOR, TUPLE, ITEMS, FLOAT = "$tensor", "$tuple", "$items", "$float"
_TAGS = (TENSOR, TUPLE, ITEMS, FLOAT)
_KEYS = (bool, int, float, str)  # dict keys a skeleton may hold (and None)


def split_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into (JSON-able skeleton, ``name -> tensor``).

    Args:
        obj: dicts, lists, tuples, str, int, float, bool, None and tensors, nested.
        prefix: prepended to tensor names (names are the ``/``-joined key path).

    Returns:
        The skeleton (tensors replaced by ``{"$tensor": name}``) and the tensors, detached on CPU.

    Raises:
        MLMFError: a value of another type, naming its key path.

    Example:
        >>> skel, tensors = split_state(optimizer.state_dict())  # doctest: +SKIP
    """
    tensors: dict[str, torch.Tensor] = {}
    return _split(obj, prefix, tensors), tensors


def _split(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = path or "tensor"
        while name in tensors:  # key paths are unique unless keys contain "/"
            name += "'"
        tensors[name] = obj.detach().to("cpu")
        return {TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {FLOAT: repr(obj)}
    if isinstance(obj, (list, tuple)):
        items = [_split(v, f"{path}/{i}" if path else str(i), tensors) for i, v in enumerate(obj)]
        return {TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        def sub(k: Any) -> str:
            return f"{path}/{k}" if path else str(k)

        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _split(v, sub(k), tensors) for k, v in obj.items()}
        for k in obj:
            if k is not None and not isinstance(k, (bool, int, float, str)):
                raise MLMFError(f"state key {sub(k)!r} has type {type(k).__name__}; "
                                "expected str, int, float, bool or None")
        return {ITEMS: [[k, _split(v, sub(k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, np.ndarray):
        return _split(torch.from_numpy(np.ascontiguousarray(obj)), path, tensors)
    if isinstance(obj, np.generic):
        return _split(obj.item(), path, tensors)
    raise MLMFError(
        f"state entry {path or '<root>'!r} has type {type(obj).__name__}, which cannot be "
        "stored without pickle; expected tensors, numbers, strings, lists, tuples or dicts"
    )


def join_state(skeleton: Any, tensors: dict[str, torch.Tensor], source: Any = None) -> Any:
    """Rebuild the state that ``split_state`` took apart.

    Args:
        skeleton: the JSON skeleton.
        tensors: the tensors it refers to.
        source: the file the skeleton came from, for error messages.

    Returns:
        The nested state, with tuples, integer keys and non-finite floats restored.

    Raises:
        FormatError: a reference to a missing tensor or a malformed tag, naming ``source``.
    """
    if isinstance(skeleton, list):
        return [join_state(v, tensors, source) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if len(skeleton) == 1:
        (tag, value), = skeleton.items()
        if tag == TENSOR:
            if not isinstance(value, str):
                raise FormatError(f"malformed {TENSOR} entry: {str(value)[:80]} (expected a "
                                  "tensor name)", source)
            if value not in tensors:
                raise FormatError(f"state refers to tensor {value!r}, which the file lacks", source)
            return tensors[value]
        if tag == TUPLE and isinstance(value, list):
            return tuple(join_state(v, tensors, source) for v in value)
        if tag == FLOAT and value in ("inf", "-inf", "nan"):
            return float(value)
        if tag == ITEMS and isinstance(value, list) and all(  # keys as split_state writes them
            isinstance(p, list) and len(p) == 2 and (p[0] is None or type(p[0]) in _KEYS)
            for p in value
        ):
            return {k: join_state(v, tensors, source) for k, v in value}
        if tag in _TAGS:
            raise FormatError(f"malformed {tag} entry: {str(value)[:80]}", source)
    return {k: join_state(v, tensors, source) for k, v in skeleton.items()}


def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The state of every global random generator, as (JSON part, tensors).

    Returns:
        Python's ``random`` and numpy's legacy global state as JSON; torch's CPU
        generator (and each CUDA device's, when CUDA is initialized) as uint8 tensors.
    """
    version, internal, gauss = random.getstate()
    algo, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    doc: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {"algorithm": algo, "keys": [int(k) for k in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return doc, tensors


def restore_rng(doc: Any, tensors: dict[str, torch.Tensor], source: Any = None) -> None:
    """Put back the generator states that ``capture_rng`` returned.

    Every state is first set on a scratch generator of its kind, so a malformed one is
    refused before any global generator has changed.

    Raises:
        FormatError: missing or malformed entries, naming ``source``.
    """
    try:
        py, nps = doc["python"], doc["numpy"]
        gauss = py["gauss_next"]
        state = (int(py["version"]), tuple(int(x) for x in py["state"]),
                 None if gauss is None else float(gauss))
        np_state = (str(nps["algorithm"]), np.asarray(nps["keys"], dtype=np.uint32),
                    int(nps["pos"]), int(nps["has_gauss"]), float(nps["cached_gaussian"]))
        cpu = tensors["torch"]
        random.Random().setstate(state)
        np.random.RandomState().set_state(np_state)
        torch.Generator().set_state(cpu)
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError, IndexError) as e:
        raise FormatError(f"RNG state is incomplete or malformed ({str(e)[:200]})",
                          source) from None
    random.setstate(state)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
