"""Progress: a bar the caller can hide (and TQDM_DISABLE can switch off), or a function told
(done, total) by every operation that takes ``progress=``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import ConfigError
from mlmf_lab.progress import bar, stage
from mlmf_lab.provenance import tensor_stats


@pytest.mark.parametrize(("progress", "hidden"), [(True, False), (False, True)])
def test_the_caller_can_hide_a_bar(progress: bool, hidden: bool) -> None:
    with bar(range(3), progress=progress) as b:
        assert bool(b.disable) is hidden and list(b) == [0, 1, 2]


def test_tqdm_disable_hides_a_shown_bar() -> None:
    """tqdm reads TQDM_* when it is imported, hence a fresh interpreter."""
    code = "from mlmf_lab.progress import bar; print(bool(bar(range(3)).disable))"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "True"


# -- progress=: True/False or a function told (done, total), everywhere ---------------------

class Seen(list[tuple[int, int]]):
    """A progress function that keeps every (done, total) call."""

    def __call__(self, done: int, total: int) -> None:
        self.append((done, total))


def test_a_function_is_told_done_and_total() -> None:
    seen = Seen()
    assert list(bar("abc", progress=seen)) == ["a", "b", "c"]
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    seen.clear()
    with bar(total=10, progress=seen, unit="B") as b:  # counted with update, like tqdm
        b.update(4)
        b.update(6)
    assert seen == [(0, 10), (4, 10), (10, 10)]


def test_min_total_hides_a_small_bar_but_still_tells_a_function() -> None:
    with bar(range(3), progress=True, min_total=8) as b:
        assert b.disable
    seen = Seen()
    list(bar(range(3), progress=seen, min_total=8))
    assert seen[-1] == (3, 3)


def test_stages_count_on_from_one_total() -> None:
    seen = Seen()
    for i in range(2):
        list(bar("ab", progress=stage(seen, 2 * i, 4)))
    assert seen == [(0, 4), (1, 4), (2, 4), (2, 4), (3, 4), (4, 4)]
    assert stage(True, 2, 4) is True and stage(False, 2, 4) is False


@pytest.mark.parametrize("wrong", ["yes", 1, None])
def test_anything_else_is_refused(wrong: object) -> None:
    with pytest.raises(ConfigError, match="progress must be True, False or a function "
                                          r"\(done, total\); got"):
        bar(range(2), progress=wrong)  # type: ignore[arg-type]


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    ml.save_state_dict({"a": torch.ones(4, 4), "b": torch.zeros(8)}, path)
    return path


def test_tensor_stats_and_cache_warm_up_report(weights: Path) -> None:
    seen = Seen()
    tensor_stats(weights, progress=seen)
    assert seen == [(0, 2), (1, 2), (2, 2)]
    seen = Seen()
    cache = ml.ModelCache("1MiB")
    warm = cache.warm([weights, weights.with_name("missing.safetensors")], progress=seen).wait()
    assert seen == [(0, 2), (1, 2), (2, 2)] and len(warm.errors) == 1


def test_writing_and_loading_a_shard_report_bytes(tmp_path: Path, weights: Path) -> None:
    from mlmf_lab.formats.safetensors import write_safetensors

    seen = Seen()
    write_safetensors({"w": torch.ones(256)}, tmp_path / "new.safetensors", progress=seen)
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == (tmp_path / "new.safetensors").stat(
        ).st_size
    seen = Seen()
    plan = ml.distributed.plan(weights, "layers", world_size=1)
    ml.distributed.load_shard(weights, plan, rank=0, world_size=1, progress=seen)
    assert seen == [(0, 96), (64, 96), (96, 96)]  # bytes of a, then of b


def test_training_reports_steps_across_the_models() -> None:
    from mlmf_lab.multimodal import FusionStrategy
    from mlmf_lab.multimodal.train import compare_fusions

    seen = Seen()
    compare_fusions([("late", FusionStrategy.LATE, "mean"), ("early", FusionStrategy.EARLY,
                                                             "mean")],
                    n_train=32, n_test=16, steps=2, batch_size=8, dim=8, progress=seen)
    assert seen == [(0, 4), (1, 4), (2, 4), (2, 4), (3, 4), (4, 4)]
