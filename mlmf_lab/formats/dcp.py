"""PyTorch Distributed Checkpoint (DCP) folders, read and written like any other format.

``ml.open_weights(folder)`` opens a DCP folder (one written by any number of ranks; the
chunks of a tensor are reassembled by DCP's own loader) and ``ml.save_state_dict(tensors,
"x.dcp")`` writes one, so ``ml.convert`` and ``mlmf-lab convert`` go both ways.

DCP's ``.metadata`` file is a pickle; it is read with an unpickler that admits only
DCP's own record classes and torch dtypes/sizes, never arbitrary code, and every chunk it
lists is checked against the data files before anything is allocated. Tensor data is read
by DCP with ``torch.load(weights_only=True)``. Non-tensor entries (step counters, pickled
objects) are not loaded: their names are listed in the metadata under ``dcp_skipped``.
Other metadata travels in ``mlmf_metadata.json`` beside the data (DCP has no place for it).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..atomic import replacing_dir
from ..errors import FormatError, MLMFError, UnsafeFileError
from ..files import open_regular, read_json, sha256_file
from .base import TensorInfo, WeightFile, check_extent, dtype_name
from .pickle import torch_reason
from .registry import Format, Writer, register_format, register_writer

METADATA_FILE = ".metadata"
SIDE_METADATA = "mlmf_metadata.json"
SKIPPED_KEY = "dcp_skipped"
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeFileError(
            f"DCP metadata refers to {module}.{name}; only DCP's own records and torch "
            "dtypes are allowed in a checkpoint's .metadata", self.path)


def read_metadata(folder: str | os.PathLike[str]) -> Any:
    """DCP's ``Metadata`` record of ``folder``, unpickled safely and checked.

    Every tensor chunk must lie inside its tensor, and every stored chunk inside a data file
    of the folder, holding at least the chunk's bytes: a hostile ``.metadata`` cannot make a
    reader allocate more than the folder holds.

    Raises:
        FormatError: not a DCP folder, or a malformed ``.metadata``.
        UnsafeFileError: the pickle names other classes, or data files leave the folder.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    root = Path(folder)
    path = root / METADATA_FILE
    if not path.is_file():
        raise FormatError(f"not a DCP checkpoint: expected a {METADATA_FILE} file in the folder",
                          root)
    with open_regular(path, METADATA_FILE) as f:
        raw = f.read()  # small; unpickled from memory, so no length in it is allocated blindly
    try:
        md = _MetadataUnpickler(io.BytesIO(raw), path).load()
    except MLMFError:
        raise
    except Exception as e:  # damaged pickles fail in whatever the unpickler or a record raises
        raise FormatError(f"DCP metadata is not readable ({type(e).__name__}: "
                          f"{str(e)[:200]})", path) from None
    if not isinstance(md, Metadata) or not isinstance(
            getattr(md, "state_dict_metadata", None), dict):
        raise FormatError(f"DCP metadata holds a {type(md).__name__}, expected Metadata", path)
    for name, entry in md.state_dict_metadata.items():
        _check_record(name, entry, path)
    stored = _stored_chunks(md, root, path)
    for name, entry in md.state_dict_metadata.items():
        if hasattr(entry, "chunks"):
            _check_chunks(name, entry, stored, path)
    return md


def _sizes(x: Any) -> bool:
    """Whether ``x`` is a shape: a tuple (``torch.Size``) or list of non-negative ints."""
    return isinstance(x, tuple | list) and len(x) <= 64 and all(
        type(d) is int and d >= 0 for d in x)


def _check_record(name: Any, entry: Any, path: Path) -> None:
    """One entry of the metadata as DCP's loader will use it: a pickle can build the record
    classes with any fields (or none), so each field is checked before anything reads it."""
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        TensorStorageMetadata,
    )

    if isinstance(entry, BytesStorageMetadata) and isinstance(name, str):
        return
    chunks = getattr(entry, "chunks", None)
    size = getattr(entry, "size", None)
    if not (isinstance(name, str) and isinstance(entry, TensorStorageMetadata)
            and _sizes(size) and isinstance(getattr(getattr(entry, "properties", None),
                                                    "dtype", None), torch.dtype)
            and isinstance(chunks, list) and all(
                isinstance(c, ChunkStorageMetadata) and _sizes(getattr(c, "offsets", None))
                and _sizes(getattr(c, "sizes", None)) for c in chunks)):
        raise FormatError(f"DCP entry {str(name)[:80]!r} is malformed: expected a tensor "
                          "record with a size, a dtype and chunks of offsets and sizes", path)
    check_extent(name, list(entry.size), path)


