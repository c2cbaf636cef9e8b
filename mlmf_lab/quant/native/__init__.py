"""Fused C kernels for GGUF dequantization, compiled once per machine with the system's C compiler.

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

SOURCE = Path(__file__).with_name("dequant.c")
SCHEMES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-std=c11",
         "-shared", "-fPIC"]
PORTABLE_FLAGS = [f for f in FLAGS if f != "-march=native"]
_lock = threading.Lock()

Dequantizer = Callable[[torch.Tensor, torch.Tensor], None]


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


def _compile(cc: str, flags: list[str], target: Path) -> bool:
    """Build into a temporary file beside ``target``, then rename it into place (atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        log.warning("mlmf_lab: cannot write native kernels to %s: %s", target.parent, exc)
        return False
    try:
        done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log.info("mlmf_lab: %s %s failed: %s", cc, " ".join(flags), done.stderr.strip())
            return False
        os.replace(tmp, target)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("mlmf_lab: compiling %s failed: %s", SOURCE.name, exc)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library_name(cc: str, flags: list[str], version: str) -> str:
    """The file name of a build: a hash of everything the machine code depends on."""
    parts = [SOURCE.read_text(), cc, *flags, version, cpu_identity()]
    return f"dequant-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}.so"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them if this machine has none yet; None if impossible."""
    cc = compiler()
    if cc is None or not SOURCE.exists():
        return None
    with _lock:
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                     timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("mlmf_lab: %s does not run (%s); using the torch kernels", cc, exc)
            return None
        for flags in (FLAGS, PORTABLE_FLAGS):
            target = kernel_dir() / library_name(cc, flags, version)
            try:
                if target.exists() or _compile(cc, flags, target):
                    lib = ctypes.CDLL(str(target))
                    break
            except OSError as exc:
                log.info("mlmf_lab: cannot use %s: %s", target, exc)
        else:
            log.warning("mlmf_lab: no native dequantization kernels; using the torch ones")
            return None
    for scheme in SCHEMES:
        fn = getattr(lib, f"mlmf_deq_{scheme}")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
    return lib


def dequantizer(scheme: str) -> Dequantizer | None:
    """``(blocks (n, type_size) uint8, out (n, block_size) float32) -> None``, or None."""
    if scheme not in SCHEMES or not enabled():
        return None
    lib = library()
    if lib is None:
        return None
    fn = getattr(lib, f"mlmf_deq_{scheme}")

    def run(blocks: torch.Tensor, out: torch.Tensor) -> None:
        if not (blocks.is_contiguous() and out.is_contiguous()):
            raise ValueError("native dequantization needs contiguous blocks and output")
        fn(blocks.data_ptr(), out.data_ptr(), blocks.shape[0])

    return run
