"""A llama.cpp GGUF file read as a model: parsed once per description or conversion, its
vocabulary left undecoded where nothing needs it (``gguf_meta.LazyMetadata``), and its
tokenizer rebuilt without ``gguf.GGUFReader``, byte for byte what ``AutoTokenizer`` gives."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import gguf as gguf_package
import hf_tiny
import pytest

import mlmf_lab as ml
from mlmf_lab.formats import gguf, gguf_hf
from mlmf_lab.formats.gguf_header import Header
from mlmf_lab.formats.gguf_hf import config_from_gguf, describe_model, write_model_hf
from mlmf_lab.formats.gguf_meta import LazyArray
from mlmf_lab.formats.gguf_model import HF_CONFIG_KEY
from mlmf_lab.formats.gguf_vocab import hf_tokenizer_files

VOCAB = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type")  # long enough to be lazy


def undecoded(metadata: dict[str, object]) -> set[str]:
    """The vocabulary arrays still waiting for their first access."""
    return {k for k in VOCAB if isinstance(dict.__getitem__(metadata, k), LazyArray)}


def convert_model(make: Callable[[Path], object], root: Path, name: str) -> Path:
    folder = root / name
    make(folder)
    return ml.convert(folder, root / f"{name}.gguf")


@pytest.fixture(scope="module")
def qwen2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE vocabulary of 320 tokens (arrays of 256 items or more are lazy)."""
    return convert_model(lambda f: hf_tiny.causal_lm(f, "qwen2"), tmp_path_factory.mktemp("m"),
                         "qwen2")


@pytest.fixture(scope="module")
def bare_gguf(qwen2_gguf: Path) -> Path:
    """The same file without the carried config.json, as llama.cpp's converter writes it:
    the config comes from the hyperparameters and the tokenizer's special ids."""
    path = qwen2_gguf.parent / "bare.gguf"
    with ml.open_weights(qwen2_gguf) as wf:
        metadata = {k: wf.metadata[k] for k in wf.metadata if k != HF_CONFIG_KEY}
        ml.save_state_dict(wf.state_dict(), path, metadata=metadata)
    return path


@pytest.fixture()
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The GGUF files whose header is parsed from now on."""
    seen: list[Path] = []
    read = gguf.READERS["mlmf"]

    def counted(path: Path, sizes: dict[int, tuple[int, int]]) -> Header:
        seen.append(path)
        return read(path, sizes)

    monkeypatch.setitem(gguf.READERS, "mlmf", counted)
    return seen


@pytest.fixture()
def gguf_readers(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The files ``gguf.GGUFReader`` opens from now on (transformers' config route uses it)."""
    seen: list[object] = []
    reader = gguf_package.GGUFReader

    def counted(path: object, *args: object, **kwargs: object) -> object:
        seen.append(path)
        return reader(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gguf_package, "GGUFReader", counted)
    return seen


def test_describe_model_parses_once_and_counts_the_vocabulary(
        qwen2_gguf: Path, parsed: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[ml.formats.WeightFile] = []
    open_weights = gguf_hf.open_weights

    def kept(path: Path) -> ml.formats.WeightFile:
        opened.append(open_weights(path))
        return opened[-1]

    monkeypatch.setattr(gguf_hf, "open_weights", kept)
    record = describe_model(qwen2_gguf)
    assert parsed == [qwen2_gguf]  # the layout check and the description share the file
    assert record is not None and record.architecture == "qwen2"
    assert record.tokenizer.startswith("gpt2, 320 tokens, ") and "merges" in record.tokenizer
    assert [undecoded(wf.metadata) for wf in opened] == [set(VOCAB)]


def test_ml_describe_leaves_the_vocabulary_for_its_first_reader(qwen2_gguf: Path) -> None:
    desc = ml.describe(qwen2_gguf)
    assert desc.architecture == "qwen2" and "text" in desc.modalities
    assert undecoded(desc.metadata) == set(VOCAB)
    tokens = desc.metadata["tokenizer.ggml.tokens"]
    assert type(tokens) is list and len(tokens) == 320 and "<|endoftext|>" in tokens
    assert "tokenizer.ggml.tokens" in desc.as_dict()["metadata"]  # JSON sees every value


@pytest.mark.parametrize("carried", [True, False], ids=["mlmf", "llama.cpp"])
def test_converting_to_a_folder_leaves_the_vocabulary(qwen2_gguf: Path, bare_gguf: Path,
                                                      tmp_path: Path, carried: bool) -> None:
    src = qwen2_gguf if carried else bare_gguf
    with ml.open_weights(src) as wf:
        if not carried:
            config = config_from_gguf(wf)  # with the tokenizer's special token ids
            assert config["eos_token_id"] == 319 and config["vocab_size"] == 320
            assert undecoded(wf.metadata) == set(VOCAB)
        record = write_model_hf(src, tmp_path / "out", wf=wf)
        assert undecoded(wf.metadata) == set(VOCAB)
    assert "tokenizer.json" in record.tokenizer
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == 320 and config["model_type"] == "qwen2"


def autotokenizer_files(path: Path) -> dict[str, bytes]:
    """What ``AutoTokenizer`` itself writes for a GGUF file (the reference)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir())}


@pytest.mark.parametrize("model", ["llama", "qwen2", "gpt2", "beside tokenizer_config.json"])
def test_tokenizer_files_are_autotokenizers_without_gguf_reader(
        model: str, tmp_path: Path, gguf_readers: list[object]) -> None:
    makers: dict[str, Callable[[Path], object]] = {
        "llama": hf_tiny.causal_lm, "qwen2": lambda f: hf_tiny.causal_lm(f, "qwen2"),
        "gpt2": hf_tiny.gpt2, "beside tokenizer_config.json": hf_tiny.causal_lm}
    path = convert_model(makers[model], tmp_path, "m")
    if model.startswith("beside"):  # a class named beside the file: AutoTokenizer decides
        (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    with ml.open_weights(path) as wf:
        arch = wf.metadata["general.architecture"]
    files = hf_tokenizer_files(path, arch)
    assert len(gguf_readers) == (1 if model.startswith("beside") else 0)
    assert set(files) == {"tokenizer.json", "tokenizer_config.json"}
    assert files == autotokenizer_files(path)
