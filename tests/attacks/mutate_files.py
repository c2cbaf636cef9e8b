"""The mutator for whole files and folders: each format changed where its structure is.

A case is a ``Tree`` (relative path -> bytes, or a ``Special``: a folder, a FIFO, a link),
written into its own folder by ``write_tree``. ``mutate_tree`` changes one to three things:
mostly one file's content, mutated by its kind (``mutate_file``: safetensors headers as
JSON with the length kept right, GGUF fields through ``split_gguf``/``join_gguf``, zip members
of ``torch.save`` files, pickles, JSON), sometimes the folder itself (a file removed, turned
into a folder or a FIFO, replaced by a link inside or out, or a stray copy added).
"""

from __future__ import annotations

import io
import os
import random
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

from .gguf_bytes import ARRAY, STRING, Field, Info, join_gguf, split_gguf
from .mutate import EDGE_INTS, EDGE_STRINGS, mutate_bytes, mutate_json, mutate_pickle


class Special(NamedTuple):
    """A folder entry that is not a regular file: ``"dir"``, ``"fifo"`` or ``"link"``."""

    kind: str
    target: str = ""  # a link's target, as written into the link


Tree = dict[str, bytes | Special]
OUTSIDE = "../outside.safetensors"  # beside every case folder: a link there leaves the folder


