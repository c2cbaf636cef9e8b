"""Round trips, laziness and metadata of safetensors files and HF sharded folders."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import mlmf_lab as ml
from mlmf_lab.errors import MLMFError


def mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """True when the tensor's bytes lie in a memory map of ``path`` (read from /proc/self/maps)."""
    ptr = tensor.data_ptr()
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return len(parts) >= 6 and parts[5] == real
    return False


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(50, 8, generator=g),
        "layers.0.w": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        "layers.0.b": torch.randn(8, generator=g).half(),
        "steps": torch.arange(10, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def test_round_trip_matches_safetensors_reference(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "m.safetensors"
    ml.save_state_dict(state, path)
    ref = load_file(path)  # the safetensors package reads our file
    got = ml.load_state_dict(path)
    assert ref.keys() == got.keys() == state.keys()
    for k, v in state.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v) and torch.equal(ref[k], v)


def test_open_is_lazy_and_tensors_are_memory_mapped(tmp_path: Path, state: dict) -> None:
    path = tmp_path / "m.safetensors"
    ml.save_state_dict(state, path)
    with ml.open_weights(path) as wf:
        assert wf.format == "safetensors" and len(wf) == 5 and "steps" in wf
        info = wf.info("embed.weight")
        assert (info.shape, info.dtype, info.nbytes) == ((50, 8), "float32", 1600)
        t = wf.tensor("embed.weight")
        assert mapped_from(t, path), "expected a view of the memory map, not a copy"
        cast = wf.tensor("embed.weight", dtype=torch.float64)
        assert cast.dtype == torch.float64 and not mapped_from(cast, path)
        # The recorded offset is where the bytes really are.
        with open(path, "rb") as f:
            f.seek(info.offset)
            assert f.read(info.nbytes) == state["embed.weight"].numpy().tobytes()


def test_structured_metadata_round_trips(tmp_path: Path, state: dict) -> None:
    meta = {"arch": "tiny", "layers": 2, "lr": 1e-3, "tags": ["a", "b"], "cfg": {"d": 8}}
    path = tmp_path / "m.safetensors"
    ml.save_state_dict(state, path, metadata=meta)
    assert ml.open_weights(path).metadata == {**meta, "format": "pt"}
    with safe_open(path, "pt") as f:  # in the file: strings, JSON for the rest
        raw = f.metadata()
    assert raw["layers"] == "2" and sorted(json.loads(raw["mlmf.json"])) == [
        "cfg",
        "layers",
        "lr",
        "tags",
    ]


def test_tied_weights_are_saved_once(tmp_path: Path) -> None:
    emb = torch.randn(10, 4)
    path = tmp_path / "tied.safetensors"
    ml.save_state_dict({"embed.weight": emb, "lm_head.weight": emb}, path)
    assert list(load_file(path)) == ["embed.weight"]
    got = ml.load_state_dict(path)
    assert got["lm_head.weight"] is got["embed.weight"] and torch.equal(got["embed.weight"], emb)


@pytest.mark.parametrize("limit,shards", [(None, 1), (2100, 3), ("1KB", 5)])
def test_sharded_layout(tmp_path: Path, limit: int | str | None, shards: int) -> None:
    sd = {f"w{i}": torch.full((16, 16), float(i)) for i in range(5)}  # 1 KiB each
    folder = tmp_path / "ckpt"
    ml.save_state_dict(sd, folder, max_shard_size=limit)
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(files) == shards
    if shards > 1:
        assert files[0] == f"model-00001-of-{shards:05d}.safetensors"
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert index["metadata"]["total_size"] == 5 * 1024
        assert set(index["weight_map"]) == set(sd)
    got = ml.load_state_dict(folder)
    assert all(torch.equal(got[k], v) for k, v in sd.items())


def test_resave_replaces_folder_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    ml.save_state_dict({f"w{i}": torch.ones(256) for i in range(4)}, folder, max_shard_size=1024)
    ml.save_state_dict({"w": torch.zeros(4)}, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp leftovers


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    ml.save_state_dict({"a": torch.ones(3)}, path)
    before = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ml.save_state_dict({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_transformers_loads_our_sharded_checkpoint(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    folder = tmp_path / "bert"
    ml.save_state_dict(model.state_dict(), folder, max_shard_size=20_000)
    cfg.save_pretrained(folder)
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    again = BertModel.from_pretrained(folder).eval()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, again(ids).last_hidden_state)


def test_repr_html_lists_tensors_and_totals(tmp_path: Path, state: dict) -> None:
    ml.save_state_dict(state, tmp_path / "m.safetensors")
    page = ml.open_weights(tmp_path / "m.safetensors")._repr_html_()
    assert "<table>" in page and "embed.weight" in page and "bfloat16" in page
    assert "5 tensors" in page and "485 parameters" in page


def test_unsupported_target_and_bad_tensors(tmp_path: Path) -> None:
    with pytest.raises(MLMFError, match="cannot write '.npz' files"):
        ml.save_state_dict({"a": torch.ones(1)}, tmp_path / "x.npz")
    with pytest.raises(MLMFError, match="expected a dict of name -> torch.Tensor"):
        ml.save_state_dict({"a": [1, 2]}, tmp_path / "x.safetensors")  # type: ignore[dict-item]
    with pytest.raises(MLMFError, match=r"max_shard_size must be a positive byte count "
                                        r"\(1000000\) or a size with a unit \(500MB, 2GiB\), "
                                        "found 'lots'"):
        ml.save_state_dict({"a": torch.ones(1)}, tmp_path / "d", max_shard_size="lots")


@pytest.mark.parametrize("header_pad", range(0, 260, 7))
def test_detection_is_by_structure_for_any_header_length(tmp_path: Path, header_pad: int) -> None:
    """A header length whose first byte looks like a pickle opcode (0x80) is still safetensors."""
    path = tmp_path / "x.bin"  # the name says nothing
    ml.save_state_dict(
        {"a": torch.ones(2)}, tmp_path / "x.safetensors", metadata={"pad": "p" * header_pad}
    )
    (tmp_path / "x.safetensors").rename(path)
    wf = ml.open_weights(path)
    assert wf.format == "safetensors" and wf.metadata["pad"] == "p" * header_pad


def test_views_into_one_storage_are_saved_as_copies(tmp_path: Path) -> None:
    fused = torch.randn(12, 4)
    q, k, v = fused.split(4)  # three views of one storage, as a fused qkv weight split in parts
    overlap = fused[2:6]
    path = tmp_path / "views.safetensors"
    parts = {"q": q, "k": k, "v": v, "overlap": overlap}
    ml.save_state_dict(parts, path)
    ref = load_file(path)
    assert all(torch.equal(ref[n], t) for n, t in parts.items())


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_saved_files_get_the_usual_permissions(tmp_path: Path, mask: int) -> None:
    """0o666 less the umask, as torch.save gives (safetensors alone gives 0o600)."""
    old = os.umask(mask)
    try:
        sd = {"w": torch.ones(4, 32)}
        for target in ("x.safetensors", "x.gguf", "folder"):
            ml.save_state_dict(sd, tmp_path / target)
        written = [tmp_path / "x.safetensors", tmp_path / "x.gguf",
                   tmp_path / "folder" / "model.safetensors"]
        assert [oct(p.stat().st_mode & 0o777) for p in written] == [oct(0o666 & ~mask)] * 3
    finally:
        os.umask(old)


def test_saving_over_a_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "private.safetensors"
    ml.save_state_dict({"w": torch.ones(4)}, path)
    path.chmod(0o600)
    ml.save_state_dict({"w": torch.zeros(4)}, path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert torch.equal(ml.load_state_dict(path)["w"], torch.zeros(4))


def test_every_writer_returns_the_sha256_of_each_file_it_wrote(tmp_path: Path) -> None:
    sd = {f"w{i}": torch.full((16, 16), float(i)) for i in range(3)}
    for target in ("x.safetensors", "x.gguf"):
        assert ml.save_state_dict(sd, tmp_path / target) == {
            target: hashlib.sha256((tmp_path / target).read_bytes()).hexdigest()}
    folder = tmp_path / "sharded"
    sums = ml.save_state_dict(sd, folder, max_shard_size="1KB", quant="int8")
    assert sorted(sums) == sorted(p.name for p in folder.iterdir())  # the shards and the index
    assert sums == {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in sums}


def test_detection_order_is_the_priority_not_the_import_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlmf_lab.formats import registry

    order = [f.name for f in registry.FORMATS]
    assert order == ["gguf", "dcp", "safetensors", "safetensors-sharded", "pytorch"]
    for shuffled in (registry.FORMATS[::-1], registry.FORMATS[2:] + registry.FORMATS[:2]):
        monkeypatch.setattr(registry, "FORMATS", [])
        for fmt in shuffled:
            registry.register_format(fmt)
        assert [f.name for f in registry.FORMATS] == order
    # A GGUF file of 123 tensors: its tensor count puts "{" where safetensors' JSON starts.
    ml.save_state_dict({f"t{i}": torch.ones(1) for i in range(123)}, tmp_path / "x.gguf")
    assert (tmp_path / "x.gguf").read_bytes()[8:9] == b"{"
    assert ml.formats.detect(tmp_path / "x.gguf").name == "gguf"
    anything = registry.Format("anything", lambda path, head: True, registry.FORMATS[0].open,
                               priority=-1)
    registry.register_format(anything)
    assert registry.FORMATS[-1] is anything
    assert ml.open_weights(tmp_path / "x.gguf").format == "gguf"
    registry.register_format(anything._replace(priority=99))  # replaced, by name
    assert registry.FORMATS[0].priority == 99 and len(registry.FORMATS) == len(order) + 1
