"""The fuzz driver: seeded cases over every reader, each in a forked child under limits.

    python tests/attacks/fuzz.py --cases 1000           # what ``make test`` runs
    python tests/attacks/fuzz.py --seconds 600 --seed 7  # ``make fuzz SECONDS=600 SEED=7``
    python tests/attacks/fuzz.py --target gguf --case 412 --keep /tmp/case  # one case, here

Everything is imported once, in this process; each case is then an ``os.fork()``: the child
limits its address space (``RLIMIT_AS``: what it has plus ``--memory`` MiB) and its time
(``--timeout`` s of CPU through ``RLIMIT_CPU``, and as many of wall-clock time through
``SIGALRM``: both signals' default action kills it, even inside C code),
builds its files from its seed, runs the target, and reports through a pipe. This process
never runs a torch operation itself (the seeds are written by a child too): a fork of a
process whose OpenMP threads are running can hang. Outcomes: ``ok``, ``mlmf`` (an
``MLMFError`` naming a file of the case) are allowed; ``error``, ``anonymous`` (an
``MLMFError`` naming no file of the case), ``memory``, ``timeout``, ``crash`` and
``harness`` (the mutator itself failed) are failures. A case out of wall-clock time (not
of CPU time) is run again alone, with five times the wall-clock time, before it counts: on a
loaded machine a case waits for a core; a blocked read waits for ever.

A case is its seed (``<seed>/<target>/<index>``): the mutations it makes are the same on
every run, but the seed files are written anew each time (a lineage store's ids, a
checkpoint's time and a legacy pickle's storage keys differ), so ``--save`` keeps the very
files of each failing case beside the command that replays it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

if __package__ in (None, ""):  # run as a script: the tests folder holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from attacks.mutate_files import Tree, mutate_tree, read_tree, write_tree  # noqa: E402
from attacks.targets import ALLOWED, PRELOAD, SELFTESTS, TARGETS, Target  # noqa: E402
from mlmf_lab.errors import MLMFError  # noqa: E402

Seeds = dict[str, list[tuple[str, Tree]]]


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def in_child(fn: Any, *args: Any) -> int:
    """Run ``fn(*args)`` in a forked child and wait; its exit status (0: it returned)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the status
            traceback.print_exc()
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def load_seeds(root: Path) -> Seeds:
    """Write the seeds in a child (torch runs there), then read them as bytes."""
    from attacks.seeds import build_seeds

    if in_child(build_seeds, root) != 0:
        raise SystemExit("fuzz: building the seed files failed (traceback above)")
    seeds: Seeds = {}
    for target in sorted(p for p in root.iterdir() if p.is_dir()):
        seeds[target.name] = [(v.name, read_tree(v)) for v in sorted(target.iterdir())]
    return seeds


def case_seed(seed: int, target: str, index: int) -> str:
    return f"{seed}/{target}/{index}"


def materialize(target: Target, seeds: Seeds, seed: str, folder: Path) -> random.Random:
    """Write the case ``seed`` of ``target`` into ``folder``; the generator, for the run."""
    rng = random.Random(seed)
    variants = seeds.get(target.name) or [("none", {})]
    _, tree = rng.choice(variants)
    folder.mkdir(parents=True, exist_ok=True)
    write_tree(folder, mutate_tree(tree, rng, target.focus) if tree else tree)
    if target.prepare is not None:
        target.prepare(folder, rng)
    return rng


def _child(target: Target, seeds: Seeds, seed: str, folder: Path, write_fd: int,
           timeout: float, wall: float, memory: int) -> NoReturn:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)  # warnings of the libraries under test are not the report
    report: dict[str, Any]
    try:
        os.setpgid(0, 0)  # its own group: the driver kills what it may have started, too
        for sig in (signal.SIGALRM, signal.SIGXCPU):  # a handler a library set would
            signal.signal(sig, signal.SIG_DFL)       # let a blocked call resume after it
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = math.ceil(timeout)  # SIGXCPU: a busy loop dies here, however loaded the machine
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        try:
            rng = materialize(target, seeds, seed, folder)
        except BaseException as e:  # noqa: BLE001
            report = {"outcome": "harness", "type": type(e).__name__, "message": str(e)[:500]}
        else:
            signal.setitimer(signal.ITIMER_REAL, timeout * wall)  # a blocked read dies here
            began = time.perf_counter()
            try:
                target.run(folder / target.entry, rng)
                report = {"outcome": "ok"}
            except MLMFError as e:
                # a file of the case, or what one of its links leads to (beside the case)
                named = str(folder.parent) in str(e)
                report = {"outcome": "mlmf" if named else "anonymous", "type": type(e).__name__,
                          "message": str(e)[:500]}
            except MemoryError as e:
                report = {"outcome": "memory", "type": "MemoryError", "message": str(e)[:500]}
            except BaseException as e:  # noqa: BLE001 - what the case is here to find
                report = {"outcome": "error", "type": type(e).__name__, "message": str(e)[:500],
                          "where": traceback.format_exc(limit=-4)[-1500:]}
            signal.setitimer(signal.ITIMER_REAL, 0)
            report["ms"] = round(1000 * (time.perf_counter() - began), 1)
        os.write(write_fd, json.dumps(report).encode()[:60_000])
    finally:
        os._exit(0)


