"""Measure the bytes an object keeps alive: tensors, arrays and buffers, each storage once.

A state dict loaded with ``ml.load_state_dict`` is memory-mapped from its safetensors
file, so its bytes are page cache that the kernel can drop and re-read; a tensor made by
``torch.randn`` lives in anonymous memory that only freeing can return. ``measure`` tells
the two apart by asking the kernel which mapping holds each storage's first byte:

- Linux >= 6.11: the ``PROCMAP_QUERY`` ioctl on ``/proc/self/maps`` (one call per storage).
- older Linux: one parse of ``/proc/self/maps`` per ``measure`` call.
- elsewhere: only storages that torch itself mapped from a file (``storage.filename``)
  count as mapped.

A file-backed mapping under ``/dev/shm`` or a ``memfd`` is RAM, not a file on disk, so it
counts as anonymous. Python object headers (dict slots, strings) are not counted: the
budget is about buffers, which dominate any model by orders of magnitude.
"""

from __future__ import annotations

import bisect
import ctypes
import dataclasses
import os
import struct
import sys
import types
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from ..tables import fields_dict, fields_row

# From linux/fs.h: _IOWR('f', 17, struct procmap_query); the struct is 104 bytes.
_PROCMAP_QUERY = 0xC0686611
_QUERY_FMT = "<9Q4I2Q"
_NAME_MAX = 4096
_RAM_PREFIXES = ("/dev/shm/", "/memfd:", "/SYSV")
# Never walked: scalars, and objects whose attributes are not data the value owns.
_LEAVES = (int, float, complex, bool, str, type(None), torch.dtype, torch.device, type,
           types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class Footprint(NamedTuple):
    """Bytes kept alive by one object, by where they live.

    Attributes:
        anonymous: CPU bytes in anonymous memory (heap, anonymous mmap, shared memory).
        mapped: CPU bytes memory-mapped from files on disk (page cache the kernel can drop).
        device: bytes on other devices (CUDA, MPS, ...).
        storages: distinct buffers counted (shared storage is counted once).
        files: the files the mapped bytes come from, sorted.
    """

    anonymous: int = 0
    mapped: int = 0
    device: int = 0
    storages: int = 0
    files: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Every byte counted, wherever it lives."""
        return self.anonymous + self.mapped + self.device

    def as_dict(self) -> dict[str, Any]:
        return {**fields_dict(self), "total": self.total}

    def rows(self) -> list[dict[str, Any]]:
        return [{**fields_row(self), "total": self.total}]


class Region(NamedTuple):
    """One mapping of the address space that holds a file (``/proc/self/maps`` line)."""

    start: int
    end: int
    path: str


def available_bytes() -> int:
    """Memory the system can still give without swapping (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _is_disk_file(path: str) -> bool:
    return path.startswith("/") and not path.startswith(_RAM_PREFIXES)


def parse_maps(text: str) -> list[Region]:
    """File-backed regions of a ``/proc/<pid>/maps`` text, sorted by start address.

    Args:
        text: the maps file's content.

    Returns:
        One ``Region`` per line with a non-zero inode and a path (RAM-backed files included;
        ``classify`` decides what counts as disk).
    """
    regions: list[Region] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or parts[4] == "0":
            continue
        start, _, end = parts[0].partition("-")
        regions.append(Region(int(start, 16), int(end, 16), parts[5]))
    regions.sort()
    return regions


class AddressSpace:
    """Answers "which file, if any, is mapped at this address?" for the current process."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._regions: list[Region] | None = None
        self._starts: list[int] = []
        self._name = ctypes.create_string_buffer(_NAME_MAX)
        if sys.platform.startswith("linux"):
            try:
                self._fd = os.open("/proc/self/maps", os.O_RDONLY)
            except OSError:
                self._fd = None
            if self._fd is not None and self._query(0) is False:
                self._load_regions()  # the kernel has no PROCMAP_QUERY: parse the text once

    def _query(self, addr: int) -> str | None | bool:
        """File path mapped at addr, None for no file, False when the ioctl is unsupported."""
        import errno
        import fcntl

        buf = bytearray(struct.pack(_QUERY_FMT, 104, 0, addr, 0, 0, 0, 0, 0, 0, 0, 0,
                                    _NAME_MAX, 0, ctypes.addressof(self._name), 0))
        try:
            fcntl.ioctl(self._fd, _PROCMAP_QUERY, buf, True)  # type: ignore[arg-type]
        except OSError as e:
            return None if e.errno == errno.ENOENT else False
        fields = struct.unpack(_QUERY_FMT, buf)
        inode, name_size = fields[8], fields[11]
        if inode == 0 or name_size == 0:
            return None
        return self._name.raw[: name_size - 1].decode("utf-8", "surrogateescape")

    def _load_regions(self) -> None:
        assert self._fd is not None
        data = b""
        while chunk := os.pread(self._fd, 1 << 20, len(data)):
            data += chunk
        self._regions = parse_maps(data.decode("utf-8", "surrogateescape"))
        self._starts = [r.start for r in self._regions]

    def file_at(self, addr: int) -> str | None:
        """The path of the file mapped at ``addr``, or None (anonymous or unknown)."""
        if self._fd is None:
            return None
        if self._regions is None:
            found = self._query(addr)
            if found is not False:
                return found if isinstance(found, str) else None
            self._load_regions()
        assert self._regions is not None
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._regions[i].end:
            return self._regions[i].path
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _disk_path(path: str | None) -> str | None:
    if path is None:
        return None
    path = path.removesuffix(" (deleted)")
    return path if _is_disk_file(path) else None


def measure(obj: Any) -> Footprint:
    """The bytes ``obj`` keeps alive: every reachable tensor, array and buffer, once each.

    Walks containers (dicts, lists, tuples, sets), ``nn.Module`` s, dataclasses and plain
    objects' attributes. Two tensors viewing one storage count the whole storage once,
    since the storage is what stays alive.

    Args:
        obj: a state dict, a model, a ``QTensor``, a tensor, nested containers of these.

    Returns:
        A ``Footprint`` with anonymous, memory-mapped and device bytes.

    Example:
        >>> measure({"w": torch.zeros(4, 4), "tied": None}).anonymous
        64
    """
    anon = mapped = device = 0
    seen_objects: set[int] = set()
    seen_buffers: set[tuple[str, int]] = set()
    files: set[str] = set()
    space: AddressSpace | None = None
    stack = [obj]
    try:
        while stack:
            item = stack.pop()
            if isinstance(item, _LEAVES) or id(item) in seen_objects:
                continue
            seen_objects.add(id(item))
            if isinstance(item, torch.Tensor):
                if item.requires_grad and item.is_leaf and item.grad is not None:
                    stack.append(item.grad)
                for ptr, nbytes, dev, filename in _tensor_buffers(item):
                    key = (dev, ptr)
                    if nbytes == 0 or key in seen_buffers:
                        continue
                    seen_buffers.add(key)
                    if dev != "cpu":
                        device += nbytes
                        continue
                    if filename is None:
                        space = space or AddressSpace()
                        filename = _disk_path(space.file_at(ptr))
                    if filename is None:
                        anon += nbytes
                    else:
                        mapped += nbytes
                        files.add(filename)
            elif isinstance(item, bytes | bytearray | memoryview):
                anon += memoryview(item).nbytes
            elif _is_ndarray(item):
                root = item
                while _is_ndarray(root.base):
                    root = root.base
                ptr = root.__array_interface__["data"][0]
                if root.nbytes and ("cpu", ptr) not in seen_buffers:
                    seen_buffers.add(("cpu", ptr))
                    space = space or AddressSpace()
                    filename = _disk_path(space.file_at(ptr))
                    if filename is None:
                        anon += root.nbytes
                    else:
                        mapped += root.nbytes
                        files.add(filename)
            elif isinstance(item, Mapping):
                stack.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                stack.extend(item)
            elif dataclasses.is_dataclass(item) and not isinstance(item, type):
                stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
            else:
                stack.extend(_attributes(item))
    finally:
        if space is not None:
            space.close()
    return Footprint(anon, mapped, device, len(seen_buffers), tuple(sorted(files)))


def _tensor_buffers(t: torch.Tensor) -> list[tuple[int, int, str, str | None]]:
    """(data_ptr, nbytes, device type, file torch mapped it from) for each buffer of ``t``."""
    if t.device.type == "meta":
        return []
    if t.is_sparse:
        return [b for part in (t._indices(), t._values()) for b in _tensor_buffers(part)]
    if t.layout != torch.strided:  # CSR/CSC/BSR: compressed indices, plain indices, values
        parts = [getattr(t, n)() for n in ("crow_indices", "col_indices", "ccol_indices",
                                           "row_indices", "values") if _has_part(t, n)]
        return [b for part in parts for b in _tensor_buffers(part)]
    storage = t.untyped_storage()
    filename = getattr(storage, "filename", None)
    return [(storage.data_ptr(), storage.nbytes(), t.device.type, _disk_path(filename))]


def _has_part(t: torch.Tensor, name: str) -> bool:
    try:
        getattr(t, name)()
    except RuntimeError:
        return False
    return True


def _is_ndarray(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def _attributes(item: Any) -> list[Any]:
    values: list[Any] = []
    if hasattr(item, "__dict__"):
        values.extend(vars(item).values())
    for cls in type(item).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if isinstance(slot, str) and hasattr(item, slot):
                values.append(getattr(item, slot))
    return values


__all__ = ["AddressSpace", "Footprint", "Region", "measure", "parse_maps"]
