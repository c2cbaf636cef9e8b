"""Hugging Face sharded checkpoints: ``model.safetensors.index.json`` + shards.

The index is validated strictly before anything is trusted: every shard exists
and stays inside the folder (no ``..``, no absolute names, no symlink escaping
it), every listed tensor is in its shard, and no tensor sits in two shards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import FormatError, MLMFError, ShardError, UnsafeFileError
from ..files import file_kind, read_json
from ..progress import Progress
from ..units import parse_size
from .base import TensorInfo, WeightFile
from .registry import Format, Writer, register_format, register_writer
from .safetensors import SafetensorsFile, check_dtypes, encode_safetensors
from .safetensors_quant import SCHEMES, check_finite, part_nbytes, stored_parts
from .write import dedupe_shared, json_bytes, write_views

INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD = 5 * 1000**3  # transformers' default, "5GB"


def safe_member(folder: Path, name: Any, index: Path) -> Path:
    """``folder/name`` if ``name`` names a regular file that stays inside ``folder``.

    Refused, each with a ``ShardError`` (or ``UnsafeFileError``) naming the index: a name
    that is empty, not text, holds a NUL byte or is too long for the file system; ``..``,
    absolute names and links leaving the folder; and anything but a regular file (``"."``,
    a subfolder, a FIFO that would block the reader forever, a device).
    """
    if not isinstance(name, str) or not name:
        raise ShardError(f"shard name {_shown(name)} is not a file name", index)
    if "\0" in name:
        raise ShardError(f"shard name {_shown(name)} holds a NUL byte", index)
    try:
        os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") names no file
        raise ShardError(f"shard name {_shown(name)} is not valid text", index) from None
    if os.path.isabs(name) or ".." in Path(name).parts or "\\" in name:
        raise UnsafeFileError(f"shard name {_shown(name)} escapes the checkpoint folder", index)
    p = folder / name
    try:
        real = p.resolve(strict=True)
        mode = real.stat().st_mode
    except (FileNotFoundError, RuntimeError):
        raise ShardError(f"shard {_shown(name)} listed in the index does not exist",
                         index) from None
    except OSError as e:  # a name too long, a loop of links, no permission
        raise ShardError(f"shard {_shown(name)} cannot be opened ({e.strerror or e})",
                         index) from None
    if not real.is_relative_to(folder.resolve()):
        raise UnsafeFileError(f"shard {_shown(name)} is a link that leaves the folder ({real})",
                              index)
    if not stat.S_ISREG(mode):
        raise ShardError(f"shard {_shown(name)} is {file_kind(mode)}; expected a safetensors "
                         "file", index)
    return p


def _shown(name: Any) -> str:
    """A shard name as a message shows it: its repr, cut when long."""
    text = repr(name)
    size = len(name) if isinstance(name, str) else len(text)  # a name, or a 100-digit number
    return text if len(text) <= 80 else f"{text[:60]}... ({size} characters)"


class ShardedFile(WeightFile):
    """A sharded checkpoint seen as one weight file; shards open lazily by header."""

    format = "safetensors"

    def __init__(self, index: Path) -> None:
        try:
            doc = read_json(index, "the index")
        except FormatError as e:
            raise ShardError(e.message, index) from None
        wmap = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wmap, dict) or not wmap:
            raise ShardError("index has no weight_map object mapping tensors to shards", index)
        given = doc.get("metadata")
        if given is not None and not isinstance(given, dict):
            raise ShardError(f"index metadata must be a JSON object, found "
                             f"{type(given).__name__}", index)
        folder = index.parent
        shards: dict[str, SafetensorsFile] = {}
        for shard_name in wmap.values():
            if not isinstance(shard_name, str):
                raise ShardError(f"shard name {_shown(shard_name)} is not a file name", index)
        for shard_name in sorted(set(wmap.values())):
            shards[shard_name] = SafetensorsFile(safe_member(folder, shard_name, index))
        where: dict[str, str] = {}
        for shard_name, sf in shards.items():
            for tname in sf:
                if tname in where:
                    raise ShardError(
                        f"tensor {tname!r} is in two shards: {where[tname]} and {shard_name}", index
                    )
                where[tname] = shard_name
        infos: dict[str, TensorInfo] = {}
        for tname, shard_name in wmap.items():
            if tname in shards[shard_name].parts:
                continue  # the scale or zero of an int8/int4 weight, read with it
            if where.get(tname) != shard_name:
                found = f"found in {where[tname]}" if tname in where else "in no shard"
                raise ShardError(
                    f"tensor {tname!r} is listed in {shard_name} but is {found}", index
                )
            infos[tname] = shards[shard_name].info(tname)
        unlisted = sorted(set(where) - set(wmap))
        if unlisted:
            raise ShardError(f"shards hold tensors the index omits: {unlisted[:5]}", index)
        meta = dict(given or {})
        meta.update(next(iter(shards.values())).metadata)
        aliases: dict[str, str] = {}
        for sf in shards.values():
            aliases.update(sf.aliases)
        super().__init__(path=index, metadata=meta, _infos=infos, aliases=aliases)
        self.shards = shards
        self._where = where

    def _read(self, info: TensorInfo) -> torch.Tensor:
        return self.shards[self._where[info.name]].tensor(info.name)

    def raw(self, name: str) -> Any:
        self.info(name)
        return self.shards[self._where[name]].raw(name)

    def spans(self, name: str) -> list[tuple[str, int, int]]:
        self.info(name)
        return self.shards[self._where[name]].spans(name)

    def get_slice(self, name: str) -> Any:
        self.info(name)
        return self.shards[self._where[name]].get_slice(name)

    def close(self) -> None:
        for sf in self.shards.values():
            sf.close()


def _detect(path: Path, head: bytes) -> bool:
    return path.name.endswith(".json") and head.lstrip()[:1] == b"{" and _has_weight_map(path,
                                                                                        head)


def _has_weight_map(path: Path, head: bytes) -> bool:
    """An index by its content; a damaged one that starts like an index is still claimed,
    so that the index reader says what is wrong with it (not "no format knows it")."""
    try:
        return "weight_map" in read_json(path, "the index", expect=dict)
    except MLMFError:
        return b'"weight_map"' in head


def plan_shards(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Greedy in-order packing, as transformers: a new shard when the next tensor overflows."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, n in sizes.items():
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def shard_files(
    tensors: dict[str, torch.Tensor],
    folder: Path,
    metadata: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
    quant: str | None = None,
) -> Iterator[tuple[str, list[memoryview]]]:
    """The files of the HF layout for ``tensors``: (file name, its bytes as views) each.

    One ``model.safetensors`` when everything fits in ``max_shard_size`` (default 5GB, as
    transformers), else numbered shards and ``model.safetensors.index.json``. Tied names
    travel with their target, so each shard's metadata records its own.

    Everything is checked before this returns (dtypes, tied names, the names of quantized
    parts, inf/nan), so a refusal comes before any file is written; a shard is encoded only
    when the iteration reaches it, so one shard's quantized copy is held at a time.

    Raises:
        MLMFError: naming ``folder`` (and the tensor).
    """
    limit = parse_size(max_shard_size if max_shard_size is not None else DEFAULT_MAX_SHARD,
                       "max_shard_size")
    kept, aliases = dedupe_shared(tensors)
    check_dtypes(kept, folder)
    if quant is None:
        keys = {name: [name] for name in kept}
        sizes = {name: t.nbytes for name, t in kept.items()}
    else:
        layout = stored_parts(kept, quant, folder, aliases)
        check_finite(kept, layout, quant, folder)
        keys = {name: [p.key for p in parts] for name, parts in layout.items()}
        sizes = {n: sum(map(part_nbytes, parts)) for n, parts in layout.items()}
    groups = plan_shards(sizes, limit)

    def files() -> Iterator[tuple[str, list[memoryview]]]:
        n = len(groups)
        weight_map: dict[str, str] = {}
        for k, names in enumerate(groups, 1):
            shard = "model.safetensors" if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
            part = {name: kept[name] for name in names}
            part.update({a: kept[t] for a, t in aliases.items() if t in part})
            yield shard, encode_safetensors(part, folder / shard, metadata, quant)
            weight_map.update(dict.fromkeys((key for n in names for key in keys[n]), shard))
        if n > 1:
            index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
            yield INDEX_NAME, [memoryview(json_bytes(index, indent=2))]

    return files()


def write_sharded(
    tensors: dict[str, torch.Tensor],
    folder: Path,
    metadata: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
    quant: str | None = None,
    progress: Progress = False,
) -> dict[str, str]:
    """Write the HF layout (``shard_files``) as new files into the existing ``folder``.

    ``progress`` as for ``write_views``, file by file.

    For a folder written as a whole and swapped in atomically by the caller (a checkpoint);
    ``save_sharded`` saves into a folder that may exist.

    Returns:
        ``{file name: sha256}``, hashed while written.
    """
    return {name: write_views(views, folder / name, progress=progress)
            for name, views in shard_files(tensors, folder, metadata, max_shard_size, quant)}


def save_sharded(
    tensors: dict[str, torch.Tensor],
    folder: Path,
    metadata: dict[str, Any] | None = None,
    max_shard_size: int | str | None = None,
    quant: str | None = None,
    extra: dict[str, bytes] | None = None,
) -> dict[str, str]:
    """``save_state_dict`` for a folder: the HF layout, replacing the folder atomically.

    An existing folder keeps its other files (``config.json``, tokenizer, ...); its old
    ``model*.safetensors`` files and index are replaced, as transformers does. ``extra``
    (file name -> bytes: a ``config.json``, tokenizer files) is written in the same atomic
    step and replaces the folder's files of those names.

    With ``quant`` (``"int8"`` or ``"int4"``) each shard stores its weights quantized, as a
    single file does (``safetensors_quant``); a weight's scale (and zero) stay in its shard,
    shards are sized by what they store, and the index lists every stored name, as
    compressed-tensors checkpoints do.

    Returns:
        ``{file name: sha256}`` of the weight files and index written.
    """
    files = shard_files(tensors, folder, metadata, max_shard_size, quant)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MLMFError(f"cannot create the folder ({e.strerror or e})", folder.parent) from None
    with atomic.replacing_dir(folder) as tmp:
        sums = {name: write_views(views, tmp / name, label=name) for name, views in files}
        for name, data in (extra or {}).items():
            if Path(name).name != name or name in (".", ".."):
                raise MLMFError(f"extra file {name!r} is not a plain file name", folder)
            sums[name] = write_views([memoryview(data)], tmp / name)
        _keep_mode(folder, tmp)
        _carry_over(folder, tmp)
        if quant is not None:
            _warn_plain_config(tmp / "config.json", quant, folder)
    return sums


def _warn_plain_config(config: Path, quant: str, folder: Path) -> None:
    """A kept transformers config that does not say the weights are quantized misleads."""
    try:
        plain = "quantization_config" not in read_json(config, "config.json", expect=dict)
    except MLMFError:
        return
    if plain:
        warnings.warn(f"{folder}: its config.json is kept beside {quant} weights but has no "
                      "quantization_config; transformers would load the codes as plain "
                      "weights", stacklevel=4)


def _keep_mode(old: Path, new: Path) -> None:
    """New weight files get the mode the old ones had (private weights stay private)."""
    mode = next((f.stat().st_mode for f in sorted(old.glob("model*.safetensors"))
                 if WEIGHT_FILE.fullmatch(f.name)), None)
    if mode is not None:
        for f in new.iterdir():
            with contextlib.suppress(OSError):
                os.chmod(f, stat.S_IMODE(mode))


WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors")


def _carry_over(old: Path, new: Path) -> None:
    """Keep what a folder held besides its weights (config.json, tokenizer files, ...).

    As transformers' ``save_pretrained``: only the weight files of the layout (and its index)
    are replaced. Hard links where the file system allows them, so nothing large is copied.
    """
    if not old.is_dir():
        return
    for child in old.iterdir():
        if child.name == INDEX_NAME or WEIGHT_FILE.fullmatch(child.name) or \
                (new / child.name).exists():  # written anew
            continue
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.copytree(child, new / child.name, symlinks=True,
                                copy_function=_link_or_copy)
            else:
                _link_or_copy(child, new / child.name)
        except OSError as e:
            raise MLMFError(f"cannot keep {child.name!r} from the folder being replaced "
                            f"({e.strerror or e}); nothing was changed", old) from None


def _link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:  # another file system, or links not allowed: copy
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copy2(src, dst, follow_symlinks=False)


register_format(Format("safetensors-sharded", _detect, ShardedFile, priority=20))
register_writer(Writer("safetensors-sharded", "", save_sharded, SCHEMES, folder=True))
