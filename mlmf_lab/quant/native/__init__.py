"""Fused C kernels, compiled once per machine with the system's C compiler.

Three libraries: ``dequant.c`` (GGUF block dequantization), ``kquant.c`` (Q4_K and Q6_K
quantization, the same bytes as ``blocks_k_quant``; see ``quantizer``) and ``int8``
(``int8.c``, ``q4_0.c``, ``amx.c``: int8 and q4_0 linears, split by ``pool.c`` over torch's
OpenMP team or, when a busy neighbour on another core stalls that team, over helper threads
of its own; see ``int8_linear``).

The torch block functions (``blocks_legacy``, ``blocks_k``) are the reference: vectorized
over blocks, but each op is a separate pass over memory, so dequantizing a block type into
a reused buffer costs several times a plain copy. ``dequant.c`` does the same maths in one
pass per block. It is compiled on first use (``cc -O3 -march=native``, about a second) into
``$MLMF_KERNEL_DIR`` or ``$XDG_CACHE_HOME/mlmf_lab/kernels`` (default ``~/.cache``), named
by a hash of the source, flags, compiler and CPU, and loaded with ``ctypes`` (calls release the
GIL, so ``chunks.run_chunks`` runs them on several threads). Without a working compiler,
or with ``MLMF_NATIVE=0``, ``dequantizer`` returns None and callers use the torch functions.
The tests check both paths bitwise against ``gguf.quants``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# each library: its C files (the first names it; headers beside them count for the build's
# name), and the flags it needs beyond FLAGS
SOURCES = {"dequant": ["dequant.c"], "kquant": ["kquant.c"],
           "int8": ["int8.c", "q4_0.c", "amx.c", "pool.c"]}
EXTRA_FLAGS = {"dequant": [], "kquant": [], "int8": ["-pthread", "-fopenmp"]}
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c11",
         "-shared", "-fPIC"]
PORTABLE_FLAGS = [f for f in FLAGS if f != "-march=native"]
_lock = threading.Lock()

Dequantizer = Callable[[torch.Tensor, torch.Tensor], None]
Quantizer = Callable[[torch.Tensor, torch.Tensor], bool]


def enabled() -> bool:
    return os.environ.get("MLMF_NATIVE", "1") not in ("0", "false", "no", "off")


def kernel_dir() -> Path:
    if os.environ.get("MLMF_KERNEL_DIR"):
        return Path(os.environ["MLMF_KERNEL_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlmf_lab" / "kernels"


def cpu_identity() -> str:
    """What ``-march=native`` depends on: a library built on another CPU (a home folder shared
    across machines) must not be loaded here, where it could stop on an illegal instruction."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def source_paths(source: str) -> list[Path]:
    """The C files of library ``source``, then the headers they may include."""
    return [HERE / name for name in SOURCES[source]] + sorted(HERE.glob("*.h"))