def write_tree(root: Path, tree: Tree) -> None:
    """Create ``tree`` under ``root`` (which must exist)."""
    for rel, entry in sorted(tree.items(), key=lambda kv: isinstance(kv[1], Special)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(entry, bytes):
            path.write_bytes(entry)
        elif entry.kind == "dir":
            path.mkdir(exist_ok=True)
        elif entry.kind == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to(entry.target)


def read_tree(root: Path) -> Tree:
    """The regular files (and links) below ``root``, as a ``Tree``."""
    tree: Tree = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            tree[rel] = Special("link", os.readlink(path))
        elif path.is_file():
            tree[rel] = path.read_bytes()
    return tree


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """The header as JSON (length and padding kept right), else its length, else bytes."""
    if len(data) < 8:
        return mutate_bytes(data, rng)
    (n,) = struct.unpack_from("<Q", data)
    header, rest = data[8 : 8 + n], data[8 + n :]
    roll = rng.random()
    if roll < 0.65 and 8 + n <= len(data):
        new = mutate_json(header, rng)
        new += b" " * (-len(new) % 8)
        return struct.pack("<Q", len(new)) + new + rest
    if roll < 0.75:
        edge = rng.choice([n + 1, n - 1, n + 8, 0, len(data), 100 * 2**20 + 1,
                           *EDGE_INTS]) % 2**64
        return struct.pack("<Q", edge) + data[8:]
    if roll < 0.85 and rest:  # the tensor bytes: values a reader must not trust
        return data[: 8 + n] + mutate_bytes(rest, rng)
    return mutate_bytes(data, rng)


# fp16 bit patterns a block's scale may hold: inf, nan, the largest, the smallest subnormal
_F16_EDGES = [b"\x00\x7c", b"\x00\x7e", b"\xff\x7b", b"\x01\x00", b"\x00\xfc"]


def _mutate_info(i: Info, others: list[Info], rng: random.Random) -> Info:
    roll = rng.random()
    if roll < 0.4 and i.dims:
        dims = list(i.dims)
        k = rng.randrange(len(dims))
        dims[k] = rng.choice([0, 1, dims[k] * 2, dims[k] // 2, dims[k] + 1, dims[k] * 32,
                              2**31, 2**32, 2**59, 2**60, 2**62, 2**63, 2**64 - 1])
        if rng.random() < 0.3:  # a 0 beside: the tensor holds no bytes, so no range fails
            dims[(k + 1) % len(dims)] = 0 if len(dims) > 1 else dims[k]
        return i._replace(dims=tuple(dims))
    if roll < 0.5:
        dims = i.dims + (rng.choice([1, 2, 0, 2**40]),) if rng.random() < 0.5 else i.dims[:-1]
        return i._replace(dims=dims[:6])
    if roll < 0.7:
        return i._replace(type_id=rng.choice([0, 1, 2, 8, 10, 12, 14, 16, 24, 30, 39, 255,
                                              2**32 - 1]))
    if roll < 0.85:
        other = rng.choice(others).offset
        return i._replace(offset=rng.choice([0, i.offset + 1, i.offset + 32, other, 2**63,
                                             2**64 - 1, i.offset - 32]) % 2**64)
    names = [b"", b"\xff\xfe", b"x" * 300, rng.choice(others).name, b"a\0b"]
    return i._replace(name=rng.choice(names))


def _mutate_field(f: Field, rng: random.Random) -> Field:
    roll = rng.random()
    if roll < 0.2:
        return f._replace(vtype=rng.choice([0, 4, 6, 7, 8, 9, 10, 12, 13, 255]))
    if f.vtype == STRING and roll < 0.6:
        (n,) = struct.unpack_from("<Q", f.value)
        text = f.value[8 : 8 + n]
        if text[:1] in (b"{", b"["):  # JSON held in a string: mlmf.tied, mlmf.json values
            text = mutate_json(text, rng)
        else:
            text = rng.choice(EDGE_STRINGS).encode("utf-8", "surrogatepass")
        length = len(text) if rng.random() < 0.9 else rng.choice(EDGE_INTS) % 2**64
        return f._replace(value=struct.pack("<Q", length) + text)
    if f.vtype == ARRAY and roll < 0.6 and len(f.value) >= 12:
        item, count = struct.unpack_from("<IQ", f.value)
        if rng.random() < 0.5:
            count = rng.choice([0, count + 1, count * 2, 2**32, 2**61, 2**64 - 1])
        else:
            item = rng.choice([0, 4, 8, 9, 12, 13])
        return f._replace(value=struct.pack("<IQ", item, count) + f.value[12:])
    if f.key == b"general.alignment" or roll < 0.7:
        edge = rng.choice([0, 1, 3, 8, 64, 2**31, 2**32 - 1])
        return f._replace(key=b"general.alignment", vtype=4, value=struct.pack("<I", edge))
    return f._replace(value=mutate_bytes(f.value, rng))


def mutate_gguf(data: bytes, rng: random.Random) -> bytes:
    """One GGUF field changed (a tensor's dims, type, offset or name; a key/value's type,
    length, count or JSON; the counts, version or alignment; block scales), or bytes."""
    try:
        p = split_gguf(data)
    except (struct.error, ValueError, OverflowError, MemoryError):  # mutated before
        return mutate_bytes(data, rng)
    roll = rng.random()
    counts = None
    if roll < 0.4 and p.infos:
        k = rng.randrange(len(p.infos))
        p.infos[k] = _mutate_info(p.infos[k], p.infos, rng)
    elif roll < 0.65 and p.fields:
        k = rng.randrange(len(p.fields))
        p.fields[k] = _mutate_field(p.fields[k], rng)
        if rng.random() < 0.1:
            p.fields.append(p.fields[k])  # a key twice
    elif roll < 0.72:
        counts = (len(p.infos) + rng.choice([-1, 1, 2**20, 2**62]),
                  len(p.fields) + rng.choice([-1, 0, 1, 2**40]))
        counts = (max(counts[0], 0) % 2**64, max(counts[1], 0) % 2**64)
    elif roll < 0.76:
        p = p._replace(version=rng.choice([1, 2, 4, 3 << 24, 2**32 - 1]))
    elif roll < 0.9 and p.data:  # the tensor bytes: block scales set to inf, nan, extremes
        out = bytearray(p.data)
        for _ in range(rng.choice([1, 4, 16])):
            at = rng.randrange(max(len(out) - 1, 1))
            out[at : at + 2] = rng.choice(_F16_EDGES)
        p = p._replace(data=bytes(out[: len(p.data)]))
    else:
        return mutate_bytes(data, rng)
    return join_gguf(p, counts)


def mutate_zip(data: bytes, rng: random.Random) -> bytes:
    """A ``torch.save`` zip with one member changed (its pickle, a storage, the version,
    the byte order) and written back as a valid zip; bytes when it is not a zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = [(i.filename, z.read(i)) for i in z.infolist()]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return mutate_bytes(data, rng)
    if not members or rng.random() < 0.2:
        return mutate_bytes(data, rng)
    k = rng.randrange(len(members))
    name, body = members[k]
    if name.endswith(".pkl"):
        body = mutate_pickle(body, rng)
    elif name.endswith(("version", "byteorder")):
        body = rng.choice([b"big", b"1", b"99\n", b"", b"little\x00", b"-1"])
    elif rng.random() < 0.5:
        body = body[: rng.randrange(len(body) + 1)]  # a storage shorter than its tensor
    else:
        body = mutate_bytes(body, rng)
    members[k] = (name, body)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for member, content in members:
            z.writestr(member, content)
    return out.getvalue()


def mutate_file(name: str, data: bytes, rng: random.Random) -> bytes:
    """``data`` (the file ``name``) mutated as its kind: by suffix, then by content."""
    if not data or rng.random() < 0.1:
        return mutate_bytes(data, rng)
    if name.endswith(".json"):
        return mutate_json(data, rng)
    if name.endswith(".safetensors"):
        return mutate_safetensors(data, rng)
    if data[:4] == b"GGUF":
        return mutate_gguf(data, rng)
    if data[:4] == b"PK\x03\x04":
        return mutate_zip(data, rng)
    if data[:1] == b"\x80" or name.endswith(".metadata"):
        return mutate_pickle(data, rng)
    return mutate_bytes(data, rng)


def mutate_tree(tree: Tree, rng: random.Random, focus: tuple[str, ...] = ()) -> Tree:
    """One to three changes to a folder; ``focus`` names (suffixes) are mutated most."""
    out = dict(tree)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        files = sorted(k for k, v in out.items() if isinstance(v, bytes))
        if not files:
            break
        hot = [f for f in files if f.endswith(focus)] if focus else []
        rel = rng.choice(hot if hot and rng.random() < 0.7 else files)
        roll = rng.random()
        if roll < 0.86:
            out[rel] = mutate_file(rel, out[rel], rng)  # type: ignore[arg-type]
        elif roll < 0.89:
            del out[rel]
        elif roll < 0.92:
            out[rel] = Special(rng.choice(["dir", "fifo"]))
        elif roll < 0.95:
            depth = rel.count("/")
            out[rel] = Special("link", "../" * depth + OUTSIDE)
        elif roll < 0.97:
            out[rel] = Special("link", os.path.basename(rng.choice(files)))
        else:
            stem = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
            out[stem + rng.choice(["copy.safetensors", "extra.gguf", "x.bin",
                                   "b.safetensors.index.json"])] = out[rel]
    return out
