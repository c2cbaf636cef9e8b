"""Verified checkpoint loads that read each weight file once, hashing it as it is copied in
(``checkpoint/fill.py``): same results as before, every byte still checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import mlmf_lab as ml
from mlmf_lab.checkpoint import files as ckpt_files
from mlmf_lab.errors import ChecksumError, StateDictError


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.tensor(2.0))


def make(seed: int) -> Tied:
    torch.manual_seed(seed)
    return Tied()


def hashed_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files ``verify_manifest`` hashes (by reading them) from now on."""
    seen: list[str] = []
    real = ckpt_files.check_files

    def check_files(files: Any, copied: bool = False) -> None:
        seen.extend(Path(path).name for path, _, _ in files)
        real(files, copied)

    monkeypatch.setattr(ckpt_files, "check_files", check_files)
    return seen


@pytest.mark.parametrize("shard", [None, 2048])
def test_a_verified_load_reads_the_weights_once_into_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard: int | None) -> None:
    saved = make(0)
    kwargs = {} if shard is None else {"max_shard_size": shard}
    cm = ml.CheckpointManager(tmp_path, **kwargs)
    rec = cm.save(saved, 1)
    model = make(1)
    params = {k: v for k, v in model.named_parameters()}
    seen = hashed_files(monkeypatch)
    cm.load(model)
    weights = [n for n in rec.files if n.startswith("model") and n.endswith(".safetensors")]
    assert weights and not set(weights) & set(seen)  # hashed while read, not before
    assert "meta.json" in seen and "rng.json" in seen  # the others: before
    for k, v in saved.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert all(p is params[k] for k, p in model.named_parameters())  # written in place
    assert model.head.weight is model.emb.weight  # still tied


def test_a_damaged_weight_file_is_named_after_the_read(tmp_path: Path) -> None:
    cm = ml.CheckpointManager(tmp_path)
    rec = cm.save(make(0), 1)
    path = rec.path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # in the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"does not match the manifest.*copied in") as err:
        cm.load(make(1))
    assert err.value.path == str(path)


def test_a_damaged_header_is_a_checksum_error_in_a_verified_load(tmp_path: Path) -> None:
    cm = ml.CheckpointManager(tmp_path)
    rec = cm.save(make(0), 1)
    path = rec.path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[9] = ord("[")  # the JSON header no longer parses
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="does not match the manifest"):
        cm.load(make(1))
    with pytest.raises(ml.errors.FormatError):
        cm.load(make(1), verify=False)


def test_a_model_that_loads_its_own_way_is_verified_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BatchNorm has its own _load_from_state_dict: the memory-mapped path, hashed before."""
    torch.manual_seed(0)
    saved = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    saved[1].running_mean.fill_(0.5)
    cm = ml.CheckpointManager(tmp_path)
    cm.save(saved, 1)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    seen = hashed_files(monkeypatch)
    cm.load(model)
    assert "model.safetensors" in seen
    assert torch.equal(model[1].running_mean, torch.full((8,), 0.5))
    assert torch.equal(model[0].weight, saved[0].weight)


def test_other_dtypes_and_a_dict_target(tmp_path: Path) -> None:
    cm = ml.CheckpointManager(tmp_path)
    sd = {"a": torch.randn(4, 3), "b": torch.arange(6, dtype=torch.int64), "c": torch.zeros(0)}
    sd["tied"] = sd["a"]
    cm.save(sd, 1)
    target = {"a": torch.zeros(4, 3, dtype=torch.float64), "b": torch.zeros(6, dtype=torch.int64),
              "c": torch.ones(0), "tied": torch.zeros(4, 3)}
    b = target["b"]
    cm.load(target)
    assert target["b"] is b and torch.equal(b, sd["b"])  # read straight into it
    assert target["a"].dtype == torch.float64 and torch.equal(target["a"].float(), sd["a"])
    assert torch.equal(target["tied"], sd["a"])
    fresh: dict[str, torch.Tensor] = {}
    with pytest.raises(StateDictError, match="missing"):
        cm.load({"a": torch.zeros(4, 3)})
    cm.load(fresh, strict=False)
    assert set(fresh) == set(sd) and torch.equal(fresh["tied"], sd["a"])
    assert fresh["tied"].data_ptr() != fresh["a"].data_ptr()  # separate tensors, as before


def test_shape_disagreements_change_nothing(tmp_path: Path) -> None:
    cm = ml.CheckpointManager(tmp_path)
    cm.save(nn.Linear(4, 3), 1)
    model = nn.Linear(4, 5)
    before = model.weight.detach().clone()
    with pytest.raises(StateDictError, match="disagree"):
        cm.load(model)
    assert torch.equal(model.weight, before)
    cm.load(model, strict=False)  # the mismatched tensors are skipped
    assert torch.equal(model.weight, before)