def _compile(cc: str, flags: list[str], sources: list[Path], target: Path) -> bool:
    """Build into a temporary file beside ``target``, then rename it into place (atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        log.warning("mlmf_lab: cannot write native kernels to %s: %s", target.parent, exc)
        return False
    try:
        c_files = [str(p) for p in sources if p.suffix == ".c"]
        done = subprocess.run([cc, *flags, *c_files, "-o", tmp],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log.info("mlmf_lab: %s %s failed: %s", cc, " ".join(flags), done.stderr.strip())
            return False
        os.replace(tmp, target)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("mlmf_lab: compiling %s failed: %s", sources[0].name, exc)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library_name(cc: str, flags: list[str], version: str, source: str = "dequant") -> str:
    """The file name of a build: a hash of everything the machine code depends on."""
    parts = [p.read_text() for p in source_paths(source)] + [cc, *flags, version, cpu_identity()]
    return f"{source}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}.so"


@functools.cache
def library(source: str = "dequant") -> ctypes.CDLL | None:
    """The compiled ``source``.c, building it if this machine has none yet; None if impossible."""
    cc = compiler()
    if cc is None or not all(p.exists() for p in source_paths(source)):
        return None
    with _lock:
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                     timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("mlmf_lab: %s does not run (%s); using the torch kernels", cc, exc)
            return None
        for flags in (FLAGS + EXTRA_FLAGS[source], PORTABLE_FLAGS + EXTRA_FLAGS[source]):
            target = kernel_dir() / library_name(cc, flags, version, source)
            try:
                if target.exists() or _compile(cc, flags, source_paths(source), target):
                    lib = ctypes.CDLL(str(target))
                    break
            except OSError as exc:
                log.info("mlmf_lab: cannot use %s: %s", target, exc)
        else:
            log.warning("mlmf_lab: no native %s kernels; using the torch ones", source)
            return None
    if source == "int8":
        _declare_int8(lib)
        return lib
    if source == "kquant":
        return lib
    lib.mlmf_int4_groups.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2
    lib.mlmf_int4_groups.restype = None
    return lib


def dequantizer(scheme: str) -> Dequantizer | None:
    """``(blocks (n, type_size) uint8, out (n, block_size) float32) -> None``, or None
    (the native kernels are off, or ``dequant.c`` has no ``mlmf_deq_<scheme>``).

    Every ``mlmf_deq_*`` function of ``dequant.c`` has this one signature; other kernels
    (``mlmf_int4_groups``) are named otherwise, so no scheme name reaches them."""
    lib = library() if enabled() else None
    fn = None if lib is None else getattr(lib, f"mlmf_deq_{scheme}", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None

    def run(blocks: torch.Tensor, out: torch.Tensor) -> None:
        if not (blocks.is_contiguous() and out.is_contiguous()):
            raise ValueError("native dequantization needs contiguous blocks and output")
        fn(blocks.data_ptr(), out.data_ptr(), blocks.shape[0])

    return run


def int4_dequantizer() -> Callable[..., None] | None:
    """``(packed (n, g/2) uint8, scale (n,) bf16, zero (n,) bf16, out (n, g) float32)``, the
    ``int4`` scheme's groups (see ``intx``); None when the native kernels are off."""
    lib = library() if enabled() else None
    if lib is None:
        return None
    fn = lib.mlmf_int4_groups

    def run(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
            out: torch.Tensor) -> None:
        if not all(t.is_contiguous() for t in (packed, scale, zero, out)):
            raise ValueError("native int4 dequantization needs contiguous tensors")
        if (scale.dtype, zero.dtype, packed.dtype, out.dtype) != (
                torch.bfloat16, torch.bfloat16, torch.uint8, torch.float32):
            raise ValueError("native int4 dequantization needs uint8 codes, bfloat16 scales "
                             "and zeros, and a float32 output")
        if not (packed.shape[0] == scale.numel() == zero.numel() == out.shape[0]
                and out.shape[1] == 2 * packed.shape[1]):
            raise ValueError("native int4 dequantization: the shapes do not agree")
        fn(packed.data_ptr(), scale.data_ptr(), zero.data_ptr(), out.data_ptr(),
           packed.shape[0], out.shape[1])

    return run


