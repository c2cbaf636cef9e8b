"""The pieces under the manager: the hashing safetensors writer, state splitting, RNG, diff."""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import mlmf_lab as ml
from mlmf_lab.checkpoint.chunks import FileDigest
from mlmf_lab.checkpoint.files import read_part, write_part
from mlmf_lab.checkpoint.state import capture_rng, join_state, restore_rng, split_state
from mlmf_lab.compare import diff_state_dicts, tensor_change
from mlmf_lab.errors import FormatError, MLMFError
from mlmf_lab.files import sha256_file
from mlmf_lab.formats.safetensors import write_safetensors


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the safetensors writer ------------------------------------------------------------------
def all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=g)
    out = {
        "f64": base.double(), "f32": base, "f16": base.half(), "bf16": base.bfloat16(),
        "i64": torch.arange(7), "i32": torch.arange(-3, 3, dtype=torch.int32),
        "i16": torch.tensor([-2, 9], dtype=torch.int16), "i8": torch.tensor([-128, 127],
                                                                           dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "f8": base.to(torch.float8_e4m3fn), "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4), "transposed": base.t(), "sliced": base[1:, ::2],
    }
    out["tied"] = out["f32"]  # same storage: written once, listed as tied
    return out


def test_writer_output_reads_back_with_the_safetensors_package(tmp_path):
    tensors = all_dtypes()
    path = tmp_path / "x.safetensors"
    digest = write_safetensors(tensors, path, metadata={"step": 3, "note": "hi"})
    data = path.read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    loaded = load_file(path)
    assert set(loaded) == set(tensors) - {"tied"}  # the alias is recorded, not duplicated
    for name, t in loaded.items():
        assert t.dtype == tensors[name].dtype and t.shape == tensors[name].shape, name
        assert torch.equal(t.reshape(-1).view(torch.uint8),
                           tensors[name].contiguous().reshape(-1).view(torch.uint8))
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["note"] == "hi" and json.loads(meta["step"]) == 3 and meta["format"] == "pt"
    assert json.loads(meta["mlmf.tied"]) == {"tied": "f32"}
    # The lab's own reader restores the alias.
    again = ml.load_state_dict(path)
    assert torch.equal(again["tied"], tensors["f32"])
    # Header: length-prefixed JSON padded to 8 bytes; data aligned for every dtype.
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0
    header = json.loads(data[8 : 8 + n])
    for name, entry in header.items():
        if name != "__metadata__":
            begin, _ = entry["data_offsets"]
            assert (8 + n + begin) % tensors[name].element_size() == 0, name


def test_writer_refuses_bad_tensors_and_existing_files(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(MLMFError, match="complex64, which safetensors cannot store"):
        write_safetensors({"c": torch.zeros(2, dtype=torch.complex64)}, path)
    with pytest.raises(MLMFError, match="meta device"):
        write_safetensors({"m": torch.empty(2, device="meta")}, path)
    assert not path.exists()
    write_safetensors({"a": torch.ones(1)}, path)
    with pytest.raises(FileExistsError):
        write_safetensors({"a": torch.ones(1)}, path)


def test_writer_hashes_big_files_while_writing(tmp_path, monkeypatch):
    import mlmf_lab.formats.write as W

    monkeypatch.setattr(W, "CHUNK", 1024)  # force the threaded, chunked path
    t = torch.randn(10_000)
    path = tmp_path / "big.safetensors"
    assert write_safetensors({"t": t}, path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(load_file(path)["t"], t)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# -- nested state without pickle -------------------------------------------------------------
def test_split_join_round_trip_keeps_types():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "buf": torch.randn(2, 2)}, 5: {}},
        "groups": [{"betas": (0.9, 0.999), "lr": 1e-3, "params": [0, 5], "name": None,
                    "flag": True}],
        "best": math.inf, "worst": -math.inf, "nan": math.nan, "$weird": 1,
        "arr": np.arange(3, dtype=np.int32), "npf": np.float32(0.5),
    }
    skeleton, tensors = split_state(state)
    text = json.dumps(skeleton, allow_nan=False)  # standard JSON, no NaN/Infinity literals
    back = join_state(json.loads(text), tensors)
    assert set(tensors) == {"state/0/step", "state/0/buf", "arr"}
    assert back["groups"][0]["betas"] == (0.9, 0.999) and list(back["state"]) == [0, 5]
    assert back["best"] == math.inf and back["worst"] == -math.inf and math.isnan(back["nan"])
    assert back["$weird"] == 1 and back["npf"] == 0.5
    assert torch.equal(back["state"][0]["buf"], state["state"][0]["buf"])
    assert back["arr"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(("bad", "message"), [
    ({"f": print}, "state entry 'f' has type builtin_function_or_method"),
    ({"s": {1, 2}}, "state entry 's' has type set"),
    ({(1, 2): 3}, r"state key '\(1, 2\)' has type tuple"),
])
def test_split_refuses_what_needs_pickle(bad, message):
    with pytest.raises(MLMFError, match=message):
        split_state(bad)


def test_join_reports_missing_tensors_and_bad_tags():
    with pytest.raises(FormatError, match="x.json: state refers to tensor 'gone'"):
        join_state({"a": {"$tensor": "gone"}}, {}, "x.json")
    with pytest.raises(FormatError, match=r"malformed \$tuple entry"):
        join_state({"$tuple": 3}, {}, "x.json")


OPTIMIZERS = [
    lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.9)),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: torch.optim.RMSprop(p, lr=1e-2, centered=True),
    lambda p: torch.optim.Adamax(p, lr=1e-2),
]
SCHEDULERS = [
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=20),
    lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),  # holds +inf
    lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3),
    lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o), torch.optim.lr_scheduler.ExponentialLR(o, 0.9)],
        milestones=[2]),
]


