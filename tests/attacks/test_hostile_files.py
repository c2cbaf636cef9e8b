"""Weight files that mutation found getting past the readers (issue 20): each now an
``MLMFError`` naming the file, with the problem in its message.

The builders are in ``attacks/hostile.py``; ``test_fuzz.py`` keeps looking for more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import mlmf_lab as ml
from attacks import hostile as h
from mlmf_lab.errors import FormatError, MLMFError, ShardError, UnsafeFileError

TENSOR = '"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'

# (case, builder, error type, the message after "<file>: ", the file the message names)
CASES: list[tuple[str, Callable[[Path], Path], type, str, str]] = [
    # JSON that json.loads fails on with RecursionError / ValueError, wherever it is read
    ("header-deep", h.safetensors_file(h.st_raw('{"x": ' + h.DEEP + ", " + TENSOR + "}")),
     FormatError, "header nests deeper than Python can parse", "x.safetensors"),
    ("header-nested", h.safetensors_file(h.st_raw('{"x": ' + h.NESTED + "}")),
     FormatError, "header nests deeper than 64 levels", "x.safetensors"),
    ("header-huge-int", h.safetensors_file(h.st_raw(
        '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, ' + h.HUGE_INT + "]}}")),
     FormatError, "header is not valid JSON (Exceeds the limit (4300 digits)", "x.safetensors"),
    ("metadata-json-deep", h.safetensors_file(h.with_metadata(
        {"x": h.DEEP, "mlmf.json": '["x"]'})),
     FormatError, "structured metadata 'x' nests deeper", "x.safetensors"),
    ("metadata-json-huge-int", h.safetensors_file(h.with_metadata(
        {"x": h.HUGE_INT, "mlmf.json": '["x"]'})),
     FormatError, "structured metadata 'x' is not valid JSON (Exceeds", "x.safetensors"),
    ("tied-not-names", h.safetensors_file(h.with_metadata({"mlmf.tied": '{"b": {"x": 1}}'})),
     FormatError, "mlmf.tied must be a JSON object of names", "x.safetensors"),
    ("tied-deep", h.safetensors_file(h.with_metadata({"mlmf.tied": h.DEEP})),
     FormatError, "mlmf.tied nests deeper", "x.safetensors"),
    ("quant-huge-int", h.safetensors_file(h.with_metadata({"mlmf.quant": h.HUGE_INT})),
     FormatError, "mlmf.quant is not valid JSON (Exceeds", "x.safetensors"),
    ("shape-0-beside-2**62", h.safetensors_file(h.st_raw(
        '{"a": {"dtype": "F32", "shape": [0, 4611686018427387904], "data_offsets": [0, 0]}}')),
     FormatError, "tensor 'a': shape [0, 4611686018427387904] cannot be addressed",
     "x.safetensors"),
    ("a-fifo", h.fifo_file, MLMFError, "expected the file to be a regular file, found a FIFO",
     "x.safetensors"),
    # sharded folders: the index, its metadata, and the shard names it lists
    ("index-deep", h.sharded(lambda d, m: '{"weight_map": ' + h.DEEP + "}"),
     ShardError, "the index nests deeper than Python can parse", "index.json"),
    ("index-huge-int", h.sharded(lambda d, m: json.dumps(d)[:-1] + ', "n": ' + h.HUGE_INT + "}"),
     ShardError, "the index is not valid JSON (Exceeds the limit", "index.json"),
    ("index-metadata-text", h.sharded(lambda d, m: d.update(metadata="ab")),
     ShardError, "index metadata must be a JSON object, found str", "index.json"),
    ("index-metadata-list", h.sharded(lambda d, m: d.update(metadata=[1, 2])),
     ShardError, "index metadata must be a JSON object, found list", "index.json"),
    ("shard-dot", h.sharded(h.shard_named(".")),
     ShardError, "shard '.' is a folder; expected a safetensors file", "index.json"),
    ("shard-subfolder", h.sharded(h.subfolder_shard),
     ShardError, "shard 'sub' is a folder", "index.json"),
    ("shard-nul", h.sharded(h.shard_named("a\0b")),
     ShardError, "shard name 'a\\x00b' holds a NUL byte", "index.json"),
    ("shard-300-chars", h.sharded(h.shard_named("x" * 300)),
     ShardError, "(300 characters) cannot be opened (File name too long)", "index.json"),
    ("shard-long-number", h.sharded(h.shard_named(10**100)),
     ShardError, "shard name " + "1" + "0" * 59 + "... "
     "(101 characters) is not a file name", "index.json"),
    ("shard-surrogate", h.sharded(h.shard_named("\ud800.safetensors")),
     ShardError, "shard name '\\ud800.safetensors' is not valid text", "index.json"),
    ("shard-fifo", h.sharded(h.fifo_shard),
     ShardError, "shard 'pipe.safetensors' is a FIFO (named pipe)", "index.json"),
    # GGUF: a 0 beside a huge dimension holds 0 bytes, so the range checks passed it
    ("gguf-0-and-2**63", h.gguf_dims((0, 2**63), 0),
     FormatError, "tensor 'w': shape [0, 9223372036854775808] cannot be addressed", "x.gguf"),
    ("gguf-q4_0-2**63-and-0", h.gguf_dims((2**63, 0), 2),
     FormatError, "shape [9223372036854775808, 0] cannot be addressed", "x.gguf"),
    ("gguf-metadata-deep", h.gguf_meta("x", h.DEEP),
     FormatError, "structured metadata 'x' nests deeper", "x.gguf"),
    ("gguf-tied-huge-int", h.gguf_meta("mlmf.tied", h.HUGE_INT),
     FormatError, "mlmf.tied is not valid JSON (Exceeds", "x.gguf"),
    # .bin through torch.load(weights_only=True): what escaped, and a claim past the file
    ("bin-storage-claim", h.bin_file(h.storage_claim(2**30)),
     FormatError, "the pickle's 1 storages claim 4294967304 bytes, but only 31 bytes follow",
     "x.bin"),
    ("bin-type-error", h.bin_file(h.legacy(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.")),
     FormatError, "not a readable PyTorch file (TypeError: _rebuild_tensor_v2()", "x.bin"),
    ("bin-struct-error", h.bin_file(h.legacy(b"\x80\x02J\x01\x00", b"")),
     FormatError, "not a readable PyTorch file (error: unpack requires", "x.bin"),
    ("bin-index-error", h.bin_file(h.legacy(b"\x80\x02h", b"")),
     FormatError, "not a readable PyTorch file (IndexError", "x.bin"),
    ("bin-assertion", h.bin_file(h.legacy(b"\x80\x02}.", h.pickle.dumps(["k"], protocol=2))),
     FormatError, "not a readable PyTorch file (AssertionError: storage key 'k'", "x.bin"),
    ("bin-multi-disk-zip", h.bin_file(h.multi_disk_zip()),
     FormatError, "not a readable PyTorch file (BadZipFile: zipfiles that span multiple disks",
     "x.bin"),
    # DCP: records built without their fields, a frame of 2**62 bytes, chunks of zeros
    ("dcp-no-size", h.dcp_folder(h.drop_field("size")),
     FormatError, "DCP entry 'a' is malformed", ".metadata"),
    ("dcp-no-properties", h.dcp_folder(h.drop_field("properties")),
     FormatError, "DCP entry 'a' is malformed", ".metadata"),
    ("dcp-huge-frame", h.dcp_folder(h.huge_frame),
     FormatError, "DCP metadata is not readable", ".metadata"),
    ("dcp-zeroed-data", h.dcp_folder(h.zero_data),
     FormatError, "DCP could not read the tensors (", "x.dcp"),
]


def read_weights(path: Path) -> None:
    with ml.open_weights(path) as wf:
        wf.state_dict()
    if path.suffix == ".gguf":
        ml.open_weights(path, reader="gguf")


@pytest.mark.parametrize("case,build,error,text,names", CASES, ids=[c[0] for c in CASES])
def test_hostile_weight_file(tmp_path: Path, case: str, build: Callable[[Path], Path],
                             error: type, text: str, names: str) -> None:
    path = build(tmp_path)
    with pytest.raises(error) as info:
        read_weights(path)
    message = str(info.value)
    assert text in message, message[:300]
    assert re.search(rf"{re.escape(str(tmp_path))}/\S*{re.escape(names)}: ", message), message[:300]


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO never gets an open() that would wait for a writer: not as a file, not as a
    shard, not as JSON beside the weights."""
    pipe = h.fifo_file(tmp_path)
    with pytest.raises(MLMFError, match="found a FIFO"):
        ml.formats.registry.resolve(pipe)
    with pytest.raises(MLMFError, match="x.safetensors: expected the config to be a regular "
                                        "file, found a FIFO"):
        ml.files.read_json(pipe, "the config")


