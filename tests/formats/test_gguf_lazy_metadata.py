"""GGUF metadata arrays decoded on first use: what a reader sees is unchanged.

Arrays of ``LAZY_ITEMS`` items or more (a vocabulary) are skipped at open and decoded when
their key is first read; every length is still checked at open (a string array that runs
past the end fails ``open_weights`` with the same message), and a string that is not
UTF-8 fails the first access with an error naming the file and the key.
"""

from __future__ import annotations

import copy
import json
import pickle
import struct
from pathlib import Path

import pytest
from attacks.gguf_bytes import ARRAY, STRING, UINT8, gguf_bytes, kv, s
from test_gguf_reader_choice import assert_same

import mlmf_lab as ml
from mlmf_lab.errors import FormatError
from mlmf_lab.formats import gguf_header
from mlmf_lab.formats.gguf_header import LAZY_ITEMS
from mlmf_lab.formats.gguf_meta import LazyArray, LazyMetadata, array_length

N = LAZY_ITEMS + 44
META = {
    "general.architecture": "llama",
    "tokenizer.ggml.tokens": [f"tok_{i}" if i % 7 else f"héllo {i} ✓" for i in range(N)] + [""],
    "tokenizer.ggml.token_type": [1 + i % 5 for i in range(N)],
    "tokenizer.ggml.scores": [i / 4 for i in range(N)],
    "wide": [2**40 + i for i in range(N)],
    "flags": [i % 3 == 0 for i in range(N)],
    "small": ["a", "b"],
    "nested": [[i for i in range(N)], [1]],  # nested arrays are never lazy
}
LAZY_KEYS = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores",
             "wide", "flags"}


def stored(wf: ml.formats.WeightFile, key: str) -> object:
    """The value as the mapping holds it, without decoding it."""
    return dict.__getitem__(wf.metadata, key)


@pytest.fixture()
def vocab_file(tmp_path: Path) -> Path:
    import torch

    path = tmp_path / "vocab.gguf"
    ml.save_state_dict({"w": torch.ones(4, 32)}, path, metadata=META, quant="q8_0")
    return path


def test_big_arrays_wait_for_their_first_access(vocab_file: Path) -> None:
    with ml.open_weights(vocab_file) as wf:
        assert isinstance(wf.metadata, LazyMetadata)
        assert {k for k in wf.metadata if isinstance(stored(wf, k), LazyArray)} == LAZY_KEYS
        assert len(stored(wf, "tokenizer.ggml.tokens")) == N + 1  # type: ignore[arg-type]
        assert "tokenizer.ggml.tokens" in wf.metadata and len(wf.metadata) == len(META) + 1
        tokens = wf.metadata["tokenizer.ggml.tokens"]
        assert type(tokens) is list and tokens == META["tokenizer.ggml.tokens"]
        assert stored(wf, "tokenizer.ggml.tokens") is tokens  # decoded once, kept in place
        assert isinstance(stored(wf, "wide"), LazyArray)  # the others still wait
        assert wf.metadata.get("wide") == META["wide"] and wf.metadata.get("nope", 3) == 3
        assert wf.metadata["flags"] == META["flags"] and type(wf.metadata["flags"][0]) is bool
        assert wf.metadata["nested"] == META["nested"]


def test_array_length_counts_without_decoding(vocab_file: Path) -> None:
    with ml.open_weights(vocab_file) as wf:
        assert array_length(wf.metadata, "tokenizer.ggml.tokens") == N + 1
        assert isinstance(stored(wf, "tokenizer.ggml.tokens"), LazyArray)  # still waiting
        assert array_length(wf.metadata, "small") == 2
        assert array_length(wf.metadata, "general.architecture") is None
        assert array_length(wf.metadata, "absent") is None


