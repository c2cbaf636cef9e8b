"""The two sides of a comparison: anything the lab opens, matched tensor by tensor.

A side is a path (any file or folder ``ml.open_weights`` reads), an open ``WeightFile``, a
state dict or an ``nn.Module``. Names are matched as they are; when one side is a GGUF file
in llama.cpp's layout and the other is not, the GGUF is seen under the other side's names
through ``formats.gguf_hf.model_view`` (``gguf``'s own tensor-name tables, llama's Q/K rows
put back), so a Hugging Face model and its GGUF conversion match tensor by tensor.

Reading is one tensor at a time. A plain safetensors tensor is read with ``readinto`` into
memory of its own, not through the memory map, so the pages of a 1 GiB file do not stay
resident (and count in the process's RSS) once the tensor is compared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import MLMFError
from ..formats import open_weights
from ..formats.base import WeightFile
from ..formats.gguf_arch import ARCHS
from ..formats.gguf_hf import llama_arch, model_view
from ..formats.gguf_model import model_type


class Side:
    """One side: its label, tensor names and shapes, the architecture it declares, a reader.

    ``arch`` is llama.cpp's architecture name for files (GGUF metadata, or the
    ``model_type`` of a ``config.json`` beside them) and ``"class <name>"`` for modules;
    only declarations of the same kind are compared.
    """

    def __init__(self, label: str, shapes: dict[str, tuple[int, ...]], arch: str | None,
                 wf: WeightFile | None = None,
                 tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        self.label, self.shapes, self.arch = label, shapes, arch
        self._wf, self._tensors = wf, tensors
        self.owned = False  # whether close() closes the file (we opened it)

    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (dequantized), in memory that is released once dropped."""
        if self._tensors is not None:
            return self._tensors[name]
        assert self._wf is not None
        return read_private(self._wf, name)

    def close(self) -> None:
        if self.owned and self._wf is not None:
            self._wf.close()


def read_private(wf: WeightFile, name: str) -> torch.Tensor:
    """``wf.tensor(name)``, read into fresh memory where the layout allows (plain safetensors).

    Other formats go through their reader (GGUF blocks are dequantized into new memory
    anyway; only their quantized bytes are touched in the map).
    """
    info = wf.info(name)
    dtype = info.torch_dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    if wf.format != "safetensors" or info.quant is not None or \
            info.nbytes != info.numel * itemsize:
        return wf.tensor(name)
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        got = f.readinto(buf.numpy().data)
    if got != info.nbytes:
        raise MLMFError(f"tensor {name!r}: expected {info.nbytes} bytes at offset "
                        f"{info.offset}, the file has {got}", info.file)
    return buf.view(dtype).reshape(info.shape)


def _file_arch(wf: WeightFile, path: Path | None) -> str | None:
    """llama.cpp's architecture name a file declares (GGUF metadata or a config.json)."""
    declared = wf.metadata.get("general.architecture") if wf.format == "gguf" else None
    if isinstance(declared, str):
        return declared
    kind = model_type(path) if path is not None else None
    if kind is None:
        return None
    return ARCHS[kind].name if kind in ARCHS else kind


def open_side(x: Any, label: str | None = None) -> Side:
    """A ``Side`` for ``x``: a path, a ``WeightFile``, a state dict or an ``nn.Module``.

    Raises:
        MLMFError: ``x`` is none of these, or the file cannot be opened (naming it).
    """
    if isinstance(x, nn.Module):
        state = x.state_dict()
        return Side(label or type(x).__name__, {k: tuple(v.shape) for k, v in state.items()},
                    f"class {type(x).__name__}", tensors=state)
    if isinstance(x, Mapping):
        bad = [k for k, v in x.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise MLMFError(f"a state dict to compare maps names to tensors; {bad[0]!r} is a "
                            f"{type(x[bad[0]]).__name__}")
        return Side(label or "state dict", {k: tuple(v.shape) for k, v in x.items()}, None,
                    tensors=x)
    if isinstance(x, WeightFile):
        return Side(label or os.fspath(x.path), {i.name: i.shape for i in x.infos()},
                    _file_arch(x, Path(x.path)), wf=x)
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        wf = open_weights(path)
        side = Side(label or os.fspath(x), {i.name: i.shape for i in wf.infos()},
                    _file_arch(wf, path), wf=wf)
        side.owned = True
        return side
    raise MLMFError(f"cannot compare a {type(x).__name__}: expected a path, an open weight "
                    "file, a state dict or an nn.Module")


def match(a: Side, b: Side) -> tuple[Side, Side]:
    """The two sides under common names (a llama.cpp GGUF seen under the other's names).

    Raises:
        MLMFError: the sides declare different architectures, or share no tensor name.
    """
    if a.arch is not None and b.arch is not None and a.arch != b.arch and \
            a.arch.startswith("class ") == b.arch.startswith("class "):
        raise MLMFError(f"different architectures: {a.label} is {a.arch!r}, {b.label} is "
                        f"{b.arch!r}; compare models of the same architecture")
    for one, other in ((a, b), (b, a)):
        wf = one._wf
        if wf is not None and llama_arch(wf) is not None and \
                (other._wf is None or llama_arch(other._wf) is None):
            view = model_view(wf, other.names)
            one._wf = view
            one.shapes = {i.name: i.shape for i in view.infos()}
    if not set(a.shapes) & set(b.shapes):
        raise MLMFError(f"no tensor name in common: {a.label} has {_some(a.names)}, "
                        f"{b.label} has {_some(b.names)}")
    return a, b


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return f"{len(names)} tensors ({shown}{', ...' if len(names) > 3 else ''})"


__all__ = ["Side", "match", "open_side", "read_private"]