class Runner:
    """Forks the cases, ``jobs`` at a time, and collects their outcomes."""

    def __init__(self, seeds: Seeds, work: Path, timeout: float, memory_mib: int) -> None:
        self.seeds, self.work, self.timeout = seeds, work, timeout
        self.memory = _vm_bytes() + memory_mib * 2**20
        self.running: dict[int, tuple[Target, int, str, Path, int, float, float]] = {}

    def start(self, target: Target, index: int, seed: str, wall: float = 1.0) -> None:
        """Fork case ``index``; it may run ``timeout`` CPU seconds, ``wall`` times that in
        wall-clock time (cases side by side on a busy machine wait for a core)."""
        folder = self.work / f"{target.name}-{index}"
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(target, self.seeds, seed, folder, write_fd, self.timeout, wall, self.memory)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # as the child does: whichever runs first
        os.close(write_fd)
        # past this the driver kills the group itself: writing the case's files counts too
        deadline = time.perf_counter() + self.timeout * wall + 5.0
        self.running[pid] = (target, index, seed, folder, read_fd, time.perf_counter(),
                             deadline)

    def _wait(self) -> tuple[int, int]:
        """The next case to end; the ones past their deadline are killed first."""
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                return pid, status
            now = time.perf_counter()
            for late, entry in self.running.items():
                if now > entry[-1]:
                    with contextlib.suppress(OSError):
                        os.killpg(late, signal.SIGKILL)
            time.sleep(0.001)

    def reap(self) -> dict[str, Any]:
        """Wait for any case to end; its outcome record."""
        pid, status = self._wait()
        target, index, seed, folder, read_fd, began, _ = self.running.pop(pid)
        wall = round(1000 * (time.perf_counter() - began), 1)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # anything the case started and left behind
        os.set_blocking(read_fd, False)  # a survivor holding the pipe must not block us
        try:
            raw = os.read(read_fd, 65_536)
        except BlockingIOError:
            raw = b""
        os.close(read_fd)
        shutil.rmtree(folder, ignore_errors=True)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            kind = "timeout" if sig in (signal.SIGALRM, signal.SIGXCPU, signal.SIGKILL) \
                else "crash"
            report = {"outcome": kind, "type": signal.Signals(sig).name,
                      "message": f"killed by {signal.Signals(sig).name}"}
        else:
            report = json.loads(raw) if raw else {"outcome": "crash", "type": "exit",
                                                  "message": f"status {status}, no report"}
        return {"target": target.name, "case": index, "seed": seed, "wall_ms": wall, **report}

    def run_alone(self, target: Target, index: int, seed: str) -> dict[str, Any]:
        self.start(target, index, seed, wall=5.0)
        return self.reap()


def fuzz(targets: list[Target], seeds: Seeds, work: Path, *, seed: int, cases: int | None,
         seconds: float | None, jobs: int, timeout: float, memory_mib: int) -> dict[str, Any]:
    """Run cases round-robin over ``targets`` until ``cases`` are done or ``seconds`` pass."""
    runner = Runner(seeds, work, timeout, memory_mib)
    start = time.monotonic()
    done: list[dict[str, Any]] = []
    index = 0

    def more() -> bool:
        if cases is not None:
            return index < cases
        return time.monotonic() - start < (seconds or 0)

    while more() or runner.running:
        while more() and len(runner.running) < jobs:
            target = targets[index % len(targets)]
            k = index // len(targets)
            runner.start(target, k, case_seed(seed, target.name, k))
            index += 1
        record = runner.reap()
        if record.get("type") in ("SIGALRM", "SIGKILL"):  # out of wall time: busy, or blocked?
            while runner.running:
                done.append(runner.reap())
            again = runner.run_alone(TARGETS.get(record["target"]) or
                                     SELFTESTS[record["target"]], record["case"], record["seed"])
            record = {**again, "retried": True}
        done.append(record)
    return summarize(done, time.monotonic() - start)


