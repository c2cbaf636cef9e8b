"""Every reader fuzzed: 1000 seeded, structure-aware mutations of valid files (issue 20).

``attacks/fuzz.py`` forks one child per case (2 s of CPU and of wall-clock time, 1 GiB of
address space above the parent); each case must succeed or raise an ``MLMFError`` naming a
file of the case. ``make fuzz SECONDS=600`` runs longer, with other seeds. A failure here
prints the command that replays the case in-process, with its traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).parent / "fuzz.py"
TARGETS = ("safetensors", "sharded", "gguf", "bin", "peft", "checkpoint", "lineage", "dcp")


def run_fuzz(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(FUZZ), "--json", *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_thousand_mutated_files_end_in_success_or_a_named_error() -> None:
    summary = run_fuzz("--cases", "1000", "--seed", "0")
    print(f"\n{summary['cases']} cases in {summary['seconds']} s")
    for name, counts in summary["by_target"].items():
        print(f"  {name:12s} {counts}")
    assert summary["cases"] == 1000
    assert set(summary["by_target"]) == set(TARGETS)
    for name, counts in summary["by_target"].items():  # every reader both fails and succeeds
        assert counts.get("mlmf", 0) > 20 and counts.get("ok", 0) > 5, (name, counts)
    failures = "\n".join(
        f"{r['target']} case {r['case']}: {r['outcome']} {r.get('type')}: "
        f"{r.get('message', '')[:200]}\n  replay: python tests/attacks/fuzz.py --seed 0 "
        f"--target {r['target']} --case {r['case']}"
        for r in summary["failures"])
    assert not summary["failures"], failures


def test_the_harness_reports_each_way_a_case_can_end() -> None:
    """Each outcome the fuzzer must catch, caused on purpose: a raw exception, a hang, a
    memory blow-up, a segfault, an MLMFError that names no file."""
    names = ["ok", "named", "raise", "hang", "memory", "crash", "anonymous"]
    summary = run_fuzz("--cases", str(len(names)), "--timeout", "0.5",
                       *[a for n in names for a in ("--target", f"selftest-{n}")])
    got = {r["target"].removeprefix("selftest-"): r["outcome"] for r in summary["failures"]}
    assert got == {"raise": "error", "hang": "timeout", "memory": "memory", "crash": "crash",
                   "anonymous": "anonymous"}
    assert summary["by_target"]["selftest-ok"]["ok"] == 1
    assert summary["by_target"]["selftest-named"]["mlmf"] == 1