def test_every_way_of_reading_the_mapping_decodes(vocab_file: Path) -> None:
    expected = {**META, "general.quantization_version": 2}
    reads = {
        "==": lambda m: m == expected and expected == m and not m != expected,
        "dict()": lambda m: dict(m) == expected and type(dict(m)["wide"]) is list,
        "{**m}": lambda m: type({**m}["wide"]) is list,
        "copy()": lambda m: type(m.copy()["wide"]) is list,
        "items()": lambda m: dict(m.items()) == expected,
        "values()": lambda m: META["wide"] in list(m.values()),
        "json": lambda m: json.loads(json.dumps(m)) == json.loads(json.dumps(expected)),
        "repr": lambda m: repr(m) == repr(dict(expected)),
        "pickle": lambda m: pickle.loads(pickle.dumps(m)) == expected,
        "deepcopy": lambda m: dict.__getitem__(copy.deepcopy(m), "wide") == META["wide"],
        "pop": lambda m: m.pop("wide") == META["wide"],
        "setdefault": lambda m: m.setdefault("wide") == META["wide"],
        "update": lambda m: (lambda d: d.update(m) or type(d["wide"]) is list)({}),
        "plain": lambda m: ml.tables.plain(m)["wide"] == META["wide"],
    }
    for name, read in reads.items():
        with ml.open_weights(vocab_file) as wf:
            assert read(wf.metadata), name


def test_both_readers_agree_on_big_arrays(vocab_file: Path) -> None:
    assert_same(vocab_file)  # headers equal, reprs equal, metadata and tensors alike


def strings(items: list[bytes], count: int | None = None) -> bytes:
    """An array of strings: item type, count (default: as many as given), the strings."""
    n = len(items) if count is None else count
    return struct.pack("<IQ", STRING, n) + b"".join(s(x) for x in items)


def test_bad_utf8_fails_the_first_access_naming_file_key_item_and_offset(tmp_path: Path) -> None:
    items = [b"ok"] * N
    items[7] = b"\xc3("
    first = kv("general.architecture", STRING, s("llama"))
    data = gguf_bytes([first, kv("tokenizer.ggml.tokens", ARRAY, strings(items))])
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    # the 8th string's bytes: after the 24-byte header, the first pair, the key, the value
    # type, the array header (item type, count), 7 strings of 2 bytes and this one's length
    at = 24 + len(first) + len(s("tokenizer.ggml.tokens")) + 4 + 12 + 7 * 10 + 8
    with ml.open_weights(path) as wf:  # the lengths are sound: the file opens
        assert wf.metadata["general.architecture"] == "llama"
        for _ in range(2):  # and stays unreadable on the next try
            with pytest.raises(FormatError) as caught:
                wf.metadata["tokenizer.ggml.tokens"]
            assert str(caught.value) == (f"{path}: item 7 of 'tokenizer.ggml.tokens' at offset "
                                         f"{at} is not valid UTF-8")
        with pytest.raises(FormatError, match="item 7 of 'tokenizer.ggml.tokens'"):
            dict(wf.metadata)


@pytest.mark.parametrize(("case", "value", "text"), [
    ("last-string-past-end", strings([b"ab"] * (N - 1), N) + struct.pack("<Q", 5) + b"ab",
     f"truncated: item {N - 1} of 'k' needs 5 bytes at offset"),
    ("middle-string-past-end",  # the strings after it hold fewer than its 4096 bytes
     strings([b"ab"] * 9, N) + struct.pack("<Q", 4096) + s(b"ab") * (N - 10),
     "truncated: item 9 of 'k' needs 4096 bytes at offset"),
    ("length-cut", strings([b"ab"] * N)[:-7],
     f"truncated: the length of item {N - 1} of 'k' needs 8 bytes at offset"),
    ("huge-length", strings([b"ab"] * 3 + [b""] * (N - 3)).replace(
        struct.pack("<Q", 0), struct.pack("<Q", 2**63), 1),
     "truncated: item 3 of 'k' needs 9223372036854775808 bytes at offset"),
    ("numbers-past-end", struct.pack("<IQ", UINT8, N) + b"\0" * (N - 1),
     f"truncated: the {N} items of 'k' needs {N} bytes at offset"),
])
def test_big_arrays_are_checked_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        case: str, value: bytes, text: str) -> None:
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(gguf_bytes([kv("k", ARRAY, value)], align=1))  # the file ends there
    with pytest.raises(FormatError) as caught:
        ml.open_weights(path)
    assert str(caught.value).startswith(f"{path}: {text}"), str(caught.value)
    monkeypatch.setattr(gguf_header, "LAZY_ITEMS", 2**62)  # every array decoded at open
    with pytest.raises(FormatError) as eager:
        ml.open_weights(path)
    assert str(eager.value) == str(caught.value)  # the message the decoding parser gives
