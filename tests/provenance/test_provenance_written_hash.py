"""A recorded save takes its tensor hash from the writer, computed from the memory it wrote,
instead of reading the file back (issue 21); the hash is the one the file gives."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab import events
from mlmf_lab.files import CHUNK
from mlmf_lab.formats import safetensors as st_format
from mlmf_lab.formats.safetensors import encode_safetensors
from mlmf_lab.provenance.lineage import Lineage, file_tensor_hash, state_hash
from mlmf_lab.provenance.lineage import store as store_module


def varied_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {
        "a.weight": torch.randn(6, 4, generator=g),
        "b.empty": torch.zeros(0, 3),
        "c.codes": torch.arange(-5, 5, dtype=torch.int8),
        "d.half": torch.randn(7, generator=g).half(),
        "e.bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f.transposed": torch.randn(3, 5, generator=g).t(),  # not contiguous
        "g.mask": torch.tensor([True, False, True]),
        "h.scalar": torch.tensor(2.5),
    }
    sd["z.tied"] = sd["a.weight"]  # stored once, as in the file
    return sd


def no_reading_back(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make the store fail if it hashes ``path`` by reading it."""
    real = store_module.content_hash

    def content_hash(p: Any) -> Any:
        if Path(p).resolve() == path.resolve():
            raise AssertionError(f"{p} was read back to hash it")
        return real(p)

    monkeypatch.setattr(store_module, "content_hash", content_hash)


@pytest.mark.parametrize("check", ["stamp", "content"])
def test_a_recorded_save_takes_the_writers_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                check: str) -> None:
    sd, dst = varied_state(), tmp_path / "out.safetensors"
    no_reading_back(monkeypatch, dst)
    with Lineage(tmp_path / "lineage.db", check=check) as lin:
        ml.save_state_dict(sd, dst)
    monkeypatch.undo()
    entity = lin.entity(dst)
    assert entity.sha256 == file_tensor_hash(dst).sha256 == state_hash(sd).sha256
    lin.close()


def test_a_conversion_records_the_hash_its_nested_save_computed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ml.save_state_dict(varied_state(), src)
    no_reading_back(monkeypatch, dst)
    with Lineage(tmp_path / "lineage.db") as lin:
        ml.convert(src, dst)
    monkeypatch.undo()
    assert lin.entity(dst).sha256 == file_tensor_hash(dst).sha256
    assert [a.name for a in lin.history(dst).steps] == ["convert"]
    lin.close()


def test_a_quantized_save_is_hashed_from_the_file(tmp_path: Path) -> None:
    """int8 parts are not the tensors given: the store reads the file, as before."""
    dst = tmp_path / "q.safetensors"
    with Lineage(tmp_path / "lineage.db") as lin:
        ml.save_state_dict({"w": torch.randn(8, 32)}, dst, quant="int8")
    assert lin.entity(dst).sha256 == file_tensor_hash(dst).sha256
    lin.close()


def test_nothing_is_hashed_beside_the_write_when_no_store_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(tensors: Any) -> Any:
        raise AssertionError("tensor hash computed with no store recording")

    monkeypatch.setattr(st_format, "tensor_hash_views", refuse)
    assert not events.recording()
    sums = ml.save_state_dict(varied_state(), tmp_path / "x.safetensors")
    assert set(sums) == {"x.safetensors"}


def test_report_hash_reaches_only_the_outermost_open_activity(tmp_path: Path) -> None:
    events.report_hash(tmp_path / "f", "0" * 64, "tensors")  # no activity open: nothing
    seen: list[events.Event] = []
    events.LISTENERS.append(seen.append)
    try:
        with events.activity("convert"):
            assert events.recording()
            with events.activity("save"):
                events.report_hash(tmp_path / "f", "1" * 64, "tensors")
        assert not events.recording()
    finally:
        events.LISTENERS.remove(seen.append)
    assert [e.activity for e in seen] == ["convert"]
    assert seen[0].hashes == {str((tmp_path / "f").resolve()): ("1" * 64, "tensors")}


def test_a_large_recorded_save_hashes_its_tensors_once_the_bytes_are_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past one write chunk the file is hashed in a thread beside the writer; the tensor hash
    starts only when every byte is written, so that it runs while the disk flushes them
    instead of slowing the writing (a third busy thread on two cores)."""
    dst = tmp_path / "big.safetensors"
    sd = {"w": torch.randn(CHUNK // 4 + 1024), "b": torch.randn(10)}  # > CHUNK bytes
    size = len(encode_safetensors(sd, dst)[0]) + sum(t.nbytes for t in sd.values())
    seen: list[int] = []
    real = st_format.sha256_of

    def sha256_of(views: Any) -> str:
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".big.safetensors.")]
        seen.append(tmp.stat().st_size)
        return real(views)

    monkeypatch.setattr(st_format, "sha256_of", sha256_of)
    with Lineage(tmp_path / "lineage.db") as lin:
        sums = ml.save_state_dict(sd, dst)
    assert seen == [size] == [dst.stat().st_size]
    assert lin.entity(dst).sha256 == file_tensor_hash(dst).sha256 == state_hash(sd).sha256
    assert sums == {"big.safetensors": hashlib.sha256(dst.read_bytes()).hexdigest()}
    lin.close()
