"""Shared helpers for the benchmarks: subprocess cases, timings and medians, markdown tables,
a cold page cache, peak memory, a busy neighbour."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def drop_cache(path: Path) -> None:
    """Evict a file's pages (or those of every file in a folder) from the page cache, so the
    next read hits the disk; flushed first, so that the pages are clean and can go."""
    for p in [path] if path.is_file() else sorted(path.iterdir()):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (Linux), e.g. ``VmHWM`` (peak RSS) or ``RssFile``."""
    with open("/proc/self/status") as f:
        line = next((ln for ln in f if ln.startswith(field + ":")), None)
    if line is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return int(line.split()[1])


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib() -> float:
    return status_kib("VmHWM") / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def median_time(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs (after one warm-up)."""
    import time

    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(
    fns: dict[str, Callable[[], object]], calls: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per round, timed in turns.

    Timing the candidates side by side in every round keeps a noisy neighbour from
    favouring whichever ran during a quiet moment.
    """
    import time

    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - t0) / calls)
    return samples


def run_case(script: str, *args: str, timeout: float = 600) -> dict:
    """Run ``python script args`` in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script} {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{dt.date.today().isoformat()}, load average {os.getloadavg()[0]:.2f} at the end"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(name: str, title: str, how: str, body: str, quick: bool) -> None:
    """Print the result and, for full runs, store it as ``results/<name>.md``."""
    text = f"### {title}\n\n{how}\n\nMeasured: {machine()}.\n\n{body}\n"
    print(text)
    if not quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.md").write_text(text)


SPIN = ("import sys, time\nend = time.monotonic() + float(sys.argv[1])\n"
        "while time.monotonic() < end: pass")


@contextlib.contextmanager
def busy_neighbour(seconds: float) -> Iterator[None]:
    """Another process spinning on a core for at most ``seconds`` (killed on exit)."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)])
    try:
        time.sleep(0.2)  # let it start spinning
        yield
    finally:
        proc.kill()
        proc.wait()
