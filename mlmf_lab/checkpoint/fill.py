"""Filling a model or a dict with a checkpoint's weights: keys checked first, each file read once.

``fill_weights`` compares the keys and shapes with the file headers before anything is read
or changed. With ``verify``, each weight file is then read once, in file order: a tensor with
a plain destination (a parameter or buffer, or a dict's tensor, of the same dtype and shape,
contiguous on the CPU) is read with ``readinto`` straight into it, others into new tensors,
and each chunk is hashed as soon as it is read, from the CPU cache. The file's sha256 is
compared with the manifest's at its end. Hashing first and copying after read the file twice
and added the whole hash to the load (issue 21); now a verified load costs about the hash
alone. The price: a damaged weight file shows only at its end, after its bytes were copied
in, and the error says so (the checkpoint's other files are verified before any is used).

Without ``verify``, for a model that loads its own way (a module with its own
``_load_from_state_dict`` or load hooks, e.g. a quantized layer) or for quantized weight
files, the tensors come from the memory map through ``load_state_dict``, after
``verify_manifest`` when asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ChecksumError, MLMFError, StateDictError
from ..formats import open_weights
from ..formats.base import TensorInfo, WeightFile
from ..loading import compare_keys
from .files import verify_manifest, weights_file

HASH_CHUNK = 1 << 20  # read, then hashed: it is still in the CPU cache
READ_AHEAD = 16 << 20  # asked of the disk ahead of the reads (posix_fadvise WILLNEED)


def fill_weights(target: nn.Module | MutableMapping[str, torch.Tensor], folder: Path,
                 strict: bool, verify: bool) -> None:
    """Copy the weights of the checkpoint in ``folder`` into ``target``.

    Args:
        target: an ``nn.Module`` (its parameters and buffers are written in place, so an
            optimizer built on them stays valid) or a dict of tensors (filled in place; new
            keys added when not strict).
        strict: keys and shapes must match exactly.
        verify: check each weight file's sha256 against the manifest as it is read.

    Raises:
        StateDictError: keys or shapes disagree (strict); nothing was changed.
        ChecksumError: a weight file differs from the manifest (named); found at its end,
            after its tensors were copied in.
    """
    if not isinstance(target, (nn.Module, MutableMapping)):
        raise MLMFError(f"cannot load weights into a {type(target).__name__}; pass an nn.Module "
                        "or a dict", folder)
    path = weights_file(folder)
    with _open_checked(path, folder, verify) as wf:
        infos, aliases = wf.infos(), dict(wf.aliases)
        dests = _destinations(target)
        if not verify or dests is None or any(i.quant for i in infos):
            if verify:
                verify_manifest(folder, names=_files(infos))
            _copy(target, wf.state_dict(), strict, path)
            return
    shapes = {i.name: i for i in infos}
    shapes.update((a, shapes[t]) for a, t in aliases.items() if t in shapes)
    wanted = _wanted(target, shapes, strict, path)
    direct = {i.name: dests[i.name] for i in infos
              if i.name in wanted and i.name in dests and _fits(dests[i.name], i)}
    manifest = verify_manifest(folder, names=())  # sizes only
    source: dict[str, torch.Tensor] = dict(direct)
    for file in _files(infos):
        if file not in manifest:  # the manifest was rewritten without it
            raise ChecksumError("holds weights but the manifest does not list it",
                                folder / file)
        source.update(read_verified(folder / file, manifest[file],
                                    [i for i in infos if Path(i.file).name == file], direct))
    for alias, name in aliases.items():
        if name in source:
            source[alias] = source[name]
    _copy_checked(target, {k: v for k, v in source.items() if k in wanted
                           and not _same_memory(dests.get(k), v)})


def weight_file_names(folder: Path) -> list[str]:
    """The files in ``folder`` that hold its weights (``model.safetensors`` or the shards);
    none when their headers cannot be read (then all files are hashed first, which names a
    damaged one, and reading them reports the rest)."""
    try:
        with open_weights(weights_file(folder)) as wf:
            return _files(wf.infos())
    except MLMFError:
        return []


def read_verified(path: Path, expected: Mapping[str, Any], infos: Iterable[TensorInfo],
                  into: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read the file once, the tensors named in ``into`` straight into those tensors and the
    others into new ones (returned), hashing each chunk just read; ``expected``: its manifest
    entry.

    Hashing in the reading thread, from the cache, measured faster than handing the chunks to
    a second thread (which reads them back from the other core's cache or from memory).

    Raises:
        ChecksumError: the file's size or sha256 differs from ``expected``.
    """
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        reader = _HashingReader(f, path)
        for info in sorted(infos, key=lambda i: i.offset):
            reader.read_into(memoryview(bytearray(info.offset - reader.pos)))
            t = into.get(info.name)
            if t is None:
                t = out[info.name] = torch.empty(info.shape, dtype=info.torch_dtype)
            reader.read_into(_bytes_of(t))
        reader.read_into(memoryview(bytearray(max(0, expected["size"] - reader.pos))))
        if f.read(1):
            raise ChecksumError("longer than the manifest says", path)
    digest = reader.hash.hexdigest()
    if digest != expected["sha256"]:
        raise ChecksumError(
            f"sha256 {digest[:16]}… does not match the manifest's {expected['sha256'][:16]}…; "
            "the file was changed or corrupted (found at its end, after its tensors were "
            "copied in: load another checkpoint)", path)
    return out


