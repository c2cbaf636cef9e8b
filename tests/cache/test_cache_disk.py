"""The content-addressed disk tier and ``mlmf-lab cache ls|prune``."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab import atomic
from mlmf_lab.cache.disk import DiskCache, derive_key, parse_age
from mlmf_lab.cli import main
from mlmf_lab.errors import ChecksumError, ConfigError, MLMFError


def state(seed: int, n: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(n, generator=g), "b": torch.randn(8, generator=g)}


def age(cache: DiskCache, key: str, seconds: float) -> None:
    """Pretend ``key`` was last used ``seconds`` ago."""
    t = time.time() - seconds
    os.utime(cache.root / "refs" / f"{key}.json", (t, t))


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c")
    entry = cache.put_tensors("deq-a", state(0), meta={"operation": "dequantize"})
    data = entry.path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()  # reference: the bytes' own hash
    assert entry.files == {"model.safetensors": sha} and entry.size == len(data)
    assert (tmp_path / "c" / "blobs" / sha).read_bytes() == data
    assert entry.path == tmp_path / "c" / "snapshots" / "deq-a" / entry.rev / "model.safetensors"
    assert os.stat(entry.path).st_ino == os.stat(tmp_path / "c" / "blobs" / sha).st_ino
    got = cache.get("deq-a")
    assert got is not None and got.meta == {"operation": "dequantize"}
    torch.testing.assert_close(ml.load_state_dict(got.path), state(0), rtol=0, atol=0)
    assert cache.get("absent") is None and "deq-a" in cache and "absent" not in cache
    assert list(os.scandir(tmp_path / "c" / "tmp")) == []


def test_identical_files_are_stored_once(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c")
    a = cache.put_tensors("a", state(1))
    b = cache.put_tensors("b", state(1))
    assert a.files == b.files and len(list((tmp_path / "c" / "blobs").iterdir())) == 1
    assert cache.total_bytes() == a.size
    assert cache.remove("a") and cache.total_bytes() == b.size  # b still holds the blob
    assert cache.remove("b") and cache.total_bytes() == 0 and not cache.remove("b")


def test_sharded_folder_artifact_loads_from_its_snapshot(tmp_path: Path) -> None:
    src = tmp_path / "merged"
    ml.save_state_dict(state(2, 4096), src, max_shard_size=10_000)
    cache = DiskCache(tmp_path / "c")
    entry = cache.put("merged", src)
    assert entry.path.is_dir() and len(entry.files) == 3  # index + two shards
    assert src.is_dir() and len(list(src.iterdir())) == 3  # copied, not moved
    torch.testing.assert_close(ml.load_state_dict(entry.path), state(2, 4096), rtol=0, atol=0)


def test_get_or_create_builds_once(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c")
    built: list[Path] = []

    def build(p: Path) -> None:
        built.append(p)
        ml.save_state_dict(state(3), p)

    first = cache.get_or_create("k", build)
    second = cache.get_or_create("k", build)
    assert len(built) == 1 and first.path == second.path and second.last_used >= first.last_used
    with pytest.raises(MLMFError, match="wrote nothing"):
        cache.get_or_create("empty", lambda p: None)


def test_a_failed_write_leaves_the_previous_entry(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = DiskCache(tmp_path / "c")
    old = cache.put_tensors("k", state(4))

    def crash(p: Path) -> None:
        ml.save_state_dict(state(5), p)
        raise RuntimeError("killed while building")

    with pytest.raises(RuntimeError):
        cache.get_or_create("k", crash, force=True)
    # crash after the snapshot, before the ref: the ref still names the old blobs
    real = atomic.replacing

    def failing(path: Path):  # type: ignore[no-untyped-def]
        if path.suffix == ".json":
            raise OSError("disk full")
        return real(path)

    monkeypatch.setattr(atomic, "replacing", failing)
    with pytest.raises(OSError, match="disk full"):
        cache.put_tensors("k", state(6))
    monkeypatch.setattr(atomic, "replacing", real)
    assert cache.verify("k").files == old.files
    got = cache.get("k")
    assert got is not None and got.path == old.path
    torch.testing.assert_close(ml.load_state_dict(got.path), state(4), rtol=0, atol=0)
    assert list((tmp_path / "c" / "tmp").iterdir()) == []
    cache.prune()  # collects the blob the failed write left behind
    assert {p.name for p in (tmp_path / "c" / "blobs").iterdir()} == set(old.files.values())
    assert [p.name for p in (tmp_path / "c" / "snapshots" / "k").iterdir()] == [old.rev]


def test_prune_by_age_then_by_size_least_recently_used_first(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c")
    sizes = {k: cache.put_tensors(k, state(i)).size for i, k in enumerate("abcd")}
    for k, days in {"a": 10, "b": 3, "c": 2, "d": 1}.items():
        age(cache, k, days * 86400)
    dry = cache.prune(older_than="7d", dry_run=True)
    assert [e.key for e in dry.removed] == ["a"] and "a" in cache
    report = cache.prune(max_bytes=2 * sizes["c"] + 1, older_than="7d")
    assert [e.key for e in report.removed] == ["a", "b"]
    assert [e.key for e in cache.ls()] == ["d", "c"]
    assert report.freed_bytes == sizes["a"] + sizes["b"]
    assert report.remaining_bytes == cache.total_bytes() == sizes["c"] + sizes["d"]


def test_verify_detects_corruption_and_keys_are_checked(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c")
    entry = cache.put_tensors("k", state(7))
    blob = tmp_path / "c" / "blobs" / entry.files["model.safetensors"]
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x7f")
    with pytest.raises(ChecksumError, match="model.safetensors: expected sha256"):
        cache.verify("k")
    with pytest.raises(ConfigError, match=r"key must match .* found '\.\./evil'"):
        cache.put_tensors("../evil", state(0))
    with pytest.raises(ConfigError, match="7d"):
        parse_age("soon")
    assert parse_age("12h") == 43200 and parse_age(5) == 5


def test_derive_key_follows_the_source_file(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    ml.save_state_dict(state(0), src)
    k1 = derive_key("dequantize", [src], {"dtype": "float16"})
    assert k1 == derive_key("dequantize", [str(src)], {"dtype": "float16"})
    assert k1 != derive_key("dequantize", [src], {"dtype": "bfloat16"})
    ml.save_state_dict(state(1), src)
    assert derive_key("dequantize", [src], {"dtype": "float16"}) != k1
    assert k1.startswith("dequantize-")


def test_cli_ls_and_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "c"
    cache = DiskCache(root)
    for i, k in enumerate(["old", "new"]):
        cache.put_tensors(k, state(i), meta={"operation": "merge"})
    age(cache, "old", 30 * 86400)
    assert main(["cache", "ls", "--root", str(root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in listed["entries"]] == ["new", "old"]
    assert listed["total_bytes"] == cache.total_bytes()
    assert main(["cache", "ls", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "merge" in text and "2 entries" in text
    assert main(["cache", "prune", "--root", str(root), "--older-than", "7d", "--dry-run"]) == 0
    assert "would remove 1 entries" in capsys.readouterr().out and "old" in cache
    assert main(["cache", "prune", "--root", str(root), "--older-than", "7d", "--json"]) == 0
    assert [e["key"] for e in json.loads(capsys.readouterr().out)["removed"]] == ["old"]
    assert main(["cache", "prune", "--root", str(root), "--max-bytes", "1B"]) == 0
    assert cache.ls() == [] and cache.total_bytes() == 0
    assert main(["cache", "prune", "--root", str(root), "--max-bytes", "lots"]) == 1
    assert "max_bytes must be" in capsys.readouterr().err
