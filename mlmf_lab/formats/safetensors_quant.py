"""``int8`` and ``int4`` weights inside safetensors files: the layout written and read here.

GGUF has no type for the ``int8``/``int4`` schemes, so ``save_state_dict(..., "x.safetensors",
quant="int8")`` keeps them in safetensors, as plain tensors any safetensors reader can load:

- ``int8`` (per output channel, symmetric): ``<name>`` int8 codes ``(rows, cols)`` and
  ``<name>_scale`` float32 ``(rows, 1)``; ``w = codes * scale``. These are the names, dtypes
  and shapes compressed-tensors uses for channel-wise int8 weights.
- ``int4`` (per group, asymmetric): ``<name>`` uint8 ``(rows, cols // 2)``, two codes per byte
  (even column in the low nibble); ``<name>_scale`` and ``<name>_zero`` bfloat16
  ``(rows, cols // group_size)``; ``w = (code - 8) * scale + zero``.

A weight of more than two dimensions is stored as the 2-D matrix the scheme works on
(int8: ``(shape[0], rest)``; int4: ``(rest, shape[-1])``). The header's ``__metadata__`` lists
the quantized tensors under ``mlmf.quant``, a JSON object ``{name: {"scheme": "int4",
"shape": [...], "dtype": "bfloat16", "group_size": 128}}``. ``open_weights`` then shows one
tensor per quantized name, with its logical shape, the dtype it was saved from, and
``quant="int8"``; ``tensor()`` dequantizes to that dtype and ``raw()`` gives the ``QTensor``.
Each part's dtype and shape is checked against the scheme, so a damaged file gets a
``FormatError``.

A Hugging Face sharded folder (``save_state_dict(..., "out/", quant="int4")``) is a set of
such files: a weight's parts share its shard, and the index lists every stored name (as the
indexes of compressed-tensors checkpoints do). No ``config.json`` is written: transformers
or vLLM would need a ``quantization_config`` there to read the int8 codes as such.

As in GGUF, only floating-point tensors of two or more dimensions are quantized (norms and
biases keep their dtype); for ``int4``, only those whose last dimension divides into groups.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import FormatError, MLMFError, UnsupportedError
from ..files import loads_json
from ..progress import bar
from ..quant.base import QTensor, quantize
from ..quant.intx import DEFAULT_GROUP_SIZE
from .base import TensorInfo, check_extent, dtype_name
from .metadata import QUANT_KEY

SCHEMES = ("int8", "int4")
FLOAT_NAMES = ("float32", "float16", "bfloat16", "float64")  # dtypes a weight is saved from


class Part(NamedTuple):
    """One stored tensor of a quantized weight: its key, dtype and shape in the file."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class QuantEntry(NamedTuple):
    """One quantized weight: its scheme, logical shape and dtype, and where its parts are."""

    scheme: str
    shape: tuple[int, ...]
    options: dict[str, Any]
    data: Part
    params: dict[str, Part]  # QTensor parameter name -> part
    dtype: str = "float32"  # what tensor() returns: the dtype the weight was saved from
    stored: tuple[TensorInfo, ...] = ()  # the parts as the file holds them (data first)


