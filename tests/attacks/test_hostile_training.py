"""Adapter and checkpoint folders that mutation found getting past the loaders (issue 20):
each now an ``MLMFError`` naming the file, before the model or the generators change.

The builders are in ``attacks/hostile.py``; ``test_fuzz.py`` keeps looking for more.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from attacks import hostile as h
from attacks.seeds import Tiny, training_parts
from mlmf_lab.errors import ChecksumError, ConfigError, FormatError, MLMFError, UnsafeFileError
from mlmf_lab.lora.patterns import pattern_problem

RAW = h.RawJSON

# (case, builder, error type, the message after "<file>: ", the file the message names)
ADAPTERS: list[tuple[str, Callable[[Path], Path], type, str, str]] = [
    ("r-infinity", h.adapter(r=RAW("Infinity")), FormatError,
     "expected a positive integer for 'r', found inf", "adapter_config.json"),
    ("r-nan", h.adapter(r=RAW("NaN")), FormatError,
     "expected a positive integer for 'r', found nan", "adapter_config.json"),
    ("r-text", h.adapter(r="8"), FormatError, "expected a positive integer for 'r', found 8",
     "adapter_config.json"),
    ("alpha-1e308", h.adapter(lora_alpha=1e308), FormatError,
     "expected a finite number of at most 1e+06 for 'lora_alpha', found 1e+308",
     "adapter_config.json"),
    ("rank-pattern-text", h.adapter(rank_pattern="v_proj"), FormatError,
     "expected an object of module pattern -> value for 'rank_pattern', found v_proj",
     "adapter_config.json"),
    ("alpha-pattern-list", h.adapter(alpha_pattern=[1, 2]), FormatError,
     "for 'alpha_pattern', found [1, 2]", "adapter_config.json"),
    ("pattern-unbalanced", h.adapter(rank_pattern={"(": 2}), FormatError,
     "rank_pattern key '(' cannot be used: not a regular expression (missing ), "
     "unterminated subpattern", "adapter_config.json"),
    ("pattern-huge-repeat", h.adapter(alpha_pattern={"a{99999999999}": 2}), FormatError,
     "cannot be used: not a regular expression (the repetition number is too large)",
     "adapter_config.json"),
    ("pattern-explosive", h.adapter(rank_pattern={"(a|aa)*b": 2}), FormatError,
     "cannot be used: a repeat applies to a group holding an alternation or a repeat",
     "adapter_config.json"),
    ("pattern-value-null", h.adapter(rank_pattern={"v_proj": None}), FormatError,
     "expected positive integers for \"rank_pattern['v_proj']\", found None",
     "adapter_config.json"),
    ("pattern-value-text", h.adapter(alpha_pattern={"v_proj": "x"}), FormatError,
     "expected numbers up to 1e+06 for \"alpha_pattern['v_proj']\", found x",
     "adapter_config.json"),
    ("dropout-text", h.adapter(lora_dropout="x"), FormatError,
     "expected a number in [0, 1) for 'lora_dropout', found x", "adapter_config.json"),
    ("config-deep", h.adapter(task_type=RAW(h.DEEP)), FormatError,
     "the adapter config nests deeper than Python can parse", "adapter_config.json"),
    ("config-huge-int", h.adapter(r=RAW(h.HUGE_INT)), FormatError,
     "the adapter config is not valid JSON (Exceeds the limit", "adapter_config.json"),
]


def _check(message: str, tmp_path: Path, text: str, names: str) -> None:
    assert text in message, message[:300]
    assert re.search(rf"{re.escape(str(tmp_path))}/\S*{re.escape(names)}: ", message), message[:300]


@pytest.mark.parametrize("case,build,error,text,names", ADAPTERS, ids=[c[0] for c in ADAPTERS])
def test_hostile_adapter(tmp_path: Path, case: str, build: Callable[[Path], Path],
                         error: type, text: str, names: str) -> None:
    path = build(tmp_path)
    with pytest.raises(error) as info:
        h.load_adapter(path)
    _check(str(info.value), tmp_path, text, names)


def test_adapter_loader_errors_name_the_file(tmp_path: Path) -> None:
    """A ConfigError raised by the layers (which know no file) names the adapter's config."""
    path = h.adapter()(tmp_path)
    model = Tiny()
    ml.lora.load_peft_adapter(model, path)
    with pytest.raises(ConfigError) as info:
        ml.lora.load_peft_adapter(model, path)
    _check(str(info.value), tmp_path, "adapter 'default' already exists in the model",
           "adapter_config.json")


def test_patterns_peft_writes_are_accepted_and_match_fast() -> None:
    for ok in (r"model\.layers\.0\.self_attn\.q_proj", r".*\.v_proj", r"layers\.\d+\.(q|k)_proj",
               "q_proj|v_proj", r"[a-z_.]*.*q"):
        assert pattern_problem(ok) is None, ok
    name = "model.encoder.layers.10.self_attn.q_proj." * 4 + "a" * 40 + "c"  # 209 characters
    for worst in (r".*.*[ab]", r"(.)*(.)*[ab]", r".{0,255}.{0,255}[ab]"):
        assert pattern_problem(worst) is None
        started = time.perf_counter()
        ml.lora.math.pattern_value({worst: 1}, name, 0)
        assert time.perf_counter() - started < 0.5, worst
    assert pattern_problem(".*" * 3 + "x") == "3 repeats; at most 2"
    assert pattern_problem("x" * 300) == "300 characters; at most 256"
    assert pattern_problem(r"(a)\1").startswith("groupref is not allowed")


