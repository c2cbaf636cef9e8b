"""CheckpointManager: layout, round trips, checksums, bare state dicts, events, errors."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from safetensors import safe_open
from torch import nn

import mlmf_lab as ml
from mlmf_lab import events
from mlmf_lab.checkpoint.files import MANIFEST
from mlmf_lab.errors import ChecksumError, ConfigError, FormatError, MLMFError, StateDictError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and a busy machine makes them crawl."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.body = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Dropout(0.2), nn.Linear(12, 6))
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(self.emb(x))))


def trained(seed: int = 0, steps: int = 3) -> tuple[Tiny, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(steps):
        x = torch.randint(0, 10, (4, 5))
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 10), x.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        model.count += 1
    return model, opt, sched


def test_folder_layout_and_manifest(tmp_path):
    model, opt, sched = trained()
    cm = ml.CheckpointManager(tmp_path)
    rec = cm.save(model, 120, optimizer=opt, scheduler=sched, metrics={"val_loss": 0.25},
                  extra={"epoch": 2, "note": "warm"})
    assert rec.path == tmp_path / "step-000120"
    names = sorted(os.listdir(rec.path))
    assert names == ["manifest.json", "meta.json", "model.safetensors", "optimizer.json",
                     "optimizer.safetensors", "rng.json", "rng.safetensors", "scheduler.json"]
    manifest = json.loads((rec.path / MANIFEST).read_text())
    import hashlib

    for name in names:
        if name == MANIFEST:
            continue
        data = (rec.path / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(),
                                           "size": len(data)}
        # No pickle anywhere: every file is JSON or safetensors.
        if name.endswith(".json"):
            json.loads(data)
        else:
            with safe_open(rec.path / name, "pt") as f:
                assert list(f.keys())
    meta = json.loads((rec.path / "meta.json").read_text())
    assert meta["step"] == 120 and meta["metrics"] == {"val_loss": 0.25}
    assert meta["versions"]["torch"] == torch.__version__
    assert rec.size == sum((rec.path / n).stat().st_size for n in names)
    assert (rec.step, rec.metrics, rec.extra) == (120, {"val_loss": 0.25},
                                                  {"epoch": 2, "note": "warm"})


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched = trained(steps=3)
    cm = ml.CheckpointManager(tmp_path)
    cm.save(model, 3, optimizer=opt, scheduler=sched, extra={"epoch": 1})
    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    other, other_opt, other_sched = trained(seed=7, steps=1)
    rec = cm.load(other, optimizer=other_opt, scheduler=other_sched)
    assert rec.step == 3 and rec.extra == {"epoch": 1}
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    assert other.head.weight is other.emb.weight  # ties survive: loaded in place
    s1, s2 = opt.state_dict(), other_opt.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i, st in s1["state"].items():
        for k, v in st.items():
            assert torch.equal(s2["state"][i][k], v)
    assert other_sched.state_dict() == sched.state_dict()
    # the RNG is back where it was at save time, which was before torch.manual_seed(1234)
    assert not torch.equal(torch.rand(3), expected_draw)


def test_rng_restore_is_exact(tmp_path):
    import random

    import numpy as np

    cm = ml.CheckpointManager(tmp_path)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    cm.save({"w": torch.ones(1)}, 0)
    want = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    cm.load(None, 0)
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert want[:2] == got[:2] and torch.equal(want[2], got[2])
    cm.load(None, 0, restore_rng=False)
    assert random.random() != want[0]


def test_bare_state_dict(tmp_path):
    cm = ml.CheckpointManager(tmp_path)
    sd = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int32),
          "half": torch.randn(4).to(torch.bfloat16)}
    cm.save(sd, 5)
    target = {k: torch.zeros_like(v) for k, v in sd.items()}
    before = target["a"]
    cm.load(target, 5)
    assert all(torch.equal(target[k], sd[k]) for k in sd)
    assert target["a"] is before  # filled in place
    loaded = cm.state_dict(5)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    with pytest.raises(StateDictError, match="missing"):
        cm.load({"a": torch.zeros(2, 3)} | {"zzz": torch.zeros(1)}, 5)
    partial: dict[str, torch.Tensor] = {"a": torch.zeros(2, 3)}
    cm.load(partial, 5, strict=False)
    assert partial.keys() == sd.keys()


def test_sharded_weights_above_max_shard_size(tmp_path):
    sd = {f"layer{i}.weight": torch.full((256,), float(i)) for i in range(6)}  # 1 KiB each
    cm = ml.CheckpointManager(tmp_path, max_shard_size=2048)
    rec = cm.save(sd, 1)
    shards = sorted(n for n in rec.files if n.startswith("model-"))
    assert shards == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert "model.safetensors.index.json" in rec.files
    # Same layout as ml.save_state_dict's HF writer (itself checked against transformers).
    ml.save_state_dict(sd, tmp_path / "ref", max_shard_size=2048)
    ref_index = json.loads((tmp_path / "ref" / "model.safetensors.index.json").read_text())
    index = json.loads((rec.path / "model.safetensors.index.json").read_text())
    assert index == ref_index
    for shard in shards:
        ref_shard = tmp_path / "ref" / shard
        with safe_open(rec.path / shard, "pt") as ours, safe_open(ref_shard, "pt") as ref:
            assert sorted(ours.keys()) == sorted(ref.keys())
            for k in ref.keys():
                assert torch.equal(ours.get_tensor(k), ref.get_tensor(k))
    loaded = cm.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.safetensors", "meta.json",
                                    "rng.json", "scheduler.json"])
def test_corrupted_file_names_the_file(tmp_path, victim):
    model, opt, sched = trained()
    cm = ml.CheckpointManager(tmp_path)
    rec = cm.save(model, 1, optimizer=opt, scheduler=sched)
    path = rec.path / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=victim) as err:
        cm.load(model, optimizer=opt, scheduler=sched)
    assert err.value.path == os.fspath(path)
    assert "does not match the manifest" in str(err.value)
    with pytest.raises(ChecksumError):
        cm.verify(1)


def test_truncated_and_missing_files(tmp_path):
    cm = ml.CheckpointManager(tmp_path)
    rec = cm.save({"w": torch.randn(64)}, 1)
    path = rec.path / "model.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[:-10])
    with pytest.raises(ChecksumError, match=r"model\.safetensors: size \d+ bytes, the manifest"):
        cm.verify()
    path.write_bytes(good)
    cm.verify()
    (rec.path / "rng.json").unlink()
    with pytest.raises(ChecksumError, match="rng.json: listed in the manifest but missing"):
        cm.verify()
    (rec.path / MANIFEST).write_text("{not json")
    with pytest.raises(FormatError, match="manifest is not valid JSON"):
        cm.list()


def test_list_ignores_unfinished_and_foreign_folders(tmp_path):
    cm = ml.CheckpointManager(tmp_path)
    cm.save({"w": torch.ones(1)}, 7)
    (tmp_path / "step-000008").mkdir()  # no manifest: never finished
    (tmp_path / ".step-000009.tmp-1-abcdef12").mkdir()
    (tmp_path / "step-10").mkdir()  # not a name the manager writes
    (tmp_path / "notes.txt").write_text("hi")
    assert cm.list().steps == [7]
    assert cm.latest().step == 7


def test_leftovers_of_dead_processes_are_removed(tmp_path):
    dead = 2**22 + 12345  # above Linux's largest pid_max: no such process
    stale = tmp_path / f".step-000003.tmp-{dead}-0123abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    mine = tmp_path / f".step-000004.tmp-{os.getpid()}-0123abcd"
    mine.mkdir()
    ml.CheckpointManager(tmp_path)
    assert not stale.exists() and mine.exists()  # a live writer's folder is left alone


def test_latest_best_get_and_errors(tmp_path):
    cm = ml.CheckpointManager(tmp_path, keep_last=5, metric="acc", mode="max")
    assert cm.latest() is None and cm.best() is None and len(cm.list()) == 0
    with pytest.raises(MLMFError, match="no checkpoint 'latest'; steps here: none"):
        cm.load(None)
    for step, acc in [(10, 0.5), (20, 0.9), (30, 0.7)]:
        cm.save({"w": torch.ones(1)}, step, metrics={"acc": torch.tensor(acc)})
    assert cm.latest().step == 30 and cm.best().step == 20
    assert cm.get("best").metrics == {"acc": pytest.approx(0.9)}
    with pytest.raises(MLMFError, match="no checkpoint 25; steps here: 10, 20, 30"):
        cm.get(25)
    with pytest.raises(ConfigError, match="which must be"):
        cm.get("newest")  # type: ignore[arg-type]
    with pytest.raises(MLMFError, match="holds no optimizer state"):
        cm.load(None, optimizer=torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))
    cm.delete(20)
    assert cm.list().steps == [10, 30] and cm.best().step == 30


@pytest.mark.parametrize(("bad", "message"), [
    (-1, "step must be a non-negative int; got -1"),
    (True, "step must be a non-negative int; got True"),
    (1.5, "step must be a non-negative int; got 1.5"),
])
def test_bad_steps(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        ml.CheckpointManager(tmp_path).save({"w": torch.ones(1)}, bad)


def test_unstorable_inputs(tmp_path):
    cm = ml.CheckpointManager(tmp_path)
    with pytest.raises(MLMFError, match="expected an nn.Module or a dict of name -> tensor"):
        cm.save([torch.ones(1)], 1)  # type: ignore[arg-type]
    with pytest.raises(MLMFError, match="extra holds tensors"):
        cm.save({"w": torch.ones(1)}, 1, extra={"t": torch.ones(2)})
    with pytest.raises(MLMFError, match="has type object, which cannot be stored without pickle"):
        cm.save({"w": torch.ones(1)}, 1, extra={"o": object()})
    assert cm.list().steps == [] and os.listdir(tmp_path) == []  # nothing half-made


def test_strict_model_mismatch_names_the_file(tmp_path):
    cm = ml.CheckpointManager(tmp_path)
    cm.save(nn.Linear(3, 2), 1)
    with pytest.raises(StateDictError, match=r"model\.safetensors.*weight: model expects \[4, 3\]"):
        cm.load(nn.Linear(3, 4))


def test_events_are_recorded(tmp_path):
    seen: list[events.Event] = []
    events.LISTENERS.append(seen.append)
    try:
        cm = ml.CheckpointManager(tmp_path)
        model = nn.Linear(2, 2)
        cm.save(model, 4, metrics={"val_loss": 1.0})
        cm.load(model)
    finally:
        events.LISTENERS.remove(seen.append)
    assert [e.activity for e in seen] == ["checkpoint", "checkpoint-load"]
    assert seen[0].used == [model] and seen[0].generated == [tmp_path / "step-000004"]
    assert seen[0].params["step"] == 4
    assert seen[1].used == [tmp_path / "step-000004"] and seen[1].generated == [model]


def test_git_commit_of_the_working_directory(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.txt").write_text("x")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    monkeypatch.chdir(repo)
    rec = ml.CheckpointManager(tmp_path / "ck").save({"w": torch.ones(1)}, 1)
    assert rec.git == head
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert ml.CheckpointManager(tmp_path / "ck2").save({"w": torch.ones(1)}, 1).git is None


def test_list_html_and_rows(tmp_path):
    cm = ml.CheckpointManager(tmp_path, keep_last=3)
    for step, loss in [(1, 0.9), (2, 0.4), (3, 0.6)]:
        cm.save({"w": torch.ones(1)}, step, metrics={"val_loss": loss, "acc": 1 - loss})
    records = cm.list()
    html = records._repr_html_()
    assert "3 checkpoints" in html and "val_loss ★" in html
    assert html.count("★</td>") == 1 and "<tr><td>2</td><td style='text-align:left'>★" in html
    assert html.count("<tr") == 4
    rows = records.rows()
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["best"] for r in rows] == [0, 1, 0]
    assert "step-000002" in cm._repr_html_() and "keep_last=3" in repr(cm)
    assert "step-000003" in records[-1]._repr_html_()


def test_saving_an_existing_step_replaces_it_whole(tmp_path):
    cm = ml.CheckpointManager(tmp_path)
    cm.save({"w": torch.zeros(3)}, 5, metrics={"val_loss": 1.0})
    cm.save({"w": torch.ones(3), "extra": torch.ones(1)}, 5, metrics={"val_loss": 0.5})
    assert cm.list().steps == [5] and cm.get(5).metrics == {"val_loss": 0.5}
    assert set(cm.state_dict(5)) == {"w", "extra"} and torch.equal(cm.state_dict(5)["w"],
                                                                   torch.ones(3))
    assert os.listdir(tmp_path) == ["step-000005"]


def test_a_failing_save_leaves_no_trace(tmp_path, monkeypatch):
    import mlmf_lab.checkpoint.manager as ckpt

    cm = ml.CheckpointManager(tmp_path)
    cm.save({"w": torch.zeros(3)}, 1)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "write_manifest", broken)
    with pytest.raises(OSError, match="No space left"):
        cm.save({"w": torch.ones(3)}, 2)
    with pytest.raises(OSError, match="No space left"):
        cm.save({"w": torch.ones(3)}, 1)  # a failed replacement keeps the old one
    assert os.listdir(tmp_path) == ["step-000001"]
    assert torch.equal(cm.state_dict(1)["w"], torch.zeros(3))