def _stored_chunks(md: Any, root: Path, path: Path) -> dict[tuple[str, tuple[int, ...]], int]:
    """(tensor, chunk offsets) -> bytes stored for it; checks each entry against its file."""
    sizes: dict[str, int] = {}
    out: dict[tuple[str, tuple[int, ...]], int] = {}
    for index, info in (md.storage_data or {}).items():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or os.path.isabs(rel) or ".." in Path(rel).parts:
            raise UnsafeFileError(f"DCP data file {rel!r} escapes the checkpoint folder", path)
        if rel not in sizes:
            if not (root / rel).is_file():
                raise FormatError(f"DCP data file {rel!r} listed in {METADATA_FILE} is missing",
                                  root)
            sizes[rel] = (root / rel).stat().st_size
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not (type(offset) is int and type(length) is int and 0 <= offset
                and 0 <= length <= sizes[rel] - offset):
            raise FormatError(f"DCP chunk of {getattr(index, 'fqn', '?')!r} at [{offset}, "
                              f"+{length}] lies outside {rel} ({sizes[rel]} bytes)", path)
        key = (str(getattr(index, "fqn", "")), tuple(getattr(index, "offset", None) or ()))
        out[key] = length
    return out


def _check_chunks(name: str, entry: Any, stored: dict[tuple[str, tuple[int, ...]], int],
                  path: Path) -> None:
    shape = tuple(entry.size)
    itemsize = entry.properties.dtype.itemsize
    covered = 0
    for chunk in entry.chunks:
        offsets, sizes = tuple(chunk.offsets), tuple(chunk.sizes)
        if len(offsets) != len(shape) or len(sizes) != len(shape) or any(
                o < 0 or s < 0 or o + s > d for o, s, d in zip(offsets, sizes, shape, strict=True)):
            raise FormatError(f"DCP tensor {name!r} {list(shape)}: a chunk at {list(offsets)} "
                              f"of {list(sizes)} lies outside it", path)
        need = math.prod(sizes) * itemsize
        if need and stored.get((name, offsets), -1) < need:
            raise FormatError(f"DCP tensor {name!r}: the chunk at {list(offsets)} needs {need} "
                              "bytes, and no data file holds them", path)
        covered += math.prod(sizes)
    if covered != math.prod(shape):
        raise FormatError(f"DCP tensor {name!r} {list(shape)}: its chunks hold {covered} of "
                          f"{math.prod(shape)} elements", path)


