"""PyTorch Distributed Checkpoint (DCP) folders <-> safetensors (and every other writer).

``mlmf-lab convert ckpt_dir out.safetensors`` reads a DCP folder (one written by any
number of ranks; chunks are reassembled by DCP's own loader) and
``mlmf-lab convert model.safetensors out.dcp`` writes one: a destination ending in
``.dcp`` asks for a DCP folder.

DCP's ``.metadata`` file is a pickle; it is read with an unpickler that admits only
DCP's own record classes and torch dtypes/sizes, never arbitrary code. Tensor data is
read by DCP with ``torch.load(weights_only=True)``. Non-tensor entries (step counters,
pickled objects) are not loaded: their names are kept in the output's metadata under
``dcp_skipped``. The source file's metadata travels in ``mlmf_metadata.json``.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import convert as _convert
from ..atomic import replacing_dir
from ..errors import FormatError, MLMFError, UnsafeFileError
from . import load_state_dict, open_weights, save_state_dict

METADATA_FILE = ".metadata"
SIDE_METADATA = "mlmf_metadata.json"
SUFFIX = ".dcp"
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


def is_dcp(path: str | os.PathLike[str]) -> bool:
    """True for a folder holding a DCP ``.metadata`` file."""
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file()


def read_metadata(folder: str | os.PathLike[str]) -> Any:
    """DCP's ``Metadata`` record of ``folder``, unpickled safely and checked.

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
    try:
        with open(path, "rb") as f:
            md = _MetadataUnpickler(f, path).load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError) as e:
        raise FormatError(f"DCP metadata is not readable ({type(e).__name__}: {e})", path) from None
    if not isinstance(md, Metadata):
        raise FormatError(f"DCP metadata holds a {type(md).__name__}, expected Metadata", path)
    for info in (md.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if not isinstance(rel, str) or os.path.isabs(rel) or ".." in Path(rel).parts:
            raise UnsafeFileError(f"DCP data file {rel!r} escapes the checkpoint folder", path)
        if not (root / rel).is_file():
            raise FormatError(f"DCP data file {rel!r} listed in {METADATA_FILE} is missing", root)
    return md


def _reader(folder: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            md = read_metadata(folder)
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    return SafeReader(folder)


def load_dcp(folder: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of a DCP folder (chunks reassembled) and the metadata to keep.

    Returns:
        (name -> tensor with dotted names as DCP flattens them, metadata).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    root = Path(folder)
    md = read_metadata(root)
    state: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, entry in md.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            state[name] = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        else:
            skipped.append(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, storage_reader=_reader(root), no_dist=True)
    meta: dict[str, Any] = {}
    side = root / SIDE_METADATA
    if side.is_file():
        try:
            meta = dict(json.loads(side.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:
            raise FormatError(f"{SIDE_METADATA} is not a JSON object ({e})", side) from None
    if skipped:
        meta["dcp_skipped"] = skipped
    return state, meta


def save_dcp(tensors: dict[str, torch.Tensor], folder: str | os.PathLike[str],
             metadata: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` as a single-process DCP folder, atomically.

    An existing DCP folder is replaced as a whole; a folder that holds anything else is
    refused, never emptied.
    """
    import torch.distributed.checkpoint as dcp

    root = Path(folder)
    if root.is_dir():
        others = sorted(c.name for c in root.iterdir() if c.name not in
                        (METADATA_FILE, SIDE_METADATA) and not c.name.endswith(".distcp"))
        if others:
            raise MLMFError(f"the folder holds files that are not a DCP checkpoint's "
                            f"({', '.join(others[:5])}); not replacing it (choose a new or "
                            "empty folder)", root)
    state = {k: v.detach().contiguous() for k, v in tensors.items()}
    with replacing_dir(root) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp), no_dist=True)
        if metadata:
            (tmp / SIDE_METADATA).write_text(json.dumps(metadata, sort_keys=True, default=str))


def _from_dcp(src: Path, dst: Path, quant: str | None = None, **_: Any) -> None:
    state, meta = load_dcp(src)
    save_state_dict(state, dst, metadata=meta or None, quant=quant)


def _to_dcp(src: Path, dst: Path, quant: str | None = None, **_: Any) -> None:
    if quant is not None:
        raise FormatError(f"DCP stores plain tensors; drop quant={quant!r}", dst)
    if is_dcp(src):
        state, meta = load_dcp(src)
    else:
        with open_weights(src) as wf:
            meta = dict(wf.metadata)
        state = load_state_dict(src)
    save_dcp(state, dst, meta)


def _register() -> None:
    names = {c.name for c in _convert.CONVERTERS}
    if "to-dcp" not in names:
        _convert.CONVERTERS.append(
            _convert.Converter("to-dcp", lambda s, d: d.suffix.lower() == SUFFIX, _to_dcp))
    if "from-dcp" not in names:
        _convert.CONVERTERS.append(
            _convert.Converter("from-dcp", lambda s, d: is_dcp(s), _from_dcp))


_register()
