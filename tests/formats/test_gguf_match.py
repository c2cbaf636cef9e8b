"""``ml.load_into`` from a llama.cpp GGUF refuses a model whose config computes something else
than the file describes, in the settings no tensor shape shows: the rotary scaling,
``rope_theta`` and the norms' epsilon (``formats.gguf_match``)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import hf_tiny
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

import mlmf_lab as ml
from mlmf_lab.errors import ConfigError
from mlmf_lab.formats.gguf_arch import ARCHS
from mlmf_lab.formats.gguf_match import config_mismatches
from mlmf_lab.formats.gguf_model import HF_CONFIG_KEY
from mlmf_lab.formats.gguf_rope import yarn_mscale

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
LONG = torch.tensor([[1] + [(7 * i + 3) % 316 + 3 for i in range(79)]])  # past 32 and 64
FIX = (r"\. Build the model from the config the file carries: ml\.convert\('.*', folder\) "
       r"writes it as folder/config\.json \(with the weights, for from_pretrained\(folder\)\); "
       r"or set these values in the model's config before building it$")


def tiny(folder: Path, rope: dict[str, object] | None = None, quant: str | None = None
         ) -> tuple[torch.nn.Module, Path]:
    """A tiny Llama saved by transformers (no tokenizer) and its GGUF."""
    model = hf_tiny.causal_lm(folder, rope=rope, tokenizer=False)
    with pytest.warns(UserWarning, match="no tokenizer"):
        path = ml.convert(folder, folder.with_suffix(".gguf"), quant=quant)
    return model, path


def built(config: PretrainedConfig, **changes: object) -> torch.nn.Module:
    """The config's model on the meta device, with ``changes`` to a copy of the config."""
    config = copy.deepcopy(config)
    for key, value in changes.items():
        setattr(config, key, value)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def long_logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(LONG).logits


@pytest.mark.parametrize(("rope", "differences"), [
    (LLAMA3, "rope_parameters.rope_type: the model has 'default', the file has 'llama3'; "
     "rope_parameters.factor: the model has no value, the file has 8.0; "
     "rope_parameters.high_freq_factor: the model has no value, the file has 4.0; "
     "rope_parameters.low_freq_factor: the model has no value, the file has 1.0; "
     "rope_parameters.original_max_position_embeddings: the model has no value, the file has 32"),
    (YARN, "rope_parameters.rope_type: the model has 'default', the file has 'yarn'; "
     "rope_parameters.factor: the model has no value, the file has 4.0; "
     "rope_parameters.original_max_position_embeddings: the model has no value, the file has 64")],
    ids=["llama3", "yarn"])
