"""Building and loading the fused C dequantization kernels, and falling back without them."""

from __future__ import annotations

import ctypes
import mmap
import shutil
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.quant import native


@pytest.fixture
def fresh_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A new kernel folder and no loaded library, restored afterwards."""
    monkeypatch.setenv("MLMF_KERNEL_DIR", str(tmp_path / "kernels"))
    native.library.cache_clear()
    yield tmp_path / "kernels"
    native.library.cache_clear()


def q4_0_tensor() -> tuple[ml.quant.QTensor, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_0)
    return ml.quant.QTensor("q4_0", (64, 256), torch.from_numpy(raw)), ref


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")
def test_builds_once_into_the_kernel_folder(fresh_build: Path) -> None:
    lib = native.library()
    assert lib is not None
    built = sorted(fresh_build.glob("dequant-*.so"))
    assert len(built) == 1 and Path(lib._name) == built[0]
    stamp = built[0].stat().st_mtime_ns
    native.library.cache_clear()
    assert native.library() is not None and built[0].stat().st_mtime_ns == stamp  # reused
    assert not list(fresh_build.glob("*.so.*")) and not list(fresh_build.glob("tmp*"))
    qt, ref = q4_0_tensor()
    assert np.array_equal(qt.dequantize().numpy().view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("cc", [None, shutil.which("false")])
def test_without_a_working_compiler_the_torch_path_is_used(
        fresh_build: Path, monkeypatch: pytest.MonkeyPatch, cc: str | None) -> None:
    monkeypatch.setattr(native, "compiler", lambda: cc)  # none at all, or one that fails
    assert native.library() is None and native.dequantizer("q4_0") is None
    assert not list(fresh_build.glob("*"))  # no half-written library left behind
    qt, ref = q4_0_tensor()
    assert np.array_equal(qt.dequantize().numpy().view(np.uint32), ref.view(np.uint32))


def test_an_unwritable_kernel_folder_falls_back(
        fresh_build: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MLMF_KERNEL_DIR", str(blocker / "kernels"))
    assert native.library() is None
    qt, ref = q4_0_tensor()
    assert np.array_equal(qt.dequantize().numpy().view(np.uint32), ref.view(np.uint32))


def test_the_library_name_depends_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library built for another CPU (shared home folder) is never picked up here."""
    keys = set()
    for cpu in ("flags : avx2", "flags : avx2 avx512f"):
        monkeypatch.setattr(native, "cpu_identity", lambda cpu=cpu: cpu)
        keys.add(native.library_name("cc", native.FLAGS, "cc 1.0"))
    assert len(keys) == 2


def test_switched_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMF_NATIVE", "0")
    assert native.dequantizer("q8_0") is None
    assert native.dequantizer("f16") is None  # plain float types never use it


def vm_flags(address: int) -> list[str]:
    """The kernel's flags of the mapping holding ``address`` (``hg``: advised huge pages)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0]:
                start, stop = (int(x, 16) for x in head[0].split("-"))
                inside = start <= address < stop
            elif inside and line.startswith("VmFlags:"):
                return head[1:]
    return []


def test_large_fresh_outputs_are_float32_and_writable() -> None:
    qt, ref = q4_0_tensor()
    big = ml.quant.QTensor("q4_0", (4096, 256), qt.data.repeat(64, 1))
    out = big.dequantize()
    assert out.dtype == torch.float32 and out.shape == (4096, 256)
    # control: a fresh mapping nobody advised has no "hg" (torch.empty cannot serve: its
    # memory may come from a heap that an earlier advice already marked)
    fresh = mmap.mmap(-1, 4 << 20)
    view = ctypes.c_char.from_buffer(fresh)
    control = vm_flags(ctypes.addressof(view) + (2 << 20))
    del view
    fresh.close()
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()
    if thp and "rd" in control:  # Linux with THP, and a kernel that shows VmFlags
        assert "hg" not in control
        assert "hg" in vm_flags(out.data_ptr() + (2 << 20))  # advised huge pages
    assert np.array_equal(out[:64].numpy(), ref)
    out.add_(1)  # an ordinary tensor: writable, resizable
    out.resize_(8, 8)
    assert out.shape == (8, 8)


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("group_size", [2, 32, 128])
def test_int4_kernel_is_bitwise_the_formula(group_size: int) -> None:
    """The C int4 dequantizer against the naive formula in float32, with edge parameters."""
    g = torch.Generator().manual_seed(3)
    rows, cols = 24, 256
    packed = torch.randint(0, 256, (rows, cols // 2), dtype=torch.uint8, generator=g)
    groups = (rows, cols // group_size)
    scale = (torch.randn(groups, generator=g) * 0.01).bfloat16()
    zero = torch.randn(groups, generator=g).bfloat16()
    scale[0, 0], zero[1, 0], scale[2, 0] = 0.0, float("inf"), float("nan")
    scale[3, 0] = torch.tensor(1e-40).bfloat16()  # subnormal
    qt = ml.quant.QTensor("int4", (rows, cols), packed, {"scale": scale, "zero": zero},
                          {"group_size": group_size})
    assert native.int4_dequantizer() is not None
    ours = qt.dequantize().numpy()
    b = packed.numpy()
    codes = np.stack([b & 15, b >> 4], axis=-1).reshape(rows, cols).astype(np.float32)
    s = scale.float().numpy().repeat(group_size, axis=1)
    z = zero.float().numpy().repeat(group_size, axis=1)
    with np.errstate(invalid="ignore"):
        expected = (codes - np.float32(8)) * s + z  # float32 throughout, no fused multiply-add
    np.testing.assert_array_equal(ours.view(np.uint32), expected.view(np.uint32))
