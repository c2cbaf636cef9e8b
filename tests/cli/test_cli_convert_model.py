"""``mlmf-lab convert`` between a transformers folder and llama.cpp's GGUF: the source is read
once, what it wrote is read back once (by the writer) and printed; the CLI does not open the
output again."""

from __future__ import annotations

from pathlib import Path

import gguf as gguf_package
import hf_tiny
import pytest

import mlmf_lab as ml
from mlmf_lab.cli import main
from mlmf_lab.formats import gguf, gguf_hf
from mlmf_lab.formats.gguf_header import Header


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    hf_tiny.causal_lm(folder)
    return ml.convert(folder, folder.parent / "model.gguf")


def test_folder_to_gguf_parses_the_output_once(llama_gguf: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    parsed: list[Path] = []
    read = gguf.READERS["mlmf"]
    monkeypatch.setitem(gguf.READERS, "mlmf", lambda p, sizes: parsed.append(p) or read(p, sizes))
    dst = tmp_path / "again.gguf"
    assert main(["convert", str(llama_gguf.parent / "tiny-llama"), str(dst)]) == 0
    assert parsed == [dst]  # the writer's describe_gguf, and nothing after it
    out = capsys.readouterr().out
    assert str(dst) in out and "llama" in out


def test_gguf_to_folder_describes_the_folder_once(llama_gguf: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    described: list[Path] = []
    describe = gguf_hf.describe_hf
    monkeypatch.setattr(gguf_hf, "describe_hf",
                        lambda folder: described.append(folder) or describe(folder))
    dst = tmp_path / "back"
    assert main(["convert", str(llama_gguf), str(dst)]) == 0
    assert described == [dst]
    out = capsys.readouterr().out
    assert "\n".join(describe(dst).lines()) in out


def test_gguf_to_folder_parses_the_source_once(llama_gguf: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[Path] = []
    read = gguf.READERS["mlmf"]

    def counted(path: Path, sizes: dict[int, tuple[int, int]]) -> Header:
        parsed.append(path)
        return read(path, sizes)

    gguf_readers: list[object] = []  # transformers' AutoTokenizer reads its config with it
    reader = gguf_package.GGUFReader

    def counted_reader(path: object, *args: object, **kwargs: object) -> object:
        gguf_readers.append(path)
        return reader(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setitem(gguf.READERS, "mlmf", counted)
    monkeypatch.setattr(gguf_package, "GGUFReader", counted_reader)
    assert main(["convert", str(llama_gguf), str(tmp_path / "cli")]) == 0
    assert ml.convert(llama_gguf, tmp_path / "api") == tmp_path / "api"
    # the layout check, the config, the weights and the description share one open file
    assert parsed == [llama_gguf, llama_gguf] and gguf_readers == []
    assert (tmp_path / "api" / "tokenizer.json").read_bytes() == \
        (tmp_path / "cli" / "tokenizer.json").read_bytes()
