"""DCP folders as a weight format: opened, loaded, saved and converted through the registry
like any other, and checked before anything is allocated."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hf_tiny import llama_state

import mlmf_lab as ml
from mlmf_lab.cli import main
from mlmf_lab.errors import FormatError, MLMFError, UnsafeFileError, UnsupportedError
from mlmf_lab.files import sha256_file


def torch_dcp(folder: Path, state: dict[str, Any]) -> Path:
    """A DCP folder written by torch itself."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no process group: assuming a single process"
        dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder


def test_round_trip_through_the_cli(tmp_path: Path) -> None:
    src, out, back = (tmp_path / n for n in ("llama.safetensors", "ckpt.dcp", "b.safetensors"))
    ml.save_state_dict(llama_state(layers=2), src, metadata={"model_type": "llama"})
    assert main(["convert", str(src), str(out)]) == 0
    assert main(["convert", str(out), str(back)]) == 0
    ref = ml.load_state_dict(src)
    with ml.open_weights(out) as wf:
        assert wf.format == "dcp" and wf.metadata["model_type"] == "llama"
        assert list(wf) == list(ref)  # the order written
        assert wf.info("model.norm.weight").dtype == "float32" and len(wf) == len(ref)
    with ml.open_weights(back) as wf:
        assert wf.metadata["model_type"] == "llama"
        got = wf.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_a_folder_written_by_torch_with_nested_and_non_tensor_entries(tmp_path: Path) -> None:
    state = {"model": {"w": torch.randn(3, 5), "b": torch.arange(4, dtype=torch.int32)},
             "bf": torch.randn(6).bfloat16(), "scalar": torch.tensor(2.5), "step": 7}
    folder = torch_dcp(tmp_path / "torch_ckpt", state)
    wf = ml.open_weights(folder)  # no suffix needed: the content says DCP
    assert sorted(wf) == ["bf", "model.b", "model.w", "scalar"]
    assert wf.metadata == {"dcp_skipped": ["step"]}
    assert torch.equal(wf.tensor("model.w"), state["model"]["w"])  # one tensor, on its own
    assert wf.tensor("bf").dtype == torch.bfloat16 and wf.tensor("scalar").item() == 2.5
    as64 = ml.load_state_dict(folder, dtype=torch.float64)
    assert as64["model.b"].dtype == torch.float64 and as64["model.b"].tolist() == [0, 1, 2, 3]
    file, _, length = wf.spans("model.w")[0]
    assert Path(file).parent == folder and Path(file).suffix == ".distcp" and length > 0
    out = ml.convert(folder, tmp_path / "x.safetensors")
    assert ml.open_weights(out).metadata["dcp_skipped"] == ["step"]


def test_save_returns_each_files_sha256_and_refuses_what_dcp_cannot_store(
    tmp_path: Path,
) -> None:
    sd = {"w": torch.randn(4, 64), "b": torch.zeros(4)}
    sums = ml.save_state_dict(sd, tmp_path / "m.dcp", {"model_type": "llama", "n": 3})
    assert sums == {p.name: sha256_file(p) for p in (tmp_path / "m.dcp").iterdir()}
    assert json.loads((tmp_path / "m.dcp" / "mlmf_metadata.json").read_text())["n"] == 3
    with pytest.raises(UnsupportedError, match="dcp cannot store quant='int8'; it stores no "
                                               "quantized weights; int8 goes into .safetensors "
                                               r"files or a folder \(HF sharded layout\)"):
        ml.save_state_dict(sd, tmp_path / "q.dcp", quant="int8")
    with pytest.raises(MLMFError, match="q.dcp: max_shard_size applies to the HF sharded"):
        ml.save_state_dict(sd, tmp_path / "q.dcp", max_shard_size="1MB")
    with pytest.raises(MLMFError, match="metadata is not JSON-serializable"):
        ml.save_state_dict(sd, tmp_path / "q.dcp", {"when": object()})
    assert not (tmp_path / "q.dcp").exists()
    ml.convert(tmp_path / "m.dcp", tmp_path / "m.gguf", quant="q8_0")  # through the registry
    assert ml.open_weights(tmp_path / "m.gguf").info("w").quant == "Q8_0"


def test_hostile_metadata_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "evil.dcp"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(os.system))  # would run code if trusted
    with pytest.raises(UnsafeFileError, match="posix.system|only DCP's own records"):
        ml.open_weights(folder)
    (folder / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(FormatError, match="evil.dcp/.metadata: DCP metadata is not readable"):
        ml.load_state_dict(folder)


def _tamper(folder: Path, change: Any) -> None:
    """Rewrite ``.metadata`` after ``change(metadata)`` (only DCP's own records inside)."""
    from mlmf_lab.formats.dcp import read_metadata

    md = read_metadata(folder)
    change(md)
    (folder / ".metadata").write_bytes(pickle.dumps(md))


def _resize(size: tuple[int, ...], offsets: tuple[int, ...], sizes: tuple[int, ...]) -> Any:
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    def change(md: Any) -> None:
        entry = md.state_dict_metadata["w"]
        entry.size = torch.Size(size)
        entry.chunks = [ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes))]
    return change


def _stretch_storage(md: Any) -> None:
    for info in md.storage_data.values():
        info.length = 10**12


@pytest.mark.parametrize(("change", "message"), [
    (_resize((10**12,), (0,), (10**12,)), "tensor 'w': the chunk at \\[0\\] needs 4000000000000 "
                                          "bytes, and no data file holds them"),
    (_resize((8,), (6,), (4,)), r"tensor 'w' \[8\]: a chunk at \[6\] of \[4\] lies outside it"),
    (_resize((8,), (0,), (4,)), r"tensor 'w' \[8\]: its chunks hold 4 of 8 elements"),
    (_stretch_storage, r"chunk of 'w' at \[\d+, \+1000000000000\] lies outside __0_0.distcp"),
])
def test_chunks_are_checked_against_the_data_files_before_any_allocation(
    tmp_path: Path, change: Any, message: str
) -> None:
    folder = torch_dcp(tmp_path / "m", {"w": torch.ones(8)})
    _tamper(folder, change)
    with pytest.raises(FormatError, match=f"m/.metadata: DCP {message}"):
        ml.open_weights(folder)


def test_a_data_file_outside_the_folder_is_refused(tmp_path: Path) -> None:
    folder = torch_dcp(tmp_path / "m", {"w": torch.ones(8)})

    def escape(md: Any) -> None:
        for info in md.storage_data.values():
            info.relative_path = "../elsewhere.distcp"

    _tamper(folder, escape)
    with pytest.raises(UnsafeFileError, match="'../elsewhere.distcp' escapes the checkpoint"):
        ml.open_weights(folder)