def test_the_gguf_reader_is_guarded_too(tmp_path: Path) -> None:
    path = h.gguf_dims((2**63, 0), 2)(tmp_path)
    with pytest.raises(FormatError, match="cannot be addressed"):
        ml.open_weights(path, reader="gguf")


def test_a_pickle_that_runs_code_in_the_size_scan_does_not(tmp_path: Path) -> None:
    """The legacy size scan unpickles every pickle of the file: it must resolve no global."""
    marker = tmp_path / "pwned"
    evil = (b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little")
            + f"touch {marker}".encode() + b"\x85R.")
    path = h.bin_file(h.legacy(evil))(tmp_path)
    with pytest.raises(UnsafeFileError, match="refusing to unpickle"):
        ml.open_weights(path)
    assert not marker.exists()


def test_read_json_bounds(tmp_path: Path) -> None:
    from mlmf_lab.files import loads_json, read_json

    assert loads_json('{"a": [1, {"b": null}]}', "x.json", expect=dict) == {"a": [1, {"b": None}]}
    with pytest.raises(FormatError, match=r"x.json: the index must be a JSON object, found list"):
        loads_json("[1]", "x.json", "the index", expect=dict)
    with pytest.raises(FormatError, match=r"x.json: JSON is not UTF-8 text \(invalid start byte "
                                          r"at byte 1\)"):
        loads_json(b'"\xff"', "x.json")
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 600 + "0]")
    with pytest.raises(FormatError, match="big.json: JSON is 1203 bytes; more than 1000"):
        read_json(big, max_bytes=1000)
    with pytest.raises(MLMFError, match=r"nope.json: cannot read JSON \(No such file"):
        read_json(tmp_path / "nope.json")
    with pytest.raises(MLMFError, match="expected JSON to be a regular file, found a folder"):
        read_json(tmp_path)
