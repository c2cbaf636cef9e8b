"""Hostile and malformed GGUF files: each gives an MLMFError naming the file, never a hang.

The files are built byte by byte here (not with our writer), so each case breaks exactly
one rule of the format.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from attacks.gguf_bytes import ARRAY, STRING, UINT8, UINT32, gguf_bytes, info, kv, s

import mlmf_lab as ml
from mlmf_lab.errors import FormatError, MLMFError, UnsupportedError
from mlmf_lab.formats.gguf import GGUFFile

GOOD = gguf_bytes([kv("general.architecture", STRING, s("llama"))], [info("w", (4,))], b"\0" * 16)

# (case id, file bytes, error type, text the message must contain)
CASES = [
    ("short", b"GGUF\x03\0\0\0", FormatError, "shorter than the 24-byte GGUF header"),
    ("version-1", gguf_bytes(version=struct.pack("<I", 1)), FormatError,
     "GGUF version 1; supported: 2, 3"),
    ("big-endian", gguf_bytes(version=struct.pack(">I", 3)), UnsupportedError, "big-endian"),
    ("huge-counts", gguf_bytes(counts=(2**62, 2**62)), FormatError, "more than the"),
    ("truncated-kv", GOOD[:40], FormatError, "truncated"),
    ("truncated-info", GOOD[:70], FormatError, "truncated"),
    ("truncated-data", GOOD[:-8], FormatError, "runs past the end of the file"),
    ("string-past-end", gguf_bytes([kv("k", STRING, struct.pack("<Q", 2**40) + b"ab")]),
     FormatError, "truncated: the string value of 'k' needs 1099511627776 bytes"),
    ("array-of-u8-past-end", gguf_bytes([kv("k", ARRAY, struct.pack("<IQ", UINT8, 2**60))]),
     FormatError, "truncated: the 1152921504606846976 items of 'k'"),
    ("array-of-strings-huge", gguf_bytes([kv("k", ARRAY, struct.pack("<IQ", STRING, 2**50))]),
     FormatError, "claims 1125899906842624 items"),
    ("arrays-nested-deep", gguf_bytes([kv("k", ARRAY, struct.pack("<IQ", ARRAY, 1) * 4 +
                                          struct.pack("<IQ", UINT8, 0))]),
     FormatError, "nested deeper than 3"),
    ("duplicate-key", gguf_bytes([kv("k", UINT32, b"\0" * 4), kv("k", UINT32, b"\0" * 4)]),
     FormatError, "metadata key 'k' appears twice"),
    ("unknown-value-type", gguf_bytes([kv("k", 13, b"\0" * 8)]), FormatError, "value type 13"),
    ("key-not-utf8", gguf_bytes([kv(b"\xff\xfe", UINT32, b"\0" * 4)]), FormatError,
     "not valid UTF-8"),
    ("bad-alignment", gguf_bytes([kv("general.alignment", UINT32, struct.pack("<I", 3))]),
     FormatError, "power of two, found 3"),
    ("alignment-wrong-type", gguf_bytes([kv("general.alignment", STRING, s("32"))]),
     FormatError, "general.alignment must be a uint32"),
    ("unknown-ggml-type", gguf_bytes(infos=[info("w", (4,), type_id=99)], data=b"\0" * 16),
     FormatError, "unknown ggml type 99"),
    ("too-many-dims", gguf_bytes(infos=[info("w", (1,) * 5)], data=b"\0" * 4), FormatError,
     "5 dimensions; GGUF allows 4"),
    ("row-not-blocks", gguf_bytes(infos=[info("w", (33,), type_id=8)], data=b"\0" * 64),
     FormatError, "rows of 33 weights are not a multiple of the type's block size 32"),
    ("scalar-of-blocks", gguf_bytes(infos=[info("w", (), type_id=8)], data=b"\0" * 64),
     FormatError, "is a scalar stored as blocks of 32"),
    ("offset-past-end", gguf_bytes(infos=[info("w", (4,), offset=4096)], data=b"\0" * 16),
     FormatError, "runs past the end of the file"),
    ("offset-misaligned", gguf_bytes(infos=[info("w", (4,), offset=4)], data=b"\0" * 32),
     FormatError, "offset 4 is not a multiple of the alignment 32"),
    ("overlap", gguf_bytes(infos=[info("a", (16,)), info("b", (16,), offset=32)],
                           data=b"\0" * 96), FormatError, "tensors 'a' and 'b' overlap"),
    ("duplicate-name", gguf_bytes(infos=[info("a", (4,)), info("a", (4,), offset=32)],
                                  data=b"\0" * 64), FormatError, "'a' appears twice"),
    ("name-not-utf8", gguf_bytes(infos=[s(b"\xc3") + struct.pack("<I", 0)]), FormatError,
     "not valid UTF-8"),
]


@pytest.mark.parametrize("case,data,error,text", CASES, ids=[c[0] for c in CASES])
def test_bad_gguf(tmp_path: Path, case: str, data: bytes, error: type, text: str) -> None:
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    with pytest.raises(error) as caught:
        ml.open_weights(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and text in message, message


def test_good_file_of_the_builder_opens(tmp_path: Path) -> None:
    path = tmp_path / "good.gguf"
    path.write_bytes(GOOD)
    with ml.open_weights(path) as wf:
        assert wf.metadata == {"general.architecture": "llama"}
        assert wf.tensor("w").tolist() == [0.0] * 4


def test_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUX" + GOOD[4:])
    with pytest.raises(UnsupportedError, match="not a weight file"):
        ml.open_weights(path)  # detection is by magic: this is no GGUF file at all
    with pytest.raises(FormatError, match=r"bad magic b'GGUX'; expected b'GGUF'"):
        GGUFFile(path)


def test_closed_file(tmp_path: Path) -> None:
    path = tmp_path / "good.gguf"
    path.write_bytes(GOOD)
    wf = ml.open_weights(path)
    kept = wf.tensor("w")
    wf.close()
    assert kept.tolist() == [0.0] * 4  # tensors already returned stay valid
    with pytest.raises(MLMFError, match="closed"):
        wf.tensor("w")


def rich_file(tmp_path: Path) -> bytes:
    import torch

    path = tmp_path / "rich.gguf"
    meta = {"general.architecture": "llama", "names": ["a", "bc"], "n": 3, "x": 0.5, "j": {"a": 1}}
    ml.save_state_dict({"a": torch.randn(2, 64), "b": torch.randn(8)}, path, metadata=meta,
                       quant="q4_0")
    return path.read_bytes()


def open_and_read(path: Path) -> None:
    with ml.open_weights(path) as wf:
        for name in wf:
            wf.tensor(name)


def test_every_truncation_is_reported(tmp_path: Path) -> None:
    raw = rich_file(tmp_path)
    path = tmp_path / "cut.gguf"
    for n in range(0, len(raw), 7):
        path.write_bytes(raw[:n])
        with pytest.raises(MLMFError):
            open_and_read(path)


def test_random_header_corruption_never_escapes(tmp_path: Path) -> None:
    import random

    raw = rich_file(tmp_path)
    header_end = raw.index(b"b\x01\x00\x00\x00") + 40  # past the last tensor info
    rng = random.Random(0)
    path = tmp_path / "fuzz.gguf"
    for _ in range(300):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(4, header_end)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            open_and_read(path)
        except MLMFError as e:
            assert str(e).startswith(str(path))