class DCPFile(WeightFile):
    """A DCP folder: tensors listed from ``.metadata``, read by DCP on demand."""

    format = "dcp"

    def __init__(self, folder: Path) -> None:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        md = read_metadata(folder)
        where: dict[str, list[tuple[str, int, int]]] = {}
        for index, info in (md.storage_data or {}).items():
            where.setdefault(index.fqn, []).append(
                (os.fspath(folder / info.relative_path), info.offset, info.length))
        infos: dict[str, TensorInfo] = {}
        skipped: list[str] = []
        for name, entry in md.state_dict_metadata.items():
            if not isinstance(entry, TensorStorageMetadata):
                skipped.append(name)
                continue
            dtype = entry.properties.dtype
            file, offset, _ = (where.get(name) or [(os.fspath(folder), 0, 0)])[0]
            infos[name] = TensorInfo(name, tuple(entry.size), dtype_name(dtype),
                                     math.prod(entry.size) * dtype.itemsize, file, offset)
        meta = _side_metadata(folder)
        if skipped:
            meta[SKIPPED_KEY] = skipped
        super().__init__(path=folder, metadata=meta, _infos=infos)
        self._md: Any = md
        self._where = where

    def _load(self, names: list[str]) -> dict[str, torch.Tensor]:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        if self._md is None:
            raise self.closed_error(names[0])
        state = {n: torch.empty(self._infos[n].shape, dtype=self._infos[n].torch_dtype)
                 for n in names}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no process group: assuming a single process"
                dcp.load(state, storage_reader=_reader(self.path, self._md), no_dist=True)
        # DCP wraps what failed in a CheckpointException per rank (a BaseException)
        except (Exception, CheckpointException) as e:
            raise FormatError(f"DCP could not read the tensors ({_reason(e)})",
                              self.path) from None
        return state

    def _read(self, info: TensorInfo) -> torch.Tensor:
        return self._load([info.name])[info.name]

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Every tensor, read in one pass of DCP's loader (not one per tensor)."""
        state = self._load(list(self)) if len(self) else {}
        return state if dtype is None else {k: v.to(dtype) for k, v in state.items()}

    def spans(self, name: str) -> list[tuple[str, int, int]]:
        """The stored chunks of ``name`` (each serialized by DCP, so not raw array bytes)."""
        info = self.info(name)
        return self._where.get(name) or [(info.file, info.offset, 0)]

    def close(self) -> None:
        self._md = None


def _reason(e: BaseException) -> str:
    """What failed, for a message: the first rank's exception inside a CheckpointException."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:  # rank -> (exception, its traceback)
        first = next(iter(failures.values()))
        e = first[0] if isinstance(first, tuple) else first
    return f"{type(e).__name__}: {torch_reason(e)}"


def _side_metadata(folder: Path) -> dict[str, Any]:
    side = folder / SIDE_METADATA
    if not side.is_file():
        return {}
    meta: dict[str, Any] = read_json(side, SIDE_METADATA, expect=dict)
    return meta


def _reader(folder: Path, md: Any) -> Any:
    """DCP's file-system reader, handed the metadata we checked instead of unpickling it."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class CheckedReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    return CheckedReader(folder)


def _detect(path: Path, head: bytes) -> bool:
    return path.is_dir() and (path / METADATA_FILE).is_file()


def save_dcp(
    tensors: dict[str, torch.Tensor],
    folder: Path,
    metadata: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
    quant: str | None = None,
) -> dict[str, str]:
    """``save_state_dict`` for ``.dcp``: a single-process DCP folder, replaced atomically.

    An existing DCP folder is replaced as a whole; a folder that holds anything else is
    refused, never emptied. Metadata goes to ``mlmf_metadata.json`` as JSON.

    Returns:
        ``{file name: sha256}`` of the files in the new folder (read back: DCP writes them).
    """
    import torch.distributed.checkpoint as dcp

    if max_shard_size is not None:
        raise MLMFError("max_shard_size applies to the HF sharded layout (a folder without "
                        "a suffix); DCP writes one file per rank", folder)
    if folder.is_dir():
        others = sorted(c.name for c in folder.iterdir() if c.name not in
                        (METADATA_FILE, SIDE_METADATA) and not c.name.endswith(".distcp"))
        if others:
            raise MLMFError(f"the folder holds files that are not a DCP checkpoint's "
                            f"({', '.join(others[:5])}); not replacing it (choose a new or "
                            "empty folder)", folder)
    state = {k: v.detach().contiguous() for k, v in tensors.items()}
    for name, t in state.items():
        if t.device.type == "meta":
            raise MLMFError(f"tensor {name!r} is on the meta device and has no data", folder)
    side = None
    if metadata:
        try:
            side = json.dumps(metadata, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise MLMFError(f"metadata is not JSON-serializable: {e}", folder) from None
    with replacing_dir(folder) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no process group: assuming a single process"
            dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp), no_dist=True)
        if side is not None:
            (tmp / SIDE_METADATA).write_text(side + "\n", encoding="utf-8")
        sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    return sums


# a folder holding DCP's .metadata: no other format claims a folder itself
register_format(Format("dcp", _detect, DCPFile, priority=30))
register_writer(Writer("dcp", ".dcp", save_dcp, folder=True))
