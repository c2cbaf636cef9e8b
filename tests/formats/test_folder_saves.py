"""Saving into folders that already exist: what is replaced, what is kept (as transformers'
save_pretrained), what is refused, and how such folders open, hash and describe."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import MLMFError
from mlmf_lab.provenance.hashing import content_hash


def test_resave_keeps_the_other_files_of_a_folder(tmp_path: Path) -> None:
    """As transformers' save_pretrained: config, tokenizer and adapters outlive a new save."""
    folder = tmp_path / "hf"
    ml.save_state_dict({f"w{i}": torch.ones(256) for i in range(3)}, folder, max_shard_size=1024)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (folder / "tokenizer" / "link").symlink_to("vocab.txt")
    (folder / "adapter_model.safetensors").write_bytes(b"not ours")
    (folder / "model-00001-of-00009.safetensors").write_bytes(b"a stale shard")
    ml.save_state_dict({"w": torch.zeros(4)}, folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_model.safetensors", "config.json", "model.safetensors", "tokenizer"]
    assert (folder / "config.json").read_text() == '{"model_type": "bert"}'
    assert (folder / "tokenizer" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    assert os.readlink(folder / "tokenizer" / "link") == "vocab.txt"
    assert (folder / "adapter_model.safetensors").read_bytes() == b"not ours"
    assert sorted(ml.load_state_dict(folder)) == ["w"]  # model.safetensors, as transformers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp leftovers


def test_a_file_that_cannot_be_kept_stops_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "hf"
    ml.save_state_dict({"w": torch.ones(4)}, folder)
    (folder / "config.json").write_text("{}")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(shutil, "copy2", refuse)
    with pytest.raises(MLMFError, match="cannot keep 'config.json' .*nothing was changed"):
        ml.save_state_dict({"w": torch.zeros(4)}, folder)
    assert torch.equal(ml.load_state_dict(folder)["w"], torch.ones(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_a_folder_opens_transformers_names_first(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    ml.save_state_dict({"a": torch.ones(2)}, folder / "a.safetensors")
    ml.save_state_dict({"b": torch.ones(2)}, folder / "b.safetensors")
    with pytest.raises(MLMFError, match="exactly one weight file .*found a.safetensors, "
                                        "b.safetensors"):
        ml.open_weights(folder)
    ml.save_state_dict({"m": torch.ones(2)}, folder / "model.safetensors")
    assert list(ml.open_weights(folder)) == ["m"]
    ml.save_state_dict({"s0": torch.ones(256), "s1": torch.ones(256)}, tmp_path / "sharded",
                       max_shard_size=1024)
    for p in (tmp_path / "sharded").iterdir():
        p.rename(folder / p.name)
    assert list(ml.open_weights(folder)) == ["m"]  # model.safetensors before an index, as
    (folder / "model.safetensors").unlink()  # transformers (a stale index may stay behind)
    assert sorted(ml.open_weights(folder)) == ["s0", "s1"]


def test_dcp_replaces_a_dcp_folder_but_never_empties_another(tmp_path: Path) -> None:
    ml.save_state_dict({"w": torch.ones(2)}, tmp_path / "m.dcp")
    sums = ml.save_state_dict({"v": torch.zeros(3)}, tmp_path / "m.dcp")  # replaced
    assert sorted(ml.load_state_dict(tmp_path / "m.dcp")) == ["v"]
    assert ".metadata" in sums and all(len(h) == 64 for h in sums.values())
    other = tmp_path / "notes.dcp"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(MLMFError, match="holds files that are not a DCP checkpoint's "
                                        r"\(mine.txt\)"):
        ml.save_state_dict({"w": torch.ones(2)}, other)
    assert [p.name for p in other.iterdir()] == ["mine.txt"]
    (tmp_path / "m.dcp" / "notes.txt").write_text("mine")  # a DCP folder with a user's file
    with pytest.raises(MLMFError, match=r"\(notes.txt\)"):
        ml.save_state_dict({"w": torch.ones(2)}, tmp_path / "m.dcp")
    assert sorted(ml.load_state_dict(tmp_path / "m.dcp")) == ["v"]
    (tmp_path / "empty.dcp").mkdir()
    ml.save_state_dict({"w": torch.ones(2)}, tmp_path / "empty.dcp")  # an empty folder is fine
    assert ml.open_weights(tmp_path / "empty.dcp").format == "dcp"


def test_odd_entries_are_kept_without_opening_them(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    ml.save_state_dict({"w": torch.ones(4)}, folder)
    os.mkfifo(folder / "pipe")  # opening it to fsync would block forever
    (folder / "dangling").symlink_to("nowhere")
    ml.save_state_dict({"w": torch.zeros(4)}, folder)
    assert stat.S_ISFIFO((folder / "pipe").lstat().st_mode)
    assert os.readlink(folder / "dangling") == "nowhere"


def test_a_symlinked_folder_is_written_through(tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    ml.save_state_dict({"w": torch.ones(4)}, real)
    link.symlink_to(real)
    ml.save_state_dict({"w": torch.zeros(4)}, link)
    assert link.is_symlink() and torch.equal(ml.load_state_dict(real)["w"], torch.zeros(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(MLMFError, match="exists and is not a folder"):
        ml.save_state_dict({"w": torch.ones(4)}, tmp_path / "plain")  # no suffix: a folder
    with pytest.raises(MLMFError, match="cannot create the folder"):
        ml.save_state_dict({"w": torch.ones(4)}, tmp_path / "plain" / "sub" / "out")
    (tmp_path / "plain.dcp").write_text("a file, not a folder")
    with pytest.raises(MLMFError, match="exists and is not a folder"):
        ml.save_state_dict({"w": torch.ones(4)}, tmp_path / "plain.dcp")
    assert (tmp_path / "plain").read_text() == "a file, not a folder"
    assert (tmp_path / "plain.dcp").read_text() == "a file, not a folder"


def test_a_private_folder_stays_private(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    ml.save_state_dict({"w": torch.ones(4)}, folder)
    folder.chmod(0o700)
    (folder / "model.safetensors").chmod(0o600)
    old = os.umask(0o022)  # new files would be 0o644: the modes seen below are kept ones
    try:
        ml.save_state_dict({"a": torch.ones(256), "b": torch.ones(256)}, folder,
                           max_shard_size=1024)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}


def test_a_model_folder_with_an_adapter_hashes_and_describes_as_itself(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    ml.save_state_dict({"w": torch.ones(4, 4)}, folder)
    alone = content_hash(folder).sha256
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2}')
    ml.save_state_dict({"lora_A": torch.ones(2, 4)}, folder / "adapter_model.safetensors")
    first = content_hash(folder).sha256
    ml.save_state_dict({"lora_A": torch.zeros(2, 4)}, folder / "adapter_model.safetensors")
    assert len({alone, first, content_hash(folder).sha256}) == 3  # the adapter counts
    desc = ml.describe(folder)
    assert not desc.is_adapter and desc.num_tensors == 1  # the model, not the adapter


def test_a_kept_config_beside_quantized_weights_is_flagged(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    ml.save_state_dict({"w": torch.randn(8, 64)}, folder)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    with pytest.warns(UserWarning, match="config.json is kept beside int8 weights but has no "
                                         "quantization_config"):
        ml.save_state_dict({"w": torch.randn(8, 64)}, folder, quant="int8")
    assert (folder / "config.json").read_text() == '{"model_type": "llama"}'
