"""The registry of weight-file formats: detection by content, highest priority first.

Adding a format means writing one module that calls ``register_format`` (and
``register_writer`` if it can write) and importing it in ``formats/__init__``. Detectors
are tried by falling ``priority`` (ties by name), never in import order, so the order of
the imports cannot change which format a file opens as.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import events
from ..errors import FormatError, MLMFError, UnsupportedError
from ..files import open_regular
from .base import WeightFile, dtype_name

HEAD_BYTES = 64


class Format(NamedTuple):
    """One registered reader. ``detect(path, head)`` looks at content, never at the name.

    ``detect`` sees a folder (with ``head=b""``) before it is resolved to a file inside it,
    so a format stored as a folder (DCP) can claim it.

    ``priority``: detectors are tried from the highest; the strict structural checks
    (magic bytes) above the loose ones (a pickle's first byte).

    ``readers``: the values ``open(path, reader=...)`` accepts, for a format that can be
    read more than one way (GGUF: ``"mlmf"``, ``"gguf"``); empty = ``open(path)`` only.
    """

    name: str
    detect: Callable[[Path, bytes], bool]
    open: Callable[..., WeightFile]
    priority: int
    readers: tuple[str, ...] = ()


class Writer(NamedTuple):
    """One registered writer, chosen by the target's suffix (``""`` = a folder).

    ``save(tensors, path, metadata=, max_shard_size=, quant=)`` writes atomically and
    returns ``{file name: sha256}`` for every file it wrote (names relative to ``path``'s
    folder for a file, to ``path`` for a folder).

    ``quants``: the ``quant=`` schemes it can store (``save_state_dict`` refuses the others,
    naming the writers that take them). ``folder``: it writes a folder, so an existing
    folder named with its suffix is its to replace (any other existing folder gets the
    HF layout, the ``""`` writer).
    """

    name: str
    suffix: str
    save: Callable[..., dict[str, str]]
    quants: tuple[str, ...] = ()
    folder: bool = False


FORMATS: list[Format] = []
WRITERS: dict[str, Writer] = {}


def register_format(fmt: Format) -> None:
    """Add (or replace, by name) a format; ``FORMATS`` stays in detection order."""
    FORMATS[:] = sorted([f for f in FORMATS if f.name != fmt.name] + [fmt],
                        key=lambda f: (-f.priority, f.name))


def register_writer(writer: Writer) -> None:
    WRITERS[writer.suffix] = writer


HF_NAMES = ("model.safetensors", "model.safetensors.index.json")  # from_pretrained's order


def _head(path: Path) -> bytes:
    with open_regular(path) as f:  # a FIFO would block open() forever
        try:
            return f.read(HEAD_BYTES)
        except OSError as e:
            raise MLMFError(f"cannot read the file ({e.strerror})", path) from None


def _first(path: Path, head: bytes) -> Format | None:
    return next((fmt for fmt in FORMATS if fmt.detect(path, head)), None)


def locate(path: str | os.PathLike[str]) -> tuple[Format, Path]:
    """The format of ``path`` and what to open: the folder itself for a format stored as a
    folder (DCP), else the file (a folder resolves to the weight file or index inside it).

    A folder with transformers' names (``model.safetensors``, else
    ``model.safetensors.index.json``) opens those, whatever else it holds (adapters, other
    exports); any other folder must hold a single weight file or index.

    Raises:
        MLMFError: missing path, or a folder with no single weight file.
        FormatError: an empty file. UnsupportedError: content no format accepts.
    """
    p = Path(path)
    if not p.exists():
        raise MLMFError("no such file or folder", p)
    if p.is_dir():
        fmt = _first(p, b"")
        if fmt is not None:
            return fmt, p
        p = _weight_file_in(p)
    head = _head(p)
    if not head:
        raise FormatError("the file is empty; expected a weight file", p)
    fmt = _first(p, head)
    if fmt is None:
        names = ", ".join(f.name for f in FORMATS)
        raise UnsupportedError(
            f"not a weight file this lab knows (first bytes {head[:8]!r}); supported: {names}", p
        )
    return fmt, p


def _weight_file_in(folder: Path) -> Path:
    for name in HF_NAMES:  # transformers' own names first, as from_pretrained looks
        if (folder / name).is_file():
            return folder / name
    candidates = (sorted(folder.glob("*.safetensors.index.json"))
                  or sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.gguf"))
                  or sorted(folder.glob("*.bin")))
    if len(candidates) != 1:
        found = ", ".join(c.name for c in candidates) or "no weight file"
        raise MLMFError(
            "a folder must hold exactly one weight file or one *.index.json; "
            f"found {found}. Pass the file itself.",
            folder,
        )
    return candidates[0]


def resolve(path: str | os.PathLike[str]) -> Path:
    """What ``open_weights(path)`` opens: the file (or DCP folder) ``locate`` finds."""
    return locate(path)[1]


def detect(path: str | os.PathLike[str]) -> Format:
    """The registered format whose detector accepts this file's content."""
    return locate(path)[0]


