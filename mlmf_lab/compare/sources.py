"""The two sides of a comparison: anything the lab opens, matched tensor by tensor.

A side is a path (any file or folder ``ml.open_weights`` reads), an open ``WeightFile``, a
state dict, an ``nn.Module``, or a kind that a capability above registers with
``register_kind`` (first match wins, before the built-in ones): ``checkpoint/compare_side.py``
adds a checkpoint step, a step folder or a ``CheckpointRecord``, whose weight files are
verified against its manifest. (This package cannot import ``checkpoint``, whose manager
diffs with ``compare``. ``mlmf_lab/__init__`` imports ``checkpoint``, and Python runs it
before any ``mlmf_lab`` submodule, so the kind is registered wherever ``compare`` is used.)

Names are matched as they are; when one side is a GGUF file in llama.cpp's layout and the
other is not, the GGUF is seen under the other side's names through
``formats.gguf_hf.model_view`` (``gguf``'s own tensor-name tables, llama's Q/K rows put back),
so a Hugging Face model and its GGUF conversion match tensor by tensor.

Architectures: files declare theirs (GGUF metadata, the ``model_type`` of a ``config.json``
beside them), modules through a transformers ``config.model_type``; both are compared under
llama.cpp's names (``mistral`` is ``llama``). Two modules are also accepted when one's class
derives from the other's (a user subclass of ``LlamaForCausalLM``), and, when they declare no
common model type, when their tensors agree (one's names a subset of the other's, the shared
ones of equal shapes). A file is not checked against a module: a transformers class such as
``CLIPTextModel`` declares another ``model_type`` than the folder it was loaded from.

Reading is one tensor at a time. A plain safetensors tensor is read with ``readinto`` into
memory of its own, not through the memory map, so the pages of a 1 GiB file do not stay
resident (and count in the process's RSS) once the tensor is compared.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
    """One side: its label, tensor names and shapes, what it declares, a reader.

    ``arch`` is the architecture declared (llama.cpp's name, see the module docstring),
    ``cls`` the class of a module side (None for files and state dicts).
    """

    def __init__(self, label: str, shapes: dict[str, tuple[int, ...]], arch: str | None,
                 wf: WeightFile | None = None,
                 tensors: Mapping[str, torch.Tensor] | None = None,
                 cls: type | None = None) -> None:
        self.label, self.shapes, self.arch, self.cls = label, shapes, arch, cls
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


@dataclass(frozen=True)
class SourceKind:
    """A kind of side that a capability above ``compare`` registers (``register_kind``).

    Attributes:
        name: how error messages list it ("a checkpoint step (...)").
        claims: whether a value is of this kind (cheap; no checksum here).
        open: the value's weights, opened (and checked as its capability checks them),
            and its default label; the side closes the file.
    """

    name: str
    claims: Callable[[Any], bool]
    open: Callable[[Any], tuple[WeightFile, str]]


KINDS: dict[str, SourceKind] = {}


def register_kind(kind: SourceKind) -> None:
    """Teach ``open_side`` a kind of side; tried before the built-in ones, in order."""
    KINDS[kind.name] = kind


def _arch_name(kind: str) -> str:
    """llama.cpp's name for a ``model_type`` (``mistral`` -> ``llama``), else itself."""
    return ARCHS[kind].name if kind in ARCHS else kind


def _file_arch(wf: WeightFile, path: Path | None) -> str | None:
    """The architecture a file declares (GGUF metadata or a config.json)."""
    declared = wf.metadata.get("general.architecture") if wf.format == "gguf" else None
    if isinstance(declared, str):
        return declared
    kind = model_type(path) if path is not None else None
    return None if kind is None else _arch_name(kind)


def _module_arch(module: nn.Module) -> str | None:
    """The architecture a module declares: its transformers ``config.model_type``."""
    kind = getattr(getattr(module, "config", None), "model_type", None)
    return _arch_name(kind) if isinstance(kind, str) and kind else None


def _file_side(wf: WeightFile, label: str, owned: bool) -> Side:
    side = Side(label, {i.name: i.shape for i in wf.infos()}, _file_arch(wf, Path(wf.path)),
                wf=wf)
    side.owned = owned
    return side


def open_side(x: Any, label: str | None = None) -> Side:
    """A ``Side`` for ``x``: a registered kind, a path, a ``WeightFile``, a state dict or an
    ``nn.Module``.

    Raises:
        MLMFError: ``x`` is none of these (the message lists them), or the file cannot be
            opened or fails its check (naming it).
    """
    for kind in KINDS.values():
        if kind.claims(x):
            wf, default = kind.open(x)
            return _file_side(wf, label or default, owned=True)
    if isinstance(x, nn.Module):
        state = x.state_dict()
        return Side(label or type(x).__name__, {k: tuple(v.shape) for k, v in state.items()},
                    _module_arch(x), tensors=state, cls=type(x))
    if isinstance(x, Mapping):
        bad = [k for k, v in x.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise MLMFError(f"a state dict to compare maps names to tensors; {bad[0]!r} is a "
                            f"{type(x[bad[0]]).__name__}")
        return Side(label or "state dict", {k: tuple(v.shape) for k, v in x.items()}, None,
                    tensors=x)
    if isinstance(x, WeightFile):
        return _file_side(x, label or os.fspath(x.path), owned=False)
    if isinstance(x, (str, os.PathLike)):
        return _file_side(open_weights(Path(x)), label or os.fspath(x), owned=True)
    kinds = ["a path", "an open weight file", "a state dict", "an nn.Module",
             *(k.name for k in KINDS.values())]
    raise MLMFError(f"cannot compare a {type(x).__name__}: expected {', '.join(kinds[:-1])} "
                    f"or {kinds[-1]}")


def check_architectures(a: Side, b: Side) -> None:
    """Refuse two sides that declare different architectures (see the module docstring).

    Raises:
        MLMFError: two files of different declared architectures; two modules of unrelated
            classes whose model types differ, or, with no common model type, whose tensors
            disagree (the message says which tensor).
    """
    if (a.cls is None) != (b.cls is None):
        return  # a file and a module: not comparable declarations
    if a.arch is not None and b.arch is not None and a.arch != b.arch and \
            not _related(a.cls, b.cls):
        raise MLMFError(f"different architectures: {a.label} is {a.arch!r}, {b.label} is "
                        f"{b.arch!r}; compare models of the same architecture")
    if a.cls is None or b.cls is None or _related(a.cls, b.cls) or \
            (a.arch is not None and a.arch == b.arch):
        return
    why = _tensor_difference(a, b)
    if why is not None:
        raise MLMFError(f"different architectures: {a.label} is class {a.cls.__name__}, "
                        f"{b.label} is class {b.cls.__name__} (neither derives from the other, "
                        f"no common model_type) and {why}; compare models of the same "
                        "architecture")


def _related(a: type | None, b: type | None) -> bool:
    """One class derives from the other, or both are one class defined twice (a notebook
    cell run again)."""
    if a is None or b is None:
        return False
    return issubclass(a, b) or issubclass(b, a) or \
        (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _tensor_difference(a: Side, b: Side) -> str | None:
    """How the two sides' tensors disagree, or None when one's names are a subset of the
    other's with the same shapes."""
    for name, shape in a.shapes.items():
        if name in b.shapes and b.shapes[name] != shape:
            return (f"{name!r} is {shape} in {a.label} and {b.shapes[name]} in {b.label}")
    only_a = [n for n in a.shapes if n not in b.shapes]
    only_b = [n for n in b.shapes if n not in a.shapes]
    if only_a and only_b:
        return (f"{a.label} has {len(only_a)} tensors {b.label} lacks ({only_a[0]!r}, ...) and "
                f"{b.label} has {len(only_b)} {a.label} lacks ({only_b[0]!r}, ...)")
    return None


def match(a: Side, b: Side) -> tuple[Side, Side]:
    """The two sides under common names (a llama.cpp GGUF seen under the other's names).

    Raises:
        MLMFError: different architectures (``check_architectures``), or no tensor name in
            common.
    """
    check_architectures(a, b)
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


__all__ = ["KINDS", "Side", "SourceKind", "check_architectures", "match", "open_side",
           "read_private", "register_kind"]