@pytest.mark.parametrize("make_opt", OPTIMIZERS, ids=["adam", "adamw", "sgd", "rmsprop", "adamax"])
@pytest.mark.parametrize("make_sched", SCHEDULERS, ids=["onecycle", "plateau", "cosine", "seq"])
def test_optimizer_and_scheduler_state_round_trip(tmp_path, make_opt, make_sched):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt, fresh_model = make_opt(model.parameters()), nn.Linear(4, 3)
    sched = make_sched(opt)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step(1.0) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else (
            sched.step())
    sums: dict[str, FileDigest] = {}
    write_part(tmp_path, "optimizer", opt.state_dict(), sums)
    write_part(tmp_path, "scheduler", sched.state_dict(), sums)
    opt2 = make_opt(fresh_model.parameters())
    sched2 = make_sched(opt2)
    opt2.load_state_dict(read_part(tmp_path, sums, "optimizer"))
    sched2.load_state_dict(read_part(tmp_path, sums, "scheduler"))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(b["state"][i][k], v) if torch.is_tensor(v) else b["state"][i][k] == v
    s1, s2 = sched.state_dict(), sched2.state_dict()
    assert json.dumps(split_state(s1)[0], sort_keys=True) == json.dumps(split_state(s2)[0],
                                                                        sort_keys=True)


def test_rng_capture_restore():
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    doc, tensors = capture_rng()
    json.dumps(doc, allow_nan=False)
    want = (random.random(), np.random.standard_normal(), torch.randn(2))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng(json.loads(json.dumps(doc)), tensors)
    got = (random.random(), np.random.standard_normal(), torch.randn(2))
    assert want[:2] == got[:2] and torch.equal(want[2], got[2])
    with pytest.raises(FormatError, match="rng.json: RNG state is incomplete"):
        restore_rng({"python": {}}, tensors, "rng.json")