def open_weights(path: str | os.PathLike[str], reader: str | None = None) -> WeightFile:
    """Open a weight file lazily: headers only, tensors read on demand from a memory map.

    Args:
        path: a ``.safetensors`` file, an HF ``*.safetensors.index.json`` (or the folder
            holding either), a ``.gguf`` file, a PyTorch ``.bin``/``.pt`` file, or a PyTorch
            DCP folder.
        reader: GGUF files only, which header reader to use: ``"mlmf"`` (our checked,
            fast parser; the default) or ``"gguf"`` (the gguf package's ``GGUFReader``,
            much slower on real vocabularies, run after our parser has checked the file).
            Both give the same result on a valid file. ``None`` takes the default.

    Returns:
        A ``WeightFile``: iterate for names, ``.info(name)``, ``.tensor(name)``, ``.metadata``.

    Raises:
        MLMFError: missing, malformed or unsupported files (the message names the file).
        UnsupportedError: ``reader`` given for a file that is not GGUF, or an unknown
            ``reader``; the message lists the accepted values.

    Example:
        >>> with ml.open_weights("model.safetensors") as wf:  # doctest: +SKIP
        ...     w = wf.tensor("embeddings.word_embeddings.weight")
        >>> wf = ml.open_weights("model.gguf", reader="gguf")  # doctest: +SKIP
    """
    fmt, p = locate(path)
    if reader is None:
        return fmt.open(p)
    if not fmt.readers:
        choices = "; ".join(f"{f.name}: {', '.join(map(repr, f.readers))}"
                            for f in FORMATS if f.readers)
        raise UnsupportedError(
            f"reader={reader!r} chooses how a file is read where there is a choice "
            f"({choices}), but this is a {fmt.name} file; drop reader= to open it",
            p,
        )
    return fmt.open(p, reader=reader)


def load_state_dict(
    path: str | os.PathLike[str], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of a weight file, memory-mapped (cast only when ``dtype`` is given)."""
    with events.activity("load", used=[path], params={"dtype": _dtype_param(dtype)}) as act:
        out = open_weights(path).state_dict(dtype)
        act.generated.append(out)
    return out


def _quant_refusal(writer: Writer, quant: str) -> str:
    takes = (f"it takes {', '.join(writer.quants)}" if writer.quants
             else "it stores no quantized weights")
    elsewhere = [f"{w.suffix} files" if w.suffix else "a folder (HF sharded layout)"
                 for w in _writers() if quant.lower() in w.quants]
    where = f"; {quant} goes into {' or '.join(elsewhere)}" if elsewhere else ""
    return f"{writer.name} cannot store quant={quant!r}; {takes}{where}"


def _writers() -> list[Writer]:
    """The writers as messages list them: by suffix, the folder (HF layout) last."""
    return sorted(WRITERS.values(), key=lambda w: (not w.suffix, w.suffix))


def _dtype_param(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else dtype_name(dtype)


def save_state_dict(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
    quant: str | None = None,
) -> dict[str, str]:
    """Save tensors atomically; the format follows the suffix, a folder gets the HF layout.

    Args:
        tensors: name -> tensor. Tensors sharing storage (tied weights) are written once.
        path: ``x.safetensors``, ``x.gguf``, ``x.dcp`` (a PyTorch DCP folder), or a folder
            (HF sharded layout).
        metadata: any JSON-able values; non-strings round-trip through JSON.
        max_shard_size: bytes or ``"500MB"``-style; folders only.
        quant: quantize the floating-point weights (2-D and up) as they are written: a GGUF
            block type (``"q8_0"``, ``"q4_k"``, ...) into ``.gguf``, ``"int8"`` or
            ``"int4"`` into ``.safetensors`` or a folder (see ``safetensors_quant``).

    Returns:
        ``{file name: sha256}`` of every file written (relative to a folder target).

    Raises:
        MLMFError: unknown suffix, bad tensors or metadata.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_dir() and not (suffix in WRITERS and WRITERS[suffix].folder):
        suffix = ""
    writer = WRITERS.get(suffix)
    if writer is None:
        known = ", ".join(repr(w.suffix) if w.suffix else "a folder" for w in _writers())
        raise UnsupportedError(f"cannot write {suffix!r} files; supported: {known}", p)
    if not isinstance(tensors, dict) or not all(
        isinstance(t, torch.Tensor) for t in tensors.values()
    ):
        raise MLMFError("expected a dict of name -> torch.Tensor", p)
    if quant is not None and str(quant).lower() not in writer.quants:
        raise UnsupportedError(_quant_refusal(writer, str(quant)), p)
    params = {"format": writer.name, "quant": quant, "max_shard_size": max_shard_size}
    with events.activity("save", used=[tensors], params=params) as act:
        sums = writer.save(tensors, p, metadata=metadata, max_shard_size=max_shard_size,
                           quant=quant)
        act.generated.append(p)
    return sums
