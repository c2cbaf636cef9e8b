"""Hostile and malformed weight files: each gives an MLMFError naming the file and the problem."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import FormatError, MLMFError, ShardError, UnsafeFileError, UnsupportedError


def st_bytes(header: dict, data: bytes = b"", declared_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    n = len(raw) if declared_len is None else declared_len
    return struct.pack("<Q", n) + raw + data


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# (case id, file bytes, error type, text the message must contain)
SAFETENSORS_CASES = [
    ("empty", b"", FormatError, "the file is empty"),
    ("truncated-length", b"\x10\x00\x00", UnsupportedError, "not a weight file"),
    (
        "header-past-end",
        st_bytes({"a": entry()}, declared_len=10_000),
        FormatError,
        "runs past the end of the file",
    ),
    ("truncated-header", st_bytes({"a": entry()})[:20], FormatError, "runs past the end"),
    ("header-not-json", struct.pack("<Q", 6) + b"{nope}", FormatError, "header is not valid JSON"),
    ("header-not-object", struct.pack("<Q", 2) + b"[]", UnsupportedError, "not a weight file"),
    (
        "offsets-out-of-range",
        st_bytes({"a": entry(offsets=(0, 64))}, b"\0" * 8),
        FormatError,
        "out of range",
    ),
    (
        "offsets-overlap",
        st_bytes({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, b"\0" * 12),
        FormatError,
        "overlap",
    ),
    (
        "size-not-shape",
        st_bytes({"a": entry(shape=(3,), offsets=(0, 8))}, b"\0" * 8),
        FormatError,
        "expected 12",
    ),
    (
        "unknown-dtype",
        st_bytes({"a": entry(dtype="F7")}, b"\0" * 8),
        UnsupportedError,
        "unknown dtype 'F7'",
    ),
    (
        "negative-shape",
        st_bytes({"a": entry(shape=(-2,))}, b"\0" * 8),
        FormatError,
        "is not a list of sizes",
    ),
    (
        "bad-offsets",
        st_bytes({"a": entry(offsets=(0,))}, b"\0" * 8),
        FormatError,
        "is not [begin, end]",
    ),
    (
        "metadata-not-strings",
        st_bytes({"__metadata__": {"a": 1}}),
        FormatError,
        "must map strings to strings",
    ),
]


@pytest.mark.parametrize(
    "case,data,error,text", SAFETENSORS_CASES, ids=[c[0] for c in SAFETENSORS_CASES]
)
def test_bad_safetensors(tmp_path: Path, case: str, data: bytes, error: type, text: str) -> None:
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(data)
    with pytest.raises(error) as info:
        ml.open_weights(path)
    assert text in str(info.value)
    assert str(path) in str(info.value)


def make_sharded(folder: Path) -> None:
    ml.save_state_dict(
        {f"w{i}": torch.full((64,), float(i)) for i in range(4)}, folder, max_shard_size=600
    )  # 2 tensors of 256 bytes per shard


def edit_index(fn: Callable[[dict], None]) -> Callable[[Path], Path]:
    def apply(folder: Path) -> Path:
        index = folder / "model.safetensors.index.json"
        doc = json.loads(index.read_text())
        fn(doc)
        index.write_text(json.dumps(doc))
        return index

    return apply


def missing_shard(folder: Path) -> Path:
    (folder / "model-00002-of-00002.safetensors").unlink()
    return folder / "model.safetensors.index.json"


def symlink_escape(folder: Path) -> Path:
    outside = folder.parent / "outside.safetensors"
    ml.save_state_dict({"w2": torch.ones(64), "w3": torch.ones(64)}, outside)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(outside)
    return folder / "model.safetensors.index.json"


def tensor_in_two_shards(folder: Path) -> Path:
    ml.save_state_dict(
        {"w0": torch.zeros(64), "w1": torch.ones(64), "w2": torch.ones(64)},
        folder / "model-00001-of-00002.safetensors",
    )
    return folder / "model.safetensors.index.json"


SHARD_CASES = [
    ("missing-shard", missing_shard, ShardError, "does not exist"),
    (
        "dotdot",
        edit_index(lambda d: d["weight_map"].update(w1="../evil.safetensors")),
        UnsafeFileError,
        "escapes the checkpoint folder",
    ),
    (
        "absolute",
        edit_index(lambda d: d["weight_map"].update(w1="/etc/passwd")),
        UnsafeFileError,
        "escapes the checkpoint folder",
    ),
    ("symlink-escape", symlink_escape, UnsafeFileError, "leaves the folder"),
    ("tensor-in-two-shards", tensor_in_two_shards, ShardError, "is in two shards"),
    (
        "listed-not-present",
        edit_index(lambda d: d["weight_map"].update(ghost="model-00001-of-00002.safetensors")),
        ShardError,
        "'ghost' is listed in model-00001-of-00002.safetensors but is in no shard",
    ),
    (
        "omitted-by-index",
        edit_index(lambda d: d["weight_map"].pop("w3")),
        ShardError,
        "the index omits",
    ),
    ("no-weight-map", edit_index(lambda d: d.update(weight_map={})), ShardError, "no weight_map"),
]


@pytest.mark.parametrize("case,damage,error,text", SHARD_CASES, ids=[c[0] for c in SHARD_CASES])
def test_bad_sharded(
    tmp_path: Path, case: str, damage: Callable[[Path], Path], error: type, text: str
) -> None:
    folder = tmp_path / "ckpt"
    make_sharded(folder)
    index = damage(folder)
    with pytest.raises(error) as info:
        ml.open_weights(index)
    assert text in str(info.value)
    assert "model.safetensors.index.json" in str(info.value)


class RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/nonexistent")


@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, zipped: bool) -> None:
    global MARKER
    MARKER = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    if zipped:
        torch.save({"w": torch.ones(2), "x": RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"x": RunsCode()}, protocol=2))
    with pytest.raises(UnsafeFileError) as info:
        ml.open_weights(path)
    assert "refusing to unpickle" in str(info.value) and str(path) in str(info.value)
    assert not MARKER.exists(), "the pickle's code ran"


def test_pickle_state_dict_loads(tmp_path: Path) -> None:
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    torch.save(sd, tmp_path / "ok.pt")
    got = ml.load_state_dict(tmp_path / "ok.pt")
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert ml.open_weights(tmp_path / "ok.pt").format == "pytorch"


def test_pickle_of_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(FormatError, match="expected a dict of name -> tensor, found list"):
        ml.open_weights(tmp_path / "list.pt")


def test_unknown_file_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, these are not weights")
    with pytest.raises(UnsupportedError, match="supported: .*safetensors, safetensors-sharded"):
        ml.open_weights(tmp_path / "notes.txt")
    with pytest.raises(MLMFError, match="no such file"):
        ml.open_weights(tmp_path / "nope.safetensors")


def test_missing_tensor_name(tmp_path: Path) -> None:
    ml.save_state_dict({"a": torch.ones(2), "c": torch.ones(1)}, tmp_path / "x.safetensors")
    with pytest.raises(MLMFError, match=r"x.safetensors: no tensor named 'b'; the file has 2 "
                                        r"tensors \(first: 'a', 'c'\)"):
        ml.open_weights(tmp_path / "x.safetensors").tensor("b")
    ml.save_state_dict({"fc.weight": torch.ones(2), "fc.bias": torch.ones(1)},
                       tmp_path / "fc.safetensors")
    with pytest.raises(MLMFError, match=r"fc.safetensors: no tensor named 'fc.weigth'; the "
                                        r"file has 2 tensors \(closest: 'fc.weight'"):
        ml.open_weights(tmp_path / "fc.safetensors").info("fc.weigth")


def _write_each_format(folder: Path) -> dict[str, Path]:
    sd = {"a": torch.ones(2, 32), "b": torch.zeros(3)}
    paths = {"safetensors": folder / "x.safetensors", "gguf": folder / "x.gguf",
             "safetensors-sharded": folder / "sharded", "dcp": folder / "x.dcp"}
    for path in paths.values():
        ml.save_state_dict(sd, path)
    torch.save(sd, folder / "x.pt")
    paths["pytorch"] = folder / "x.pt"
    return paths


def test_reading_a_closed_file_names_it(tmp_path: Path) -> None:
    """Every format: after close() a read is an MLMFError naming the file (it said KeyError
    for pickles, AttributeError for a safetensors slice)."""
    paths = _write_each_format(tmp_path)
    assert set(paths) == {f.name for f in ml.formats.FORMATS}  # every registered format
    for name, path in paths.items():
        wf = ml.open_weights(path)
        assert wf.format == {"safetensors-sharded": "safetensors"}.get(name, name)
        wf.close()
        assert wf.info("a").shape == (2, 32)  # the header records stay
        with pytest.raises(MLMFError, match="cannot read tensor 'a': the file was closed") as e:
            wf.tensor("a")
        assert str(path.name) in str(e.value), name
        with pytest.raises(MLMFError, match="was closed"):
            wf.state_dict()
    for path, file in ((paths["safetensors"], "x.safetensors"),
                       (paths["safetensors-sharded"], "sharded/model.safetensors")):
        with ml.open_weights(path) as wf:
            pass  # the end of the block closes it
        with pytest.raises(MLMFError, match=f"{file}: cannot read tensor 'b': the file was "
                                            "closed"):
            wf.get_slice("b")  # type: ignore[attr-defined]
