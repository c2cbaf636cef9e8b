"""Chunk digests in the manifest (``checkpoint/chunks.py``) and the parallel verified read
(``checkpoint/verify.py``): every byte covered, a damaged chunk named with its byte range,
manifests without chunks still verified whole."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import mlmf_lab as ml
from mlmf_lab.checkpoint import chunks, verify
from mlmf_lab.errors import ChecksumError, FormatError

C = chunks.MIN_CHUNK_SIZE  # 1 MiB chunks: a 4 MiB model spans 5 of them


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK_SIZE", C)


@pytest.fixture(params=[1, 3], ids=["1 thread", "3 threads"])
def threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The verified read with one thread, and with a pool even for these small files."""
    monkeypatch.setattr(verify, "cpu_count", lambda: request.param)
    monkeypatch.setattr(verify, "PARALLEL_MIN", 0)
    return int(request.param)


def make(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(512, 512, bias=i % 2 == 0) for i in range(4)])


def saved(tmp_path: Path) -> tuple[ml.CheckpointManager, Path, nn.Module]:
    model = make(0)
    cm = ml.CheckpointManager(tmp_path)
    rec = cm.save(model, 1)
    return cm, rec.path, model


def manifest(step: Path) -> dict:
    return json.loads((step / "manifest.json").read_text())


def flip(path: Path, *at: int) -> None:
    data = bytearray(path.read_bytes())
    for i in at:
        data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_chunk_digests_are_the_sha256_of_each_byte_range(tmp_path: Path) -> None:
    _, step, _ = saved(tmp_path)
    doc = manifest(step)
    files = doc["files"]
    data = (step / "model.safetensors").read_bytes()
    entry = files["model.safetensors"]
    # listed by its chunks alone: a whole-file sha256 as well would hash every byte twice
    assert entry["size"] == len(data) and "sha256" not in entry and doc["version"] == 2
    assert entry["chunks"]["size"] == C
    expected = [hashlib.sha256(data[i : i + C]).hexdigest() for i in range(0, len(data), C)]
    assert entry["chunks"]["sha256"] == expected and len(expected) == math.ceil(len(data) / C)
    # files of one chunk or less list none: their entry is what it always was
    assert set(files["meta.json"]) == {"sha256", "size"}


def test_chunk_digests_across_views() -> None:
    views = [memoryview(b"x" * 5), memoryview(bytes(range(7))), memoryview(b""), memoryview(b"yz")]
    whole = b"".join(bytes(v) for v in views)
    assert chunks.chunk_digests(views, 4) == [hashlib.sha256(whole[i : i + 4]).hexdigest()
                                              for i in range(0, len(whole), 4)]


def test_a_chunked_verified_load_fills_the_model_in_place(tmp_path: Path, threads: int) -> None:
    cm, _, model = saved(tmp_path)
    fresh = make(1)
    params = dict(fresh.named_parameters())
    cm.load(fresh)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert all(p is params[k] for k, p in fresh.named_parameters())
    cm.verify()


def test_a_tamper_across_a_chunk_boundary_names_the_file_and_range(
        tmp_path: Path, threads: int) -> None:
    cm, step, _ = saved(tmp_path)
    path = step / "model.safetensors"
    n = len(manifest(step)["files"]["model.safetensors"]["chunks"]["sha256"])
    flip(path, 2 * C - 1, 2 * C)  # the last byte of chunk 2 and the first of chunk 3
    first = rf"model\.safetensors: bytes {C}-{2 * C - 1} \(chunk 2 of {n}\): sha256 "
    for _ in range(3):  # the threads race; the first chunk in file order is named each time
        with pytest.raises(ChecksumError, match=first + r".*does not match the manifest.*"
                           "copied in") as err:
            cm.load(make(1))
        assert err.value.path == str(path)
    with pytest.raises(ChecksumError, match=first) as err:
        cm.verify()
    assert "copied in" not in str(err.value)
    flip(path, 2 * C - 1)  # chunk 2 restored: chunk 3 is the one named now
    with pytest.raises(ChecksumError, match=rf"bytes {2 * C}-{3 * C - 1} \(chunk 3 of {n}\)"):
        cm.load(make(1))


