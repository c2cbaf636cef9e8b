"""Retention: table-driven cases, for the pure planner and through the manager on disk.

The cases pin the two bugs named in the issue: transformers#27138 (checkpoint
folders sorted as strings, so step 1000 came before step 999) and
transformers#37196 (rotation deleting the best checkpoint).
"""

from __future__ import annotations

import math

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.checkpoint.retention import plan_retention, rank_best
from mlmf_lab.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and a busy machine makes them crawl."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


nan = math.nan

# (id, entries [(step, metric)], keep_last, keep_best, mode, expected steps kept)
CASES = [
    ("numeric order 999 < 1000", [(998, 0.9), (999, 0.8), (1000, 0.95), (1001, 0.99)],
     2, 1, "min", {999, 1000, 1001}),
    ("numeric order past the zero padding", [(999_998, 0.1), (999_999, 0.5), (1_000_000, 0.6),
                                             (1_000_001, 0.7)], 1, 1, "min", {999_998, 1_000_001}),
    ("old best survives rotation", [(1, 0.1), (2, 0.5), (3, 0.6), (4, 0.7)],
     2, 1, "min", {1, 3, 4}),
    ("keep_last=1 never loses the best", [(1, 0.3), (2, 0.1), (3, 0.2), (4, 0.4), (5, 0.5)],
     1, 1, "min", {2, 5}),
    ("best is the newest", [(10, 0.5), (20, 0.4), (30, 0.3)], 1, 1, "min", {30}),
    ("mode max", [(1, 0.7), (2, 0.9), (3, 0.8), (4, 0.6)], 1, 1, "max", {2, 4}),
    ("two best", [(1, 0.2), (2, 0.1), (3, 0.5), (4, 0.6), (5, 0.7)], 1, 2, "min", {1, 2, 5}),
    ("ties go to the earlier step", [(1, 0.5), (2, 0.5), (3, 0.9)], 1, 1, "min", {1, 3}),
    ("missing and NaN metrics are never best", [(1, None), (2, nan), (3, 0.5), (4, None)],
     1, 1, "min", {3, 4}),
    ("no metric at all keeps only the newest", [(1, None), (2, None), (3, None)],
     1, 1, "min", {3}),
    ("keep_last=None keeps everything", [(1, 0.5), (2, 0.6), (3, 0.7)], None, 1, "min", {1, 2, 3}),
    ("booleans and strings are not metrics", [(1, True), (2, "0.1"), (3, 0.4), (4, 0.9)],
     1, 1, "min", {3, 4}),
    ("-inf is the best loss", [(1, 0.1), (2, -math.inf), (3, 0.3)], 1, 1, "min", {2, 3}),
]


@pytest.mark.parametrize(("entries", "keep_last", "keep_best", "mode", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_retention(entries, keep_last, keep_best, mode, expected):
    assert plan_retention(entries, keep_last, keep_best, mode) == expected
    # The order of the input never matters (it is parsed from a folder listing).
    assert plan_retention(list(reversed(entries)), keep_last, keep_best, mode) == expected


@pytest.mark.parametrize(("entries", "keep_last", "keep_best", "mode", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_manager_retention_on_disk(tmp_path, entries, keep_last, keep_best, mode, expected):
    """Saving the steps in order through the manager leaves exactly the planned folders."""
    cm = ml.CheckpointManager(tmp_path, keep_last=keep_last, keep_best=keep_best,
                              metric="score", mode=mode)
    weights = {"w": torch.zeros(2)}
    for step, value in entries:
        cm.save(weights, step, metrics={} if value is None else {"score": value})
    kept = cm.list()
    assert kept.steps == sorted(expected)  # numeric order, whatever the folder names
    assert cm.latest().step == max(s for s, _ in entries)
    ranked = rank_best(entries, mode)
    assert (cm.best().step if cm.best() else None) == (ranked[0] if ranked else None)
    # Nothing else is left behind: no hidden temporary or half-deleted folders.
    assert {p.name for p in tmp_path.iterdir()} == {f"step-{s:06d}" for s in expected}


def test_protect_keeps_a_lower_step_just_saved():
    """Resuming from an older checkpoint and saving below the newest must not delete the save."""
    entries = [(100, 0.5), (200, 0.4), (110, 0.6)]
    assert plan_retention(entries, 1, 1, "min", protect=[110]) == {110, 200}
    assert plan_retention(entries, 1, 1, "min") == {200}


def test_manager_keeps_a_lower_step_it_just_saved(tmp_path):
    cm = ml.CheckpointManager(tmp_path, keep_last=1, keep_best=1)
    w = {"w": torch.zeros(1)}
    cm.save(w, 100, metrics={"val_loss": 0.5})
    cm.save(w, 200, metrics={"val_loss": 0.4})
    cm.save(w, 110, metrics={"val_loss": 0.6})
    assert cm.list().steps == [110, 200]
    cm.save(w, 300, metrics={"val_loss": 0.7})  # now 110 is neither newest nor best
    assert cm.list().steps == [200, 300]


def test_rank_best_orders_best_first():
    assert rank_best([(5, 0.3), (1, 0.1), (9, 0.2), (3, None)], "min") == [1, 9, 5]
    assert rank_best([(5, 0.3), (1, 0.1), (9, 0.2)], "max") == [5, 9, 1]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"keep_last": 0}, "keep_last must be at least 1"),
    ({"keep_best": 0}, "keep_best must be at least 1"),
    ({"mode": "avg"}, "mode must be one of min, max; got 'avg'"),
    ({"max_shard_size": "lots"}, r"max_shard_size must be a positive byte count \(1000000\) "
                                 r"or a size with a unit \(500MB, 2GiB\), found 'lots'"),
])
def test_bad_policies_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ml.errors.MLMFError, match=message):
        ml.CheckpointManager(tmp_path, **kwargs)


def test_config_error_type(tmp_path):
    with pytest.raises(ConfigError):
        ml.CheckpointManager(tmp_path, keep_last=-1)