class _HashingReader:
    """Reads a file in order into given memory, hashing each chunk as soon as it is read;
    asks the kernel for the bytes ahead, so that a cold disk reads while the CPU hashes."""

    def __init__(self, f: Any, path: Path) -> None:
        self.f, self.path, self.hash = f, path, hashlib.sha256()
        self.pos = self.ahead = 0

    def read_into(self, view: memoryview) -> None:
        for start in range(0, view.nbytes, HASH_CHUNK):
            part = view[start : start + HASH_CHUNK]
            if self.pos + READ_AHEAD > self.ahead and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self.f.fileno(), self.ahead, READ_AHEAD, os.POSIX_FADV_WILLNEED)
                self.ahead += READ_AHEAD
            done = 0
            while done < part.nbytes:
                got = self.f.readinto(part[done:])
                if not got:
                    raise ChecksumError("shorter than the manifest says", self.path)
                done += got
            self.hash.update(part)  # from the cache: it was just read
            self.pos += part.nbytes


@contextlib.contextmanager
def _open_checked(path: Path, folder: Path, verify: bool) -> Iterator[WeightFile]:
    """``open_weights(path)``; a header it cannot read, in a verified load, is reported as
    the manifest mismatch it is (if it is one)."""
    try:
        wf = open_weights(path)
    except MLMFError:
        if verify:
            verify_manifest(folder)
        raise
    with wf:
        yield wf


def _bytes_of(t: torch.Tensor) -> memoryview:
    if not t.numel():
        return memoryview(bytearray(0))
    return memoryview(t.detach().reshape(-1).view(torch.uint8).numpy().data).cast("B")


def _files(infos: Iterable[TensorInfo]) -> list[str]:
    return sorted({Path(i.file).name for i in infos})


def _destinations(target: Any) -> dict[str, torch.Tensor] | None:
    """The tensors a verified read may write straight into, by name; None when the target
    loads its own way (then ``load_state_dict`` does it)."""
    if isinstance(target, MutableMapping):
        return {k: v for k, v in target.items() if isinstance(v, torch.Tensor)}
    for m in target.modules():
        if (type(m)._load_from_state_dict is not nn.Module._load_from_state_dict
                or m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks):
            return None
    own = {id(t) for t in [*target.parameters(), *target.buffers()]}
    state = target.state_dict(keep_vars=True)
    return state if all(id(t) in own for t in state.values()) else None


def _fits(t: torch.Tensor, info: TensorInfo) -> bool:
    return (t.device.type == "cpu" and t.is_contiguous() and t.dtype == info.torch_dtype
            and tuple(t.shape) == info.shape and t.nbytes == info.nbytes)


def _same_memory(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """``a`` is ``b``, or its very memory (a tied parameter, read once through another name)."""
    return a is b or (a is not None and a.numel() > 0 and a.data_ptr() == b.data_ptr()
                      and a.shape == b.shape and a.dtype == b.dtype)


def _wanted(target: Any, shapes: Mapping[str, TensorInfo], strict: bool, path: Path) -> set[str]:
    """The names to copy into ``target``, after the checks of ``_copy`` (on shapes only)."""
    meta = {k: torch.empty(i.shape, dtype=i.torch_dtype, device="meta") for k, i in shapes.items()}
    if isinstance(target, nn.Module):
        report = compare_keys(target, meta)
        if strict and not report.ok:
            raise StateDictError(f"the model and the checkpoint disagree: {report.describe()}",
                                 path)
        return set(meta) - {k for k, _, _ in report.mismatched} - set(report.unexpected)
    _check_dict(target, meta, strict, path)
    return set(meta)


def _check_dict(target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                strict: bool, path: Path) -> list[str]:
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    reshaped = sorted(k for k in state if k in target and target[k].shape != state[k].shape)
    if strict and (missing or unexpected or reshaped):
        raise StateDictError(f"the state dict and the checkpoint disagree: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, reshaped {reshaped[:5]}", path)
    return reshaped


def _copy(target: Any, state: dict[str, torch.Tensor], strict: bool, path: Path) -> None:
    """Copy ``state`` (memory-mapped) into ``target``, after the key and shape checks."""
    if isinstance(target, nn.Module):
        report = compare_keys(target, state)
        if strict and not report.ok:
            raise StateDictError(f"the model and the checkpoint disagree: {report.describe()}",
                                 path)
        bad = {k for k, _, _ in report.mismatched} | set(report.unexpected)
        target.load_state_dict({k: v for k, v in state.items() if k not in bad}, strict=False)
        return
    reshaped = _check_dict(target, state, strict, path)
    with torch.no_grad():
        for k, v in state.items():
            if k in target and k not in reshaped:
                target[k].copy_(v)
            else:
                target[k] = v.clone()


def _copy_checked(target: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy tensors already checked by ``_wanted``, but those already in place."""
    if isinstance(target, nn.Module):
        if state:
            target.load_state_dict(state, strict=False)
        return
    given: set[int] = set()
    with torch.no_grad():
        for k, v in state.items():
            if k in target and target[k].shape == v.shape:
                target[k].copy_(v)
            else:  # a new tensor read for it, or (tied names) a copy of one given already
                target[k] = v.clone() if id(v) in given else v
                given.add(id(v))