def test_the_header_is_covered(tmp_path: Path) -> None:
    """Metadata changed in place still parses; only the first chunk's digest shows it."""
    cm, step, _ = saved(tmp_path)
    path = step / "model.safetensors"
    data = path.read_bytes()
    assert data.count(b'"step":"1"') == 1
    path.write_bytes(data.replace(b'"step":"1"', b'"step":"7"'))
    cm.load(make(1), verify=False)  # a valid file
    with pytest.raises(ChecksumError, match=rf"bytes 0-{C - 1} \(chunk 1 of"):
        cm.load(make(1))


def test_a_manifest_without_chunks_is_verified_whole(tmp_path: Path, threads: int) -> None:
    cm, step, model = saved(tmp_path)
    doc = manifest(step)  # as version 1 wrote it: a whole-file sha256 for every file
    for name, entry in doc["files"].items():
        if entry.pop("chunks", None):
            entry["sha256"] = hashlib.sha256((step / name).read_bytes()).hexdigest()
    doc["version"] = 1
    (step / "manifest.json").write_text(json.dumps(doc))
    fresh = make(1)
    cm.load(fresh)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    flip(step / "model.safetensors", 2 * C)
    with pytest.raises(ChecksumError, match=r"model\.safetensors: sha256 .* does not match the "
                       "manifest.*copied in") as err:
        cm.load(make(1))
    assert "(chunk" not in err.value.message
    with pytest.raises(ChecksumError, match=r"model\.safetensors: sha256"):
        cm.verify()


def test_shards_and_optimizer_state_are_chunked_too(tmp_path: Path, threads: int) -> None:
    model = make(0)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 512)).sum().backward()
    opt.step()
    cm = ml.CheckpointManager(tmp_path, max_shard_size=2 * C)
    rec = cm.save(model, 1, optimizer=opt)
    files = manifest(rec.path)["files"]
    chunked = sorted(n for n, e in files.items() if "chunks" in e)
    assert "optimizer.safetensors" in chunked and len(chunked) >= 3
    fresh = make(1)
    opt2 = torch.optim.AdamW(fresh.parameters())
    cm.load(fresh, optimizer=opt2)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    last = rec.path / chunked[-2]  # a shard, not the optimizer
    flip(last, last.stat().st_size - 1)
    with pytest.raises(ChecksumError, match=rf"{last.name}: bytes \d+-\d+ \(chunk"):
        cm.load(make(1))
    flip(rec.path / "optimizer.safetensors", C + 3)
    with pytest.raises(ChecksumError, match=rf"optimizer\.safetensors: bytes {C}-{2 * C - 1}"):
        cm.load(make(1), optimizer=opt2)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(size=1024), "needs a chunk 'size' of at least 1048576 bytes, found 1024"),
    (lambda c: c.update(size="64MiB"), "needs a chunk 'size'"),
    (lambda c: c["sha256"].pop(), r"must hold \d+ sha256 digests \(one per 1048576 bytes"),
    (lambda c: c.update(sha256="abc"), r"must hold 5 sha256 digests .*, found str"),
    (lambda c: c["sha256"].__setitem__(0, 7), "holds something that is not a hex sha256"),
])
def test_a_malformed_chunk_list_is_refused(tmp_path: Path, edit, message: str) -> None:
    cm, step, _ = saved(tmp_path)
    doc = manifest(step)
    edit(doc["files"]["model.safetensors"]["chunks"])
    (step / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"manifest\.json: the chunk list of "
                       rf"'model\.safetensors' {message}"):
        cm.list()


def test_an_entry_with_neither_sha256_nor_chunks_is_refused(tmp_path: Path) -> None:
    cm, step, _ = saved(tmp_path)
    doc = manifest(step)
    del doc["files"]["model.safetensors"]["chunks"]
    (step / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"manifest\.json: manifest entry for "
                       "'model.safetensors' lacks a size, or a sha256 or chunk list"):
        cm.list()


def test_a_file_that_shrinks_after_the_size_check(tmp_path: Path) -> None:
    """Sizes are checked again on the open descriptor, right before reading."""
    _, step, _ = saved(tmp_path)
    path = step / "model.safetensors"
    entry = manifest(step)["files"]["model.safetensors"]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ChecksumError, match=rf"size {entry['size'] - 8} bytes, the manifest "
                       rf"says {entry['size']}"):
        verify.check_files([(path, entry, ())])
