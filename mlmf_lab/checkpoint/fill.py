"""Filling a model or a dict with a checkpoint's weights: keys checked first, each file read once.

``fill_weights`` compares the keys and shapes with the file headers before anything is read
or changed. With ``verify``, the weight files are then read once by ``verify.check_files``:
a tensor with a plain destination (a parameter or buffer, or a dict's tensor, of the same
dtype and shape, contiguous on the CPU) is read straight into it, others into new tensors,
and each piece is hashed as soon as it is read, from the CPU cache. A file with chunk
digests is read by one thread per CPU, chunk by chunk, each chunk compared with the
manifest as it ends; one without (small, or saved before chunks) is checked against its
whole-file sha256 at its end. Hashing first and copying after read the files twice and
added the whole hash to the load; one sha256 stream alone was slower than torch's warm
load (issue 21). The price: a damaged weight file shows only after some of its bytes were
copied in, and the error says so (the checkpoint's other files are verified before any is
used).

Without ``verify``, for a model that loads its own way (a module with its own
``_load_from_state_dict`` or load hooks, e.g. a quantized layer) or for quantized weight
files, the tensors come from the memory map through ``load_state_dict``, after
``verify_manifest`` when asked.
"""

from __future__ import annotations

import contextlib
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
from .verify import Span, check_files


def fill_weights(target: nn.Module | MutableMapping[str, torch.Tensor], folder: Path,
                 strict: bool, verify: bool) -> None:
    """Copy the weights of the checkpoint in ``folder`` into ``target``.

    Args:
        target: an ``nn.Module`` (its parameters and buffers are written in place, so an
            optimizer built on them stays valid) or a dict of tensors (filled in place; new
            keys added when not strict).
        strict: keys and shapes must match exactly.
        verify: check each weight file against the manifest (its chunks' sha256, or the
            whole file's) as it is read.

    Raises:
        StateDictError: keys or shapes disagree (strict); nothing was changed.
        ChecksumError: a weight file differs from the manifest (named, with the byte range
            of the chunk); found after some of its tensors were copied in.
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
    direct = _direct(infos, wanted, dests)
    manifest = verify_manifest(folder, names=())  # sizes only
    source: dict[str, torch.Tensor] = dict(direct)
    plan: list[tuple[Path, Mapping[str, Any], list[Span]]] = []
    for file in _files(infos):
        if file not in manifest:  # the manifest was rewritten without it
            raise ChecksumError("holds weights but the manifest does not list it",
                                folder / file)
        spans = []
        for info in (i for i in infos if Path(i.file).name == file):
            t = direct.get(info.name)
            if t is None:
                t = source[info.name] = torch.empty(info.shape, dtype=info.torch_dtype)
            spans.append((info.offset, _bytes_of(t)))
        plan.append((folder / file, manifest[file], spans))
    check_files(plan, copied=True)
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


def _direct(infos: Iterable[TensorInfo], wanted: set[str],
            dests: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors read straight into their destination, by name: each memory once (two
    stored names for one parameter would have two threads write it at once)."""
    out: dict[str, torch.Tensor] = {}
    taken: set[int] = set()
    for i in infos:
        t = dests.get(i.name)
        if i.name in wanted and t is not None and _fits(t, i):
            if t.numel() and t.data_ptr() in taken:
                continue
            taken.add(t.data_ptr())
            out[i.name] = t
    return out


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