def test_a_scaled_file_into_a_default_rope_model_is_refused(
        tmp_path: Path, rope: dict[str, object], differences: str) -> None:
    """It used to load cleanly and run the unscaled rotary embedding (other logits)."""
    model, path = tiny(tmp_path / "hf", rope)
    default = built(model.config, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
    message = (f"^{re.escape(str(path))}: the LlamaForCausalLM's config does not compute what "
               "the file describes \\(these settings change no tensor shape: the weights would "
               f"load and give other logits\\): {differences}" + FIX)
    for keep in (False, True):
        with pytest.raises(ConfigError, match=message):
            ml.load_into(default, path, keep_quantized=keep)
    assert all(p.is_meta for p in default.parameters())  # refused before anything is loaded


@pytest.mark.parametrize("rope", [LLAMA3, YARN], ids=["llama3", "yarn"])
def test_a_model_built_from_the_files_config_gives_the_original_logits(
        tmp_path: Path, rope: dict[str, object]) -> None:
    model, path = tiny(tmp_path / "hf", rope)
    folder = ml.convert(path, tmp_path / "back")
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    assert ml.load_into(fresh, path).ok
    assert torch.equal(long_logits(fresh), long_logits(model))
    # without the carried config, the scaling rebuilt from llama.cpp's keys matches too
    with ml.open_weights(path) as wf:
        state, meta = wf.state_dict(), dict(wf.metadata)
    del meta[HF_CONFIG_KEY]
    ml.save_state_dict(state, tmp_path / "bare.gguf", meta)
    again = built(model.config)
    assert ml.load_into(again, tmp_path / "bare.gguf").ok
    assert torch.equal(long_logits(again), long_logits(model))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A default-rope tiny Llama and its q8_0 GGUF."""
    return tiny(tmp_path_factory.mktemp("plain") / "hf", quant="q8_0")


def test_a_rope_theta_mismatch_is_refused(plain: tuple[torch.nn.Module, Path]) -> None:
    model, path = plain
    other = built(model.config, rope_parameters={"rope_theta": 500000.0, "rope_type": "default"})
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: the LlamaForCausalLM's "
                       r"config does not compute what the file describes \(.*\): "
                       "rope_parameters.rope_theta: the model has 500000.0, the file has 10000.0"
                       + FIX):
        ml.load_into(other, path, keep_quantized=True)
    assert type(other.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # nothing swapped


def test_an_epsilon_mismatch_is_refused_float32_rounding_is_not(
        plain: tuple[torch.nn.Module, Path]) -> None:
    model, path = plain
    with pytest.raises(ConfigError, match=r"\): rms_norm_eps: the model has 1e-06, the file has "
                       "1e-05" + FIX):
        ml.load_into(built(model.config, rms_norm_eps=1e-6), path)
    stored = float(np.float32(1e-5))  # what GGUF keeps, as a config read from it would say
    assert stored != 1e-5
    assert ml.load_into(built(model.config, rms_norm_eps=stored), path).ok


def test_gpt2s_epsilon_is_checked(tmp_path: Path) -> None:
    model = hf_tiny.gpt2(tmp_path / "hf")
    path = ml.convert(tmp_path / "hf", tmp_path / "gpt2.gguf")
    with pytest.raises(ConfigError, match=r"\): layer_norm_epsilon: the model has 0.001, the "
                       "file has 1e-05" + FIX):
        ml.load_into(built(model.config, layer_norm_epsilon=1e-3), path)
    assert ml.load_into(built(model.config), path).ok


def test_berts_epsilon_is_checked_and_without_a_config_it_says_so(tmp_path: Path) -> None:
    """Without the carried config (llama.cpp's converter writes none) there is nothing to
    compare with: transformers maps no bert GGUF keys."""
    from transformers import BertModel

    model = hf_tiny.bert(tmp_path / "hf")
    with pytest.warns(UserWarning, match="has no place for pooler"):
        path = ml.convert(tmp_path / "hf", tmp_path / "bert.gguf")
    with ml.open_weights(path) as wf:
        state, meta = wf.state_dict(), dict(wf.metadata)
    del meta[HF_CONFIG_KEY]
    ml.save_state_dict(state, tmp_path / "bare.gguf", meta)
    other = copy.deepcopy(model.config)
    other.layer_norm_eps = 1e-3
    with pytest.raises(ConfigError, match=r"\): layer_norm_eps: the model has 0.001, the file "
                       "has 1e-12" + FIX):
        ml.load_into(BertModel(other), path, strict=False)
    with pytest.warns(UserWarning, match=r"BertModel's config is not checked against the file: "
                      r"it carries no mlmf.hf_config and transformers has no GGUF config mapping "
                      r"for 'bert'; llama.cpp runs it with \{'bert.attention.layer_norm_epsilon': "
                      r"9.99999996"):
        report = ml.load_into(BertModel(model.config), tmp_path / "bare.gguf", strict=False)
    assert report.missing == ["pooler.dense.weight", "pooler.dense.bias"]


# -- the comparison itself -----------------------------------------------------------------
def test_the_same_scaling_written_another_way_matches() -> None:
    llama = ARCHS["llama"]
    base = {"hidden_size": 256, "num_attention_heads": 4, "rms_norm_eps": 1e-5}

    def rope(**parameters: object) -> dict[str, object]:
        return {**base, "rope_parameters": {"rope_theta": 10000.0, **parameters}}

    same = [(rope(rope_type="default"), rope(rope_type="linear", factor=1.0)),
            (rope(**YARN), rope(**YARN, attention_factor=yarn_mscale(4.0), beta_fast=32.0)),
            (rope(**LLAMA3), {**base, "rope_theta": 10000, "rope_scaling": {**LLAMA3}})]
    for a, b in same:
        assert config_mismatches(a, b, llama) == []
    # Llama 3's divisors move with rope_theta alone: only rope_theta is named
    wrong = config_mismatches({**base, "rope_parameters": {"rope_theta": 5e5, **LLAMA3}},
                              rope(**LLAMA3), llama)
    assert [m.describe() for m in wrong] == [
        "rope_parameters.rope_theta: the model has 500000.0, the file has 10000.0"]
    wrong = config_mismatches(rope(rope_type="dynamic", factor=2.0), rope(rope_type="default"),
                              llama)
    assert [m.describe() for m in wrong] == [
        "rope_parameters.rope_type: the model has 'dynamic', the file has 'default'",
        "rope_parameters.factor: the model has 2.0, the file has no value"]