CHECKPOINTS: list[tuple[str, Callable[[Path], Path], type, str, str]] = [
    ("rng-invalid", h.checkpoint(h.write("rng.json", "{nope")), FormatError,
     "the RNG state is not valid JSON", "rng.json"),
    ("rng-not-utf8", h.checkpoint(h.write("rng.json", b'{"a": "\xff"}')), FormatError,
     "the RNG state is not UTF-8 text", "rng.json"),
    ("rng-deep", h.checkpoint(h.write("rng.json", h.DEEP)), FormatError,
     "the RNG state nests deeper than Python can parse", "rng.json"),
    ("rng-folder", h.checkpoint(h.replace_with("rng.json", "dir")), FormatError,
     "expected a regular file, found a folder", "rng.json"),
    ("rng-missing", h.checkpoint(h.unlisted("rng.json")), MLMFError,
     "cannot read the RNG state (No such file or directory)", "rng.json"),
    ("rng-link-out", h.checkpoint(h.replace_with("rng.json", "outside")), UnsafeFileError,
     "a link that leaves the checkpoint folder", "rng.json"),
    ("rng-state-overflow", h.checkpoint(h.edit_json(
        "rng.json", lambda d: d["python"]["state"].__setitem__(0, 2**70))), FormatError,
     "RNG state is incomplete or malformed", "rng.json"),
    ("rng-numpy-negative", h.checkpoint(h.edit_json(
        "rng.json", lambda d: d["numpy"]["keys"].__setitem__(0, -1))), FormatError,
     "RNG state is incomplete or malformed", "rng.json"),
    ("rng-gauss-list", h.checkpoint(h.edit_json(
        "rng.json", lambda d: d["python"].update(gauss_next=[1]))), FormatError,
     "RNG state is incomplete or malformed", "rng.json"),
    ("optimizer-empty", h.checkpoint(h.write("optimizer.json", "{}")), FormatError,
     "the optimizer state does not fit the AdamW given (KeyError", "optimizer.json"),
    ("scheduler-minus-one", h.checkpoint(h.write("scheduler.json", "-1")), FormatError,
     "the scheduler state must be a JSON object, found int", "scheduler.json"),
    ("tensor-ref-list", h.checkpoint(h.edit_json(
        "optimizer.json", lambda d: d["state"]["$items"][0][1].update(exp_avg={"$tensor": [1]}))),
     FormatError, "malformed $tensor entry: [1] (expected a tensor name)", "optimizer.json"),
    ("items-key-list", h.checkpoint(h.edit_json(
        "optimizer.json", lambda d: d["state"]["$items"][0].__setitem__(0, [0]))),
     FormatError, "malformed $items entry", "optimizer.json"),
    ("meta-time-object", h.checkpoint(h.edit_json("meta.json", lambda d: d.update(time={}))),
     FormatError, "'time' must be Unix seconds, found {}", "meta.json"),
    ("meta-time-infinity", h.checkpoint(h.edit_json(
        "meta.json", lambda d: d.update(time=float("inf")))),
     FormatError, "'time' must be Unix seconds, found inf", "meta.json"),
    ("meta-versions-list", h.checkpoint(h.edit_json(
        "meta.json", lambda d: d.update(versions=[1]))),
     FormatError, "'versions' must map library names to version strings", "meta.json"),
    ("weights-unlisted", h.checkpoint(h.edit_json(
        "manifest.json", lambda d: d["files"].__delitem__("model.safetensors"))),
     ChecksumError, "holds weights but the manifest does not list it", "model.safetensors"),
    ("meta-deep", h.checkpoint(h.write("meta.json", '{"step": 1, "extra": ' + h.DEEP + "}")),
     FormatError, "the checkpoint's metadata nests deeper than Python can parse", "meta.json"),
    ("manifest-deep", h.checkpoint(h.write("manifest.json", h.DEEP), rehash=False),
     FormatError, "the manifest nests deeper than Python can parse", "manifest.json"),
]


@pytest.mark.parametrize("case,build,error,text,names", CHECKPOINTS,
                         ids=[c[0] for c in CHECKPOINTS])
def test_hostile_checkpoint(tmp_path: Path, case: str, build: Callable[[Path], Path],
                            error: type, text: str, names: str) -> None:
    root = build(tmp_path)
    model = Tiny()
    opt, sched = training_parts(model)
    state = (random.getstate(), torch.get_rng_state())
    with pytest.raises(error) as info:
        ml.CheckpointManager(root).load(model, optimizer=opt, scheduler=sched)
    _check(str(info.value), tmp_path, text, names)
    # the generators are set last, and all or none: they were not touched
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[1])


def test_rng_is_restored_whole_or_not_at_all(tmp_path: Path) -> None:
    """A bad numpy state is found before Python's generator is set (it used to be set
    first, then numpy's failed: a half-restored run)."""
    root = h.checkpoint(h.edit_json("rng.json", lambda d: d["numpy"].update(pos=2**40)))(
        tmp_path)
    random.seed(123)
    before = random.getstate()
    with pytest.raises(FormatError, match="RNG state is incomplete or malformed"):
        h.restore_checkpoint(root)
    assert random.getstate() == before
