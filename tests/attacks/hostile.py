"""Hostile inputs that once got past a reader, one builder each (issue 20 and the fuzzer).

Each builder writes its case into a fresh folder and returns what the reader is given.
Weight files are read by ``read_weights`` (open, every tensor, the state dict), adapter
folders by ``load_adapter`` into ``seeds.Tiny``, checkpoints by ``restore_checkpoint``;
the tests (``test_hostile_*.py``) expect one ``MLMFError`` subclass and message each.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import mlmf_lab as ml

from .gguf_bytes import STRING, gguf_bytes, info, kv, s
from .seeds import Tiny, training_parts

DEEP = "[" * 50_000 + "]" * 50_000  # RecursionError in json.loads
NESTED = "[" * 100 + "]" * 100  # parses, but deeper than any reader walks (MAX_JSON_DEPTH)
HUGE_INT = "9" * 5000  # ValueError in json.loads: more than 4300 digits


# -- safetensors and sharded folders -----------------------------------------------------
def st_raw(header: str, data: bytes = b"") -> bytes:
    """A safetensors file from the header's text as it is (nothing re-encoded)."""
    raw = header.encode("utf-8", "surrogatepass")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def with_metadata(meta: dict[str, str]) -> bytes:
    """A one-tensor file whose ``__metadata__`` holds ``meta`` (texts as they are)."""
    header = {"__metadata__": {"format": "pt", **meta},
              "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    return st_raw(json.dumps(header), b"\0" * 8)


def safetensors_file(data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / "x.safetensors").write_bytes(data)
        return folder / "x.safetensors"
    return build


def sharded(edit: Callable[[dict[str, Any], Path], str | None]) -> Callable[[Path], Path]:
    """A two-shard folder whose index ``edit`` changes (it may return the index's new text)."""
    def build(folder: Path) -> Path:
        model = folder / "model"
        ml.save_state_dict({f"w{i}": torch.full((64,), float(i)) for i in range(4)}, model,
                           max_shard_size=600)
        index = model / "model.safetensors.index.json"
        doc = json.loads(index.read_text())
        text = edit(doc, model)
        index.write_text(text if text is not None else json.dumps(doc), encoding="utf-8",
                         errors="surrogatepass")
        return model
    return build


def shard_named(name: Any) -> Callable[[dict[str, Any], Path], None]:
    def edit(doc: dict[str, Any], model: Path) -> None:
        doc["weight_map"]["w3"] = name
    return edit


def fifo_shard(doc: dict[str, Any], model: Path) -> None:
    os.mkfifo(model / "pipe.safetensors")
    doc["weight_map"]["w3"] = "pipe.safetensors"


def subfolder_shard(doc: dict[str, Any], model: Path) -> None:
    (model / "sub").mkdir()
    doc["weight_map"]["w3"] = "sub"


def fifo_file(folder: Path) -> Path:
    os.mkfifo(folder / "x.safetensors")
    return folder / "x.safetensors"


# -- GGUF -----------------------------------------------------------------------------------
def gguf_dims(dims: tuple[int, ...], type_id: int) -> Callable[[Path], Path]:
    """A tensor of ``dims`` (innermost first) holding 0 bytes: a 0 beside a huge value."""
    def build(folder: Path) -> Path:
        data = gguf_bytes([kv("general.architecture", STRING, s("llama"))],
                          [info("w", dims, type_id)], b"\0" * 32)
        (folder / "x.gguf").write_bytes(data)
        return folder / "x.gguf"
    return build


def gguf_meta(key: str, text: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        kvs = [kv("general.architecture", STRING, s("llama")), kv(key, STRING, s(text))]
        if key != "mlmf.tied":
            kvs.append(kv("mlmf.json", 9, struct.pack("<IQ", STRING, 1) + s(key)))
        (folder / "x.gguf").write_bytes(gguf_bytes(kvs, [info("w", (4,))], b"\0" * 16))
        return folder / "x.gguf"
    return build


# -- PyTorch pickles (.bin) -------------------------------------------------------------------
def legacy(main: bytes, keys: bytes = pickle.dumps([], protocol=2), data: bytes = b"") -> bytes:
    """torch's legacy (pre-zip) layout: magic, protocol and system-info pickles, the objects'
    pickle, the storage keys' pickle, then each storage's bytes."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION,
                                                           sys_info))
    return head + main + keys + data


def storage_claim(numel: int) -> bytes:
    """One float tensor of 2 elements whose storage claims ``numel`` elements (4 bytes each)."""
    main = (b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02("
            b"(X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x00k"
            b"X\x03\x00\x00\x00cpu" + b"J" + struct.pack("<i", numel) + b"Ntq\x05QK\x00K\x02"
            b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rtq\x06Rq\x07s.")
    return legacy(main, pickle.dumps(["k"], protocol=2),
                  struct.pack("<q", 2) + struct.pack("<2f", 1.0, 2.0))


def multi_disk_zip() -> bytes:
    """A ``torch.save`` zip whose zip64 end locator claims two disks: ``zipfile.is_zipfile``
    raises ``BadZipFile`` for it instead of answering False."""
    import io

    buf = io.BytesIO()
    torch.save({"a": torch.ones(2)}, buf)
    data = bytearray(buf.getvalue())
    at = data.rfind(b"PK\x06\x07")
    data[at + 16 : at + 20] = struct.pack("<I", 2)
    return bytes(data)


def bin_file(data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / "x.bin").write_bytes(data)
        return folder / "x.bin"
    return build


# -- DCP folders ------------------------------------------------------------------------------
def dcp_folder(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        ml.save_state_dict({"a": torch.ones(3, 4), "b": torch.arange(5)}, folder / "x.dcp")
        edit(folder / "x.dcp")
        return folder / "x.dcp"
    return build


def drop_field(field: str) -> Callable[[Path], None]:
    """``.metadata`` rewritten with tensor ``a``'s record lacking ``field`` (a pickle can
    build a record with any fields: DCP's own classes take their state as given)."""
    def edit(dcp: Path) -> None:
        md = ml.formats.dcp.read_metadata(dcp)
        delattr(md.state_dict_metadata["a"], field)
        (dcp / ".metadata").write_bytes(pickle.dumps(md))
    return edit


def huge_frame(dcp: Path) -> None:
    (dcp / ".metadata").write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x")


def zero_data(dcp: Path) -> None:
    for f in dcp.glob("*.distcp"):
        f.write_bytes(b"\0" * f.stat().st_size)


# -- PEFT adapter folders ---------------------------------------------------------------------
def adapter(**config: Any) -> Callable[[Path], Path]:
    """A valid adapter for ``Tiny`` whose ``adapter_config.json`` gets ``config`` (a value
    given as ``RawJSON`` is spliced in as text)."""
    def build(folder: Path) -> Path:
        model = Tiny()
        ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj", "v_proj"])
        path = ml.lora.save_peft_adapter(model, folder / "adapter")
        doc = json.loads((path / "adapter_config.json").read_text())
        raw = {k: v for k, v in config.items() if isinstance(v, RawJSON)}
        doc.update({k: (f"@{k}@" if k in raw else v) for k, v in config.items()})
        text = json.dumps(doc)
        for k, v in raw.items():
            text = text.replace(json.dumps(f"@{k}@"), v.text)
        (path / "adapter_config.json").write_text(text)
        return path
    return build


class RawJSON:
    def __init__(self, text: str) -> None:
        self.text = text


def load_adapter(path: Path) -> None:
    model = Tiny()
    ml.lora.load_peft_adapter(model, path)
    with torch.no_grad():
        model(torch.ones(2, 8))


# -- checkpoint folders -----------------------------------------------------------------------
def checkpoint(edit: Callable[[Path], None], rehash: bool = True) -> Callable[[Path], Path]:
    """A checkpoint of ``Tiny`` (AdamW, StepLR) whose step folder ``edit`` changes; the
    manifest is then made to match (as anyone who can write the folder can)."""
    def build(folder: Path) -> Path:
        model = Tiny()
        opt, sched = training_parts(model)
        model(torch.randn(3, 8)).sum().backward()
        opt.step()
        sched.step()
        root = folder / "run"
        rec = ml.CheckpointManager(root).save(model, 1, optimizer=opt, scheduler=sched)
        edit(rec.path)
        if rehash:
            rehash_manifest(rec.path)
        return root
    return build


def rehash_manifest(step: Path) -> None:
    manifest = step / "manifest.json"
    doc = json.loads(manifest.read_text())
    for name, entry in doc["files"].items():
        f = step / name
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    manifest.write_text(json.dumps(doc))


def write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def edit(step: Path) -> None:
        (step / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return edit


def edit_json(name: str, fn: Callable[[Any], Any]) -> Callable[[Path], None]:
    def edit(step: Path) -> None:
        doc = json.loads((step / name).read_text())
        new = fn(doc)
        (step / name).write_text(json.dumps(doc if new is None else new))
    return edit


def replace_with(name: str, kind: str) -> Callable[[Path], None]:
    def edit(step: Path) -> None:
        target = step / name
        target.unlink()
        if kind == "dir":
            target.mkdir()
        elif kind == "outside":
            outside = step.parent.parent / "elsewhere.json"
            outside.write_text((step / "meta.json").read_text())
            target.symlink_to(outside)
    return edit


def unlisted(name: str) -> Callable[[Path], None]:
    """``name`` removed, and from the manifest too: verification passes, the reader finds
    nothing."""
    def edit(step: Path) -> None:
        (step / name).unlink()
        doc = json.loads((step / "manifest.json").read_text())
        del doc["files"][name]
        (step / "manifest.json").write_text(json.dumps(doc))
    return edit


def restore_checkpoint(root: Path) -> None:
    model = Tiny()
    opt, sched = training_parts(model)
    ml.CheckpointManager(root).load(model, optimizer=opt, scheduler=sched, verify=True)


# -- lineage stores ---------------------------------------------------------------------------
def lineage_store(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
    """A store that recorded a save and a load, then changed by ``edit(db)``."""
    def build(folder: Path) -> Path:
        db = folder / "lineage.db"
        with ml.Lineage(db):
            ml.save_state_dict({"a": torch.ones(2)}, folder / "a.safetensors")
            ml.load_state_dict(folder / "a.safetensors")
        edit(db)
        return db
    return build


def self_link(db: Path) -> None:
    db.unlink()
    db.symlink_to(db.name)


def fifo_store(db: Path) -> None:
    db.unlink()
    os.mkfifo(db)


def blob_entity(db: Path) -> None:
    import sqlite3

    with sqlite3.connect(db) as c:
        c.execute("UPDATE usages SET entity = X'00FF' WHERE rowid = (SELECT min(rowid) "
                  "FROM usages)")
    c.close()


def unknown_role(db: Path) -> None:
    """A usage whose role is neither "used" nor "generated" (the CHECK switched off)."""
    import sqlite3

    with sqlite3.connect(db) as c:
        c.execute("PRAGMA ignore_check_constraints = ON")
        c.execute("UPDATE usages SET role = 'other'")
    c.close()


def query_lineage(db: Path) -> None:
    lin = ml.Lineage(db)
    try:
        lin.entities()
        lin.activities()
    finally:
        lin.close()