# -- K-quant quantization ------------------------------------------------------------------------
def quantizer(scheme: str, type_size: int,
              reference: Callable[[torch.Tensor, torch.Tensor], None],
              extra: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Quantizer | None:
    """``(x (n, 256) float32, out (n, type_size) uint8) -> bool`` from ``kquant.c``, or None.

    False means declined (NaN or infinity in ``x``; nothing written): the caller runs
    ``reference``. ``extra(x)``, if given, gives one float32 per 32 weights of ``x`` (Q4_K's
    root mean squares), which the C function takes after ``x``. The C quantizer is used
    only if it gives the bytes of ``reference`` on a probe (checked once): ``reference`` is
    torch's, and an order of float sums we did not foresee (another torch build) then costs
    speed, never different files.
    """
    if not enabled():
        return None
    return _checked_quantizer(scheme, type_size, reference, extra)


@functools.cache
def _checked_quantizer(scheme: str, type_size: int,
                       reference: Callable[[torch.Tensor, torch.Tensor], None],
                       extra: Callable[[torch.Tensor], torch.Tensor] | None) -> Quantizer | None:
    lib = library("kquant")
    fn = None if lib is None else getattr(lib, f"mlmf_quantize_{scheme}", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_void_p] * (3 if extra else 2) + [ctypes.c_int64]
    fn.restype = ctypes.c_int

    def run(x: torch.Tensor, out: torch.Tensor) -> bool:
        if not (x.is_contiguous() and out.is_contiguous() and x.dtype == torch.float32
                and out.dtype == torch.uint8 and x.dim() == 2 and x.shape[1] == 256
                and tuple(out.shape) == (x.shape[0], type_size)):
            raise ValueError(f"native {scheme} quantization needs (n, 256) contiguous float32 "
                             f"rows and (n, {type_size}) bytes")
        if extra is None:
            return fn(x.data_ptr(), out.data_ptr(), x.shape[0]) == 0
        more = extra(x).contiguous()  # held until the call returns
        if more.dtype != torch.float32 or more.numel() * 32 != x.numel():
            raise ValueError(f"native {scheme} quantization: one float32 per 32 weights")
        return fn(x.data_ptr(), more.data_ptr(), out.data_ptr(), x.shape[0]) == 0

    probe = _probe_rows()
    ours = torch.empty(probe.shape[0], type_size, dtype=torch.uint8)
    theirs = torch.empty_like(ours)
    reference(probe, theirs)
    if not (run(probe, ours) and torch.equal(ours, theirs)):
        log.warning("mlmf_lab: the C %s quantizer differs from torch's here; using torch's",
                    scheme)
        return None
    return run


def _probe_rows() -> torch.Tensor:
    """Rows of 256 that reach the quantizers' corners: zeros of both signs, constants, one
    live sub-block, tiny and huge values, small integers, and plain Gaussian rows."""
    g = torch.Generator().manual_seed(21)
    rows = torch.randn(48, 256, generator=g)
    rows[:8] *= torch.exp(torch.randn(8, 1, generator=g) * 8)
    rows[8] = 0.0
    rows[9] = -0.0
    rows[10, ::3] = -0.0
    rows[11] = 2.5
    rows[12] = -2.5
    rows[13] = 0.0
    rows[13, :16] = torch.linspace(-1, 1, 16)
    rows[14] = rows[14].abs()
    rows[14, ::7] = 0.0
    rows[15] = torch.randint(-3, 4, (256,), generator=g).float()
    rows[16] *= 1e-20
    rows[17, :128] = 0.0
    return rows


# -- int8 linear ---------------------------------------------------------------------------------
INT8_MAX_IN = 65536  # longest input row whose u8 x s8 sums fit in int32


def _declare_int8(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.mlmf_int8_linear.argtypes = [p, i64, i64, p, i64, p, p, p, p, ctypes.c_int]
    lib.mlmf_int8_linear.restype = ctypes.c_int
    lib.mlmf_int8_matmul.argtypes = lib.mlmf_int8_linear.argtypes
    lib.mlmf_int8_matmul.restype = ctypes.c_int
    lib.mlmf_q4_0_linear.argtypes = [p, i64, i64, p, p, i64, p, p, ctypes.c_int]
    lib.mlmf_q4_0_linear.restype = ctypes.c_int
    lib.mlmf_int8_vnni.argtypes = []
    lib.mlmf_int8_vnni.restype = ctypes.c_int
    lib.mlmf_pool_openmp.argtypes = [ctypes.c_int]
    lib.mlmf_pool_openmp.restype = None


def openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/lib" in line}
    except OSError:
        return set()
    return {p for p in paths if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp"))}


def int8_vnni() -> bool:
    """The int8 library is built, with AVX512-VNNI, and the native kernels are on."""
    return enabled() and _int8_usable()


@functools.cache
def _int8_usable() -> bool:
    """Loaded into a process that imported torch, the library binds to torch's own libgomp
    (same soname), so its work can run on torch's thread team (``pool.c``). A second
    OpenMP runtime (torch built against another one) would have its own team, spinning
    against torch's on the same cores: then only the library's own helper threads run."""
    lib = library("int8")
    if lib is None or not lib.mlmf_int8_vnni():
        return False
    runtimes = openmp_runtimes()
    if len(runtimes) > 1:
        log.info("mlmf_lab: two OpenMP runtimes (%s); the int8 kernels use their own threads",
                 ", ".join(sorted(runtimes)))
    lib.mlmf_pool_openmp(len(runtimes) == 1)
    return True


def _bias_ptr(bias: torch.Tensor | None, n: int, kernel: str) -> int | None:
    """The bias's address, once it is known to hold ``n`` float32 values (C reads n of them)."""
    if bias is None:
        return None
    if bias.dtype != torch.float32 or bias.numel() != n or not bias.is_contiguous():
        raise ValueError(f"{kernel} kernel: bias must be {n} contiguous float32 values, "
                         f"found {list(bias.shape)} {bias.dtype}")
    return bias.data_ptr()


def _int8_library() -> ctypes.CDLL:
    lib = library("int8")
    if lib is None:
        raise RuntimeError("the native int8 kernel is not available")
    return lib


def int8_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                rowsum: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``x @ W.T + bias`` for ``W = codes * scale[:, None]``, for a few rows: uint8 activations
    with a scale and zero point per row.

    ``x`` (m, k) float32, ``codes`` (n, k) int8, ``scale`` (n,) float32, ``rowsum`` (n,)
    int32 (``codes.sum(1)``), all contiguous. None when a row holds NaN or infinity (the
    caller takes a float path).
    """
    return _int8_call("mlmf_int8_linear", x, codes, scale, rowsum, bias)


def int8_matmul(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                rowsum: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """As ``int8_linear``, for many rows: int8 activations, symmetric, a scale per row."""
    return _int8_call("mlmf_int8_matmul", x, codes, scale, rowsum, bias)


def _int8_call(kernel: str, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
               rowsum: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    m, k = x.shape
    n = codes.shape[0]
    if k > INT8_MAX_IN or codes.shape[1] != k:
        raise ValueError(f"int8 kernel: input of {k} features for weights {list(codes.shape)}")
    y = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return y
    status = getattr(_int8_library(), kernel)(
        x.data_ptr(), m, k, codes.data_ptr(), n, scale.data_ptr(), rowsum.data_ptr(),
        _bias_ptr(bias, n, "int8"), y.data_ptr(), torch.get_num_threads())
    if status < 0:
        raise MemoryError("int8 kernel: out of memory")
    return y if status == 0 else None


def q4_0_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor | None:
    """``x @ W.T + bias`` for q4_0 weights split into ``codes`` (n, k / 2) uint8 (each block's
    16 code bytes, in order) and ``scales`` (n, k / 32) float16; activations quantized to
    q8_0 (int8 per block of 32), as llama.cpp does. None when a row holds NaN or infinity."""
    lib = _int8_library()
    m, k = x.shape
    n = codes.shape[0]
    if k % 32 or codes.shape[1] * 2 != k or scales.shape != (n, k // 32):
        raise ValueError(f"q4_0 kernel: input of {k} features for codes {list(codes.shape)}")
    y = torch.empty(m, n, dtype=torch.float32)
    if m == 0:
        return y
    status = lib.mlmf_q4_0_linear(x.data_ptr(), m, k, codes.data_ptr(), scales.data_ptr(), n,
                                  _bias_ptr(bias, n, "q4_0"), y.data_ptr(),
                                  torch.get_num_threads())
    if status < 0:
        raise MemoryError("q4_0 kernel: out of memory") if status == -1 else RuntimeError(
            "q4_0 kernel: built without AVX512-VNNI")
    return y if status == 0 else None