def summarize(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    by_target: dict[str, dict[str, Any]] = {}
    for r in records:
        counts = by_target.setdefault(r["target"], {"run_ms": 0.0, "wall_ms": 0.0})
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        counts["run_ms"] = round(counts["run_ms"] + r.get("ms", 0.0), 1)
        counts["wall_ms"] = round(counts["wall_ms"] + r["wall_ms"], 1)
    failures = [r for r in records if r["outcome"] not in ALLOWED]
    return {"cases": len(records), "seconds": round(seconds, 2), "by_target": by_target,
            "failures": failures}


def save_failures(summary: dict[str, Any], seeds: Seeds, dest: Path) -> None:
    """Each failing case's files under ``dest/<target>-<case>/`` and how to replay it."""
    for r in summary["failures"]:
        target = TARGETS.get(r["target"]) or SELFTESTS[r["target"]]
        folder = dest / f"{r['target']}-{r['case']}"
        shutil.rmtree(folder, ignore_errors=True)
        if r["outcome"] != "harness":
            materialize(target, seeds, r["seed"], folder)
        seed = r["seed"].split("/")[0]
        (folder.parent / f"{folder.name}.txt").write_text(
            f"{r['outcome']}: {r.get('type')}: {r.get('message')}\n"
            f"replay: python tests/attacks/fuzz.py --seed {seed} --target {r['target']} "
            f"--case {r['case']}\n")


def replay(target: Target, seeds: Seeds, seed: str, folder: Path) -> None:
    """One case in this process, with its traceback: for debugging a failure."""
    rng = materialize(target, seeds, seed, folder)
    print(f"case files in {folder}")
    try:
        target.run(folder / target.entry, rng)
        print("outcome: ok")
    except MLMFError as e:
        print(f"outcome: {type(e).__name__}: {e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, help="run this many cases (default 1000)")
    parser.add_argument("--seconds", type=float, help="run for this long instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", action="append", help="only these targets (repeatable)")
    parser.add_argument("--case", type=int, help="replay one case of --target in-process")
    parser.add_argument("--keep", type=Path, help="where --case writes its files")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per case")
    parser.add_argument("--memory", type=int, default=1024, help="MiB per case above the parent")
    parser.add_argument("--save", type=Path, help="write failing cases here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # no thread pool to fork, and the cases stay single-core
    names = args.target or list(TARGETS)
    known = {**TARGETS, **SELFTESTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; known: {', '.join(known)}")
    targets = [known[n] for n in names]
    for module in PRELOAD:
        importlib.import_module(module)
    from mlmf_lab.quant import native

    with tempfile.TemporaryDirectory(prefix="mlmf-fuzz-") as tmp:
        root = Path(tmp)
        needs_seeds = any(n in TARGETS for n in names)
        seeds = load_seeds(root / "seeds") if needs_seeds else {}
        native.library()  # the C kernels: built by the seeds' child, loaded once here
        work = root / "cases"
        work.mkdir()
        if needs_seeds:  # what a link leaving a case folder points at
            shutil.copy(root / "seeds" / "safetensors" / "plain" / "x.safetensors",
                        work / "outside.safetensors")
        if args.case is not None:
            folder = args.keep or root / "replay"
            replay(targets[0], seeds, case_seed(args.seed, targets[0].name, args.case), folder)
            return 0
        cases = args.cases if args.cases is not None or args.seconds else 1000
        summary = fuzz(targets, seeds, work, seed=args.seed, cases=cases,
                       seconds=args.seconds, jobs=args.jobs, timeout=args.timeout,
                       memory_mib=args.memory)
        if args.save and summary["failures"]:
            save_failures(summary, seeds, args.save)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['cases']} cases in {summary['seconds']} s")
        for name, counts in summary["by_target"].items():
            print(f"  {name:12s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for r in summary["failures"][:50]:
            print(f"FAIL {r['target']} case {r['case']}: {r['outcome']} {r.get('type')}: "
                  f"{r.get('message', '')[:300]}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