# -- diff ------------------------------------------------------------------------------------
def test_tensor_change_matches_the_naive_formula():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, generator=g), torch.randn(50, generator=g)
    x, y = a.double().numpy(), b.double().numpy()
    ch = tensor_change(a, b)
    assert ch.rel_change == pytest.approx(np.linalg.norm(y - x) / np.linalg.norm(x), rel=1e-12)
    assert ch.cosine == pytest.approx(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), rel=1e-12)
    assert ch.max_abs == pytest.approx(np.abs(y - x).max(), rel=1e-12)
    assert tensor_change(a, a) == (0.0, pytest.approx(1.0), 0.0, 0.0, 0.0)
    assert tensor_change(torch.zeros(3), torch.zeros(3)) == (0.0, 1.0, 0.0, 0.0, 0.0)
    zero_to_one = tensor_change(torch.zeros(3), torch.ones(3))
    assert zero_to_one.rel_change == math.inf and math.isnan(zero_to_one.cosine)
    assert tensor_change(a, -a).cosine == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        tensor_change(torch.zeros(2), torch.zeros(3))


def test_diff_lists_added_removed_reshaped(tmp_path):
    a = {"same": torch.ones(3), "moved": torch.tensor([3.0, 4.0]), "gone": torch.ones(1),
         "grow": torch.ones(2, 2)}
    b = {"same": torch.ones(3), "moved": torch.tensor([3.0, 5.0]), "grow": torch.ones(2, 3),
         "new": torch.zeros(4)}
    d = diff_state_dicts(a, b, ("old", "new"))
    assert [(r.name, r.status) for r in d.tensors] == [
        ("same", "same"), ("moved", "changed"), ("gone", "removed"), ("grow", "reshaped"),
        ("new", "added")]
    assert d["moved"].rel_change == pytest.approx(0.2) and d["moved"].max_abs == 1.0
    assert d["grow"].shape_a == (2, 2) and d["grow"].shape_b == (2, 3)
    assert d.counts() == {"changed": 1, "same": 1, "added": 1, "removed": 1, "reshaped": 1}
    assert "largest relative change 0.2 in moved" in d.summary()
    page = d._repr_html_()
    assert page.count("<tr>") == 6 and "removed" in page
    assert "2×2</td><td style='text-align:left'>2×3" in page  # grow: shape a, shape b
    cm = ml.CheckpointManager(tmp_path)
    cm.save(a, 1)
    cm.save(b, 2)
    on_disk = cm.diff(1, 2)
    assert [(r.name, r.status) for r in on_disk.tensors] == [(r.name, r.status) for r in d.tensors]
    assert on_disk.a == "step 1" and on_disk.b == "step 2"
    assert cm.diff(1, nn.Linear(1, 1)).counts()["added"] == 2


def test_plot_checkpoint_figures(tmp_path):
    from matplotlib.figure import Figure

    cm = ml.CheckpointManager(tmp_path, keep_last=5)
    for step, loss in [(1, 0.9), (2, 0.5), (3, 0.7)]:
        cm.save({"w": torch.full((4,), float(step)), "b": torch.zeros(2)}, step,
                metrics={"val_loss": loss, "train_loss": loss + 0.1})
    fig = ml.plots.plot_checkpoint_diff(cm.diff(1, 3))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["w", "b"]
    fig2 = ml.plots.plot_checkpoint_metrics(cm.list(), ["val_loss", "train_loss"])
    lines = fig2.axes[0].get_lines()
    assert list(lines[0].get_xdata()) == [1, 2, 3]
    assert list(lines[0].get_ydata()) == [0.9, 0.5, 0.7]
    fig.savefig(tmp_path / "d.png")
    fig2.savefig(tmp_path / "m.png")


def test_a_diff_asked_for_a_tensor_it_lacks_names_the_closest():
    d = diff_state_dicts({"fc.weight": torch.ones(2), "fc.bias": torch.ones(1)},
                         {"fc.weight": torch.zeros(2)}, ("old", "new"))
    assert d["fc.bias"].status == "removed"
    with pytest.raises(MLMFError, match=r"^no tensor named 'fc.weigth'; the diff old -> new "
                                        r"has 2 tensors \(closest: 'fc.weight'"):
        d["fc.weigth"]
