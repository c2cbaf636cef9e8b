"""What a fuzz case runs: one ``Target`` per reader, each using it the way a user would.

A target names its seeds (``seeds.build_seeds`` writes one folder per target), what the
reader is given (``entry``, relative to a variant's folder), the files the mutator favours
(``focus``), an optional ``prepare`` run on the written case (the checkpoint manifest
re-hashed to match, as an attacker would; the lineage store changed through SQL), and
``run``: open, read every tensor, load the adapter and run the model, restore the
checkpoint, query the store. The only outcomes allowed are success and an ``MLMFError``
naming a file of the case.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

import mlmf_lab as ml
from mlmf_lab.errors import MLMFError

from .seeds import Tiny, training_parts


class Target(NamedTuple):
    name: str
    entry: str  # what the reader gets, relative to the case folder
    run: Callable[[Path, random.Random], None]
    focus: tuple[str, ...] = ()  # suffixes of the files mutated most
    prepare: Callable[[Path, random.Random], None] | None = None


def read_weights(path: Path, rng: random.Random) -> None:
    """Open, then every tensor as ``tensor`` and ``raw``, the spans, the state dict."""
    with ml.open_weights(path) as wf:
        for name in wf:
            wf.tensor(name)
            wf.raw(name)
            wf.spans(name)
        wf.state_dict()
        repr(wf)


def read_gguf(path: Path, rng: random.Random) -> None:
    """Both header readers (ours, then ``gguf.GGUFReader`` behind it); blocks dequantized
    by the C kernels (the fuzz driver loads them before it forks)."""
    read_weights(path, rng)
    with ml.open_weights(path, reader="gguf") as wf:
        for name in wf:
            wf.tensor(name)


def load_adapter(path: Path, rng: random.Random) -> None:
    """The adapter into a fresh model, then a forward pass (the scaling in use)."""
    model = Tiny()
    ml.lora.load_peft_adapter(model, path)
    with torch.no_grad():
        model(torch.ones(2, 8))


def rehash_manifest(root: Path, rng: random.Random) -> None:
    """Most times, make the manifest match the mutated files (sizes and sha256), as someone
    who can write the folder can: the checks behind the manifest are then what is tested."""
    if rng.random() < 0.3:
        return
    for manifest in root.rglob("manifest.json"):
        if not manifest.is_file():  # a FIFO would block this very read
            continue
        try:
            doc = json.loads(manifest.read_bytes())
            for name, entry in doc["files"].items():
                f = manifest.parent / name
                if f.is_file() and not f.is_symlink():
                    data = f.read_bytes()
                    entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            manifest.write_text(json.dumps(doc))
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError, OSError):
            pass  # the manifest itself is what was damaged


def restore_checkpoint(path: Path, rng: random.Random) -> None:
    """List, verify, and load weights, optimizer, scheduler and RNG (verified or not)."""
    cm = ml.CheckpointManager(path, keep_last=None)
    cm.list()
    model = Tiny()
    opt, sched = training_parts(model)
    cm.load(model, optimizer=opt, scheduler=sched, verify=rng.random() < 0.5)
    cm.state_dict(verify=False)


_SQL = [
    "UPDATE {t} SET {c} = 'not json {{' WHERE rowid = (SELECT min(rowid) FROM {t})",
    "UPDATE {t} SET {c} = X'00FF' WHERE rowid = (SELECT max(rowid) FROM {t})",
    "UPDATE {t} SET {c} = 99999999999999999 WHERE rowid = (SELECT min(rowid) FROM {t})",
    "UPDATE {t} SET {c} = NULL",
    "UPDATE {t} SET {c} = '[1, 2]'",
    "DELETE FROM {t}",
    "DROP TABLE {t}",
    "ALTER TABLE {t} RENAME TO {t}_old",
    "CREATE TABLE zz_{t}(x)",
    "PRAGMA user_version = 77",
    "PRAGMA application_id = 12345",
]


def tamper_store(root: Path, rng: random.Random) -> None:
    """Half the time, change the store through SQL (as another program could): values that
    are not JSON, rows gone, tables dropped or renamed, foreign marks."""
    db = root / "lineage.db"
    if rng.random() < 0.5 or not db.is_file():
        return
    try:
        with sqlite3.connect(db) as c:
            tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master "
                                              "WHERE type = 'table'")]
            if not tables:
                return
            t = rng.choice(tables)
            columns = [r[1] for r in c.execute(f"PRAGMA table_info({t})")] or ["rowid"]
            c.execute(rng.choice(_SQL).format(t=t, c=rng.choice(columns)))
        c.close()
    except (sqlite3.Error, UnicodeDecodeError):
        pass  # the file was damaged before: the mutation stands as it is


def query_lineage(path: Path, rng: random.Random) -> None:
    """Open the store, list it, walk each entity's history, build the graph and PROV."""
    lin = ml.Lineage(path)
    try:
        entities = lin.entities()
        lin.activities()
        for e in entities[:4]:
            lin.history(e)
            lin.ancestors(e)
        lin.graph()
        lin.to_prov()
    finally:
        lin.close()


TARGETS = {t.name: t for t in [
    Target("safetensors", "x.safetensors", read_weights),
    Target("sharded", "model", read_weights, (".json",)),
    Target("gguf", "x.gguf", read_gguf),
    Target("bin", "x.bin", read_weights),
    Target("peft", "adapter", load_adapter, (".json",)),
    Target("checkpoint", "run", restore_checkpoint, (".json",), rehash_manifest),
    Target("lineage", "lineage.db", query_lineage, (), tamper_store),
    Target("dcp", "x.dcp", read_weights, (".metadata",)),
]}


# -- the harness checks itself: each of these must be reported as what it is ---------------
def _raise(path: Path, rng: random.Random) -> None:
    raise KeyError("deep inside")


def _hang(path: Path, rng: random.Random) -> None:
    time.sleep(30)


def _allocate(path: Path, rng: random.Random) -> None:
    bytearray(64 * 2**30)


def _crash(path: Path, rng: random.Random) -> None:
    import ctypes

    ctypes.string_at(0)


def _anonymous(path: Path, rng: random.Random) -> None:
    raise MLMFError("an error that names no file")


def _named(path: Path, rng: random.Random) -> None:
    raise MLMFError("an error that names its file", path)


SELFTESTS = {t.name: t for t in [
    Target("selftest-ok", "", lambda path, rng: None),
    Target("selftest-named", "x", _named),
    Target("selftest-raise", "", _raise),
    Target("selftest-hang", "", _hang),
    Target("selftest-memory", "", _allocate),
    Target("selftest-crash", "", _crash),
    Target("selftest-anonymous", "", _anonymous),
]}
# imported by the driver before it forks: a lazy import in every child costs 0.1-0.6 s
PRELOAD = ("torch.distributed.checkpoint", "torch._dynamo", "networkx", "prov.model",
           "mlmf_lab.checkpoint", "mlmf_lab.lora", "mlmf_lab.provenance.lineage")
ALLOWED = ("ok", "mlmf")  # success, or an MLMFError naming a file of the case

