"""Sizes measured from objects: each storage once, anonymous vs memory-mapped from a file."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mlmf_lab as ml
from mlmf_lab.cache import footprint as sizing
from mlmf_lab.cache.footprint import Footprint, measure, parse_maps
from mlmf_lab.quant.base import QTensor


def storage_bytes(*tensors: torch.Tensor) -> int:
    """Reference: bytes of the distinct storages behind the tensors."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors}.values())


def test_plain_tensor_is_anonymous() -> None:
    t = torch.zeros(10, 7, dtype=torch.float64)
    assert measure(t) == Footprint(anonymous=560, mapped=0, device=0, storages=1, files=())


def test_views_and_tied_weights_count_the_storage_once() -> None:
    base = torch.randn(64, 32)
    value = {"a": base, "tied": base, "t": base.t(), "row": base[3], "narrow": base[:, 5:9]}
    assert measure(value).total == base.nbytes == storage_bytes(*value.values())
    # a small view keeps its whole storage alive, so the storage is what counts
    assert measure(base[0, :2]).total == base.nbytes


def test_module_counts_parameters_buffers_and_grads() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 16), nn.LayerNorm(16), nn.Linear(16, 10, bias=False))
    model[2].weight = model[0].weight  # tied, as in language models
    model.register_buffer("steps", torch.zeros(3, dtype=torch.long))
    tensors = [*model.parameters(), *model.buffers()]
    assert measure(model).total == storage_bytes(*tensors) == (160 + 32) * 4 + 24
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert measure(model).total == storage_bytes(*tensors, *grads)


def test_qtensor_counts_data_and_params() -> None:
    qt = QTensor("int8", (4, 8), torch.zeros(4, 8, dtype=torch.int8),
                 {"scale": torch.ones(4), "zero": torch.zeros(4)})
    assert measure(qt).anonymous == qt.nbytes == 32 + 16 + 16


def test_numpy_bytes_meta_and_cycles() -> None:
    arr = np.zeros((10, 10), dtype=np.float32)
    loop: dict[str, object] = {"arr": arr, "view": arr[2:], "raw": b"x" * 100}
    loop["self"] = loop
    assert measure(loop).anonymous == 400 + 100
    assert measure(torch.empty(1000, device="meta")).total == 0
    assert measure([None, 3, "text", torch.float32]).total == 0


def test_safetensors_state_dict_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ml.save_state_dict({"w": torch.randn(256, 64), "b": torch.randn(64)}, path)
    sd = ml.load_state_dict(path)
    with ml.open_weights(path) as wf:
        expected = sum(wf.info(n).nbytes for n in wf)  # reference: the file's own header
    fp = measure(sd)
    assert (fp.anonymous, fp.mapped, fp.files) == (0, expected, (str(path),))
    # a dtype cast copies the data into anonymous memory
    half = ml.load_state_dict(path, dtype=torch.float16)
    assert measure(half) == Footprint(expected // 2, 0, 0, 2, ())


def test_shared_memory_is_ram_not_a_file() -> None:
    t = torch.ones(4096).share_memory_()
    fp = measure(t)
    assert (fp.anonymous, fp.mapped) == (t.nbytes, 0)


def test_numpy_memmap_is_mapped(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"\0" * 8192)
    arr = np.memmap(path, dtype=np.uint8, mode="r")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert measure(np.frombuffer(m, dtype=np.uint8)).mapped == 8192
        del m  # release the exported buffer before the mapping closes
    fp = measure(arr)
    assert (fp.mapped, fp.files) == (8192, (str(path),))


def test_parse_maps_fallback_agrees_with_the_kernel_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.safetensors"
    ml.save_state_dict({"w": torch.randn(128, 32)}, path)
    value = {"file": ml.load_state_dict(path), "ram": torch.randn(100)}
    fast = measure(value)
    monkeypatch.setattr(sizing.AddressSpace, "_query", lambda self, addr: False)
    assert measure(value) == fast == Footprint(400, 128 * 32 * 4, 0, 2, (str(path),))


def test_parse_maps_reads_only_file_backed_lines() -> None:
    text = (
        "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon\n"
        "00e03000-00e24000 rw-p 00000000 00:00 0           [heap]\n"
        "7f2c0000-7f2c1000 rw-s 00000000 00:05 99          /dev/shm/torch_1 (deleted)\n"
        "7f000000-7f001000 rw-p 00000000 00:00 0\n"
        "35b1800000-35b1820000 r-xp 00000000 08:02 135522  /usr/lib64/ld 2.15.so\n"
    )
    regions = parse_maps(text)
    assert [(r.start, r.end, r.path) for r in regions] == [
        (0x400000, 0x452000, "/usr/bin/dbus-daemon"),
        (0x7F2C0000, 0x7F2C1000, "/dev/shm/torch_1 (deleted)"),
        (0x35B1800000, 0x35B1820000, "/usr/lib64/ld 2.15.so"),
    ]
