"""Two processes recording into one lineage store at the same time lose nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from mlmf_lab.provenance.lineage import Lineage, state_hash

WORKER = r"""
import sys, time
from pathlib import Path
import torch
import mlmf_lab as ml

store, folder, tag, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
deadline = time.time() + 60
while not (folder / "go").exists():  # start both writers together
    if time.time() > deadline:
        sys.exit("never got the go signal")
    time.sleep(0.005)
with ml.Lineage(store):
    for i in range(n):
        path = folder / f"{tag}-{i}.safetensors"
        ml.save_state_dict({"w": torch.full((16,), float(i)),
                            "tag": torch.tensor([ord(c) for c in tag])}, path)
        ml.load_state_dict(path)
print("done", tag)
"""

N = 15


def test_two_processes_record_concurrently(tmp_path):
    store = tmp_path / "lin.db"
    Lineage(store).close()  # the schema exists before the race (it is also safe without)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(store), str(tmp_path), tag,
                               str(N)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
             for tag in ("a", "b")]
    time.sleep(0.2)
    (tmp_path / "go").touch()
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "RuntimeWarning" not in err, err  # a dropped record warns
    lin = Lineage(store)
    acts = lin.activities()
    assert len(acts) == 2 * 2 * N
    assert len({a.pid for a in acts}) == 2
    assert sorted(a.name for a in acts) == ["load"] * 2 * N + ["save"] * 2 * N
    # Every file the workers wrote is recorded with the hash of what is on disk.
    for tag in ("a", "b"):
        for i in range(N):
            path = tmp_path / f"{tag}-{i}.safetensors"
            ent = lin.entity(path)
            assert ent.sha256 == state_hash(load_file(path)).sha256
            hist = lin.history(path)
            assert [s.name for s in hist.steps] == ["save"]
    with sqlite3.connect(store) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    lin.close()
    assert torch.equal(load_file(tmp_path / "b-3.safetensors")["w"], torch.full((16,), 3.0))