def entry_for(
    name: str, scheme: str, shape: tuple[int, ...], options: dict[str, Any]
) -> QuantEntry:
    """The parts a weight of ``shape`` takes under ``scheme`` (the layout above)."""
    if scheme == "int8":
        rows = shape[0]
        cols = math.prod(shape[1:])
        return QuantEntry(scheme, shape, {}, Part(name, torch.int8, (rows, cols)),
                          {"scale": Part(f"{name}_scale", torch.float32, (rows, 1))})
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    groups = (rows, cols // int(options["group_size"]))
    return QuantEntry(scheme, shape, dict(options), Part(name, torch.uint8, (rows, cols // 2)),
                      {"scale": Part(f"{name}_scale", torch.bfloat16, groups),
                       "zero": Part(f"{name}_zero", torch.bfloat16, groups)})


def _fits(t: torch.Tensor, scheme: str, group_size: int) -> bool:
    if dtype_name(t.dtype) not in FLOAT_NAMES or t.dim() < 2 or t.numel() == 0:
        return False
    return scheme == "int8" or t.shape[-1] % group_size == 0


def _scheme(quant: str, path: Path) -> tuple[str, dict[str, Any]]:
    scheme = str(quant).lower()
    if scheme not in SCHEMES:  # save_state_dict refuses it first, naming the other formats
        raise UnsupportedError(f"safetensors takes quant {', '.join(SCHEMES)}, not {quant!r}",
                               path)
    return scheme, ({"group_size": DEFAULT_GROUP_SIZE} if scheme == "int4" else {})


def stored_parts(
    tensors: dict[str, torch.Tensor], quant: str, path: Path, taken: Iterable[str] = ()
) -> dict[str, list[Part]]:
    """What each tensor is stored as under ``quant``: its parts, or itself if it stays float.

    Raises ``MLMFError`` when a part would take the name of another tensor (or of one of
    ``taken``, the tied names).
    """
    scheme, options = _scheme(quant, path)
    names = set(tensors) | set(taken)
    out: dict[str, list[Part]] = {}
    for name, t in tensors.items():
        if not _fits(t, scheme, DEFAULT_GROUP_SIZE):
            out[name] = [Part(name, t.dtype, tuple(t.shape))]
            continue
        entry = entry_for(name, scheme, tuple(t.shape), options)
        for pname, part in entry.params.items():
            if part.key in names:
                raise MLMFError(f"cannot quantize {name!r}: the file would need the name "
                                f"{part.key!r} for its {pname}, which another tensor has", path)
        out[name] = [entry.data, *entry.params.values()]
    return out


def check_finite(tensors: dict[str, torch.Tensor], layout: dict[str, list[Part]],
                 quant: str, path: Path) -> None:
    """Refuse inf/nan in the tensors ``layout`` quantizes, before a save writes anything."""
    for name, parts in layout.items():
        if len(parts) > 1 and not bool(torch.isfinite(tensors[name]).all()):
            raise MLMFError(f"tensor {name!r} holds inf or nan values; {quant} cannot hold "
                            "them (save without quant, or clean the tensor)", path)


def part_nbytes(part: Part) -> int:
    return math.prod(part.shape) * part.dtype.itemsize


def quantize_parts(
    tensors: dict[str, torch.Tensor], quant: str, path: Path, taken: Iterable[str] = ()
) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors to write (quantized ones as their parts) and the ``mlmf.quant`` header value.

    ``taken``: other names in the file (tied names), which no part may take.
    """
    scheme, options = _scheme(quant, path)
    out: dict[str, torch.Tensor] = {}
    listed: dict[str, dict[str, Any]] = {}
    todo = {n for n, parts in stored_parts(tensors, quant, path, taken).items() if len(parts) > 1}
    for name, t in bar(tensors.items(), progress=len(todo) >= 8, desc="quantizing", leave=False):
        if name not in todo:
            out[name] = t
            continue
        try:  # quantize refuses inf/nan itself: say which tensor, in which file
            qt = quantize(t.detach().to("cpu"), scheme, **options)
        except MLMFError as e:
            raise MLMFError(f"tensor {name!r}: {e.message} (save without quant, or clean the "
                            "tensor)", path) from None
        entry = entry_for(name, scheme, tuple(t.shape), options)
        out[name] = qt.data
        for pname, part in entry.params.items():
            out[part.key] = qt.params[pname].reshape(part.shape)
        listed[name] = {"scheme": scheme, "shape": list(t.shape), "dtype": dtype_name(t.dtype),
                        **options}
    return out, json.dumps(listed, sort_keys=True)


def read_entries(
    raw: str, infos: dict[str, TensorInfo], path: Path
) -> tuple[dict[str, TensorInfo], dict[str, QuantEntry]]:
    """Check the ``mlmf.quant`` listing against the file; (logical infos, entries by name)."""
    listed = loads_json(raw, path, QUANT_KEY)
    if not isinstance(listed, dict):
        raise FormatError(f"{QUANT_KEY} must be a JSON object of tensor name -> layout", path)
    entries = {name: _entry(name, spec, infos, path) for name, spec in listed.items()}
    parts = {p.key for e in entries.values() for p in e.params.values()}
    out: dict[str, TensorInfo] = {}
    for name, info in infos.items():
        if name in parts:
            continue
        entry = entries.get(name)
        if entry is not None:
            stored = (info, *(infos[p.key] for p in entry.params.values()))
            entries[name] = entry._replace(stored=stored)
            info = TensorInfo(name, entry.shape, entry.dtype, sum(i.nbytes for i in stored),
                              info.file, info.offset, entry.scheme)
        out[name] = info
    return out, entries


def _entry(name: str, spec: Any, infos: dict[str, TensorInfo], path: Path) -> QuantEntry:
    where = f"{QUANT_KEY} entry {name!r}"
    if not isinstance(spec, dict) or spec.get("scheme") not in SCHEMES:
        raise FormatError(f"{where}: expected an object with scheme one of "
                          f"{', '.join(SCHEMES)}, found {spec!r}", path)
    known = {"scheme", "shape", "dtype"} | ({"group_size"} if spec["scheme"] == "int4" else set())
    if set(spec) - known:
        raise FormatError(f"{where}: unknown keys {sorted(set(spec) - known)}; "
                          f"{spec['scheme']} takes {', '.join(sorted(known))}", path)
    dtype = spec.get("dtype", "float32")
    if dtype not in FLOAT_NAMES:
        raise FormatError(f"{where}: dtype {dtype!r} is not one of "
                          f"{', '.join(FLOAT_NAMES)}", path)
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) < 2 or not all(
        type(d) is int and d > 0 for d in shape
    ):
        raise FormatError(f"{where}: shape {shape!r} is not a list of 2+ positive sizes", path)
    check_extent(name, shape, path)
    options: dict[str, Any] = {}
    if spec["scheme"] == "int4":
        g = spec.get("group_size")
        if type(g) is not int or g < 2 or g % 2 or shape[-1] % g:
            raise FormatError(f"{where}: group_size {g!r} must be even and divide the last "
                              f"dimension ({shape[-1]})", path)
        options["group_size"] = g
    entry = entry_for(name, spec["scheme"], tuple(shape), options)._replace(dtype=dtype)
    for part in (entry.data, *entry.params.values()):
        info = infos.get(part.key)
        if info is None:
            raise FormatError(f"{where}: the tensor {part.key!r} it needs is missing", path)
        if info.dtype != dtype_name(part.dtype) or tuple(info.shape) != part.shape:
            raise FormatError(
                f"{where}: {part.key!r} is {info.dtype} {list(info.shape)}, expected "
                f"{dtype_name(part.dtype)} {list(part.shape)} for {spec['scheme']} "
                f"of shape {shape}", path)
    return entry


def assemble(entry: QuantEntry, get: Callable[[str], torch.Tensor]) -> QTensor:
    """The ``QTensor`` of ``entry`` from its parts; ``get(key)`` reads one stored tensor."""
    params = {p: get(part.key) for p, part in entry.params.items()}
    if entry.scheme == "int8":
        params["scale"] = params["scale"].reshape(-1)
    return QTensor(entry.scheme, entry.shape, get(entry.data.key), params, dict(entry.options))


__all__ = [
    "SCHEMES", "Part", "QuantEntry", "assemble", "check_finite", "entry_for", "part_nbytes",
    "quantize_parts", "read_entries", "stored_parts",
]
