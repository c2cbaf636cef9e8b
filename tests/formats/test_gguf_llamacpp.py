"""Our GGUF files in llama.cpp itself, against llama.cpp's own converter and quantizer.

A tiny Llama (grouped-query attention: 4 query heads, 2 key/value heads) saved by
transformers with a Llama-2-style tokenizer; llama.cpp is llama-cpp-python built from source
(see ``tests/llamacpp.py``). Logits are compared as max|Δ| / max|logit| against transformers
on the same weights (the GGUF file read back into ``LlamaForCausalLM`` by ``ml.load_into``),
so what is measured is llama.cpp's reading of our file, not the quantization error (measured
on this model: f32 7e-7, f16 5e-4, q8_0 1.3e-2, q4_0 1.3e-2, q4_k 2.0e-2; llama.cpp's dot
products quantize the activations of block types to 8 bits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import hf_tiny
import llamacpp
import numpy as np
import pytest
import torch

import mlmf_lab as ml

TOKENS = [1, 313, 318, 287, 279, 282, 276, 268, 259, 314, 303, 288, 5, 77, 200, 300]
TOLERANCE = {"f32": 1e-4, "f16": 5e-3, "q8_0": 8e-2, "q4_0": 8e-2, "q4_k": 8e-2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "tiny-llama"
    hf_tiny.causal_lm(path)
    return path


@pytest.fixture(scope="module")
def reference(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """llama.cpp's converter's files, by output type (each converted once per module)."""
    out = tmp_path_factory.mktemp("ref")
    files = {}
    for outtype in ("f32", "f16", "q8_0"):
        files[outtype] = out / f"{outtype}.gguf"
        llamacpp.reference_convert(folder, files[outtype], outtype)
    return files


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def transformers_logits(model_folder: Path, weights: Path, tokens: list[int]) -> np.ndarray:
    """transformers' logits with the weights of ``weights`` loaded by ``ml.load_into``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_folder))
    assert ml.load_into(model, weights).ok
    with torch.no_grad():
        return model.eval()(torch.tensor([tokens])).logits[0].numpy()


@pytest.mark.parametrize("quant", list(TOLERANCE))
def test_llama_cpp_runs_our_file_with_transformers_logits(
        folder: Path, tmp_path: Path, quant: str) -> None:
    path = ml.convert(folder, tmp_path / "model.gguf", quant=quant)
    got = llamacpp.logits(path, TOKENS)
    ref = transformers_logits(folder, path, TOKENS)
    assert _relative(got, ref) <= TOLERANCE[quant]


def test_f32_file_gives_the_original_models_logits(folder: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = ml.convert(folder, tmp_path / "model.gguf")
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(folder).eval()(
            torch.tensor([TOKENS])).logits[0].numpy()
    assert np.array_equal(transformers_logits(folder, path, TOKENS), ref)
    assert _relative(llamacpp.logits(path, TOKENS), ref) <= 1e-4


def test_without_a_tokenizer_llama_cpp_still_runs_token_ids(tmp_path: Path) -> None:
    hf_tiny.causal_lm(tmp_path / "bare", tokenizer=False)
    with pytest.warns(UserWarning, match="no tokenizer"):
        path = ml.convert(tmp_path / "bare", tmp_path / "bare.gguf")
    ref = transformers_logits(tmp_path / "bare", path, TOKENS)
    assert _relative(llamacpp.logits(path, TOKENS), ref) <= TOLERANCE["f32"]


def _tensor_bytes(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def _same_as_reference(ours: Path, ref: Path, skip: tuple[str, ...] = ()) -> None:
    """Byte-identical tensors, and every key llama.cpp's converter writes, typed alike."""
    assert _tensor_bytes(ours) == _tensor_bytes(ref)
    theirs, mine = gguf.GGUFReader(ref).fields, gguf.GGUFReader(ours).fields
    for key, field in theirs.items():
        if not key.startswith("GGUF.") and key not in skip:
            assert (mine[key].types, mine[key].contents()) == (field.types, field.contents()), key


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_same_bytes_and_keys_as_llama_cpps_converter(
        folder: Path, reference: dict[str, Path], tmp_path: Path, outtype: str) -> None:
    ref, ours = reference[outtype], tmp_path / "ours.gguf"
    ml.convert(folder, ours, quant=outtype)
    assert _tensor_bytes(ours) == _tensor_bytes(ref)
    theirs, mine = gguf.GGUFReader(ref).fields, gguf.GGUFReader(ours).fields
    # every key llama.cpp's converter writes, with its type and value: hyperparameters,
    # general.*, the whole tokenizer. (Our writer sets the quantization version only when
    # it writes blocks; llama.cpp needs it only then.)
    for key, field in theirs.items():
        if key.startswith("GGUF.") or (key == "general.quantization_version" and outtype != "q8_0"):
            continue
        assert key in mine, key
        assert (mine[key].types, mine[key].contents()) == (field.types, field.contents()), key


@pytest.mark.parametrize(("quant", "ftype"), [("q4_0", "q4_0"), ("q4_k", "q4_k_s")])
def test_block_types_against_llama_cpps_quantizer(
        folder: Path, reference: dict[str, Path], tmp_path: Path, quant: str, ftype: str) -> None:
    """Q4_0 bytes are llama-quantize's; Q4_K (a search over scales) is within 2% of its error."""
    f32, theirs = reference["f32"], tmp_path / "theirs.gguf"
    llamacpp.quantize(f32, theirs, ftype)
    ours = ml.convert(folder, tmp_path / "ours.gguf", quant=quant)
    if quant == "q4_0":
        assert _tensor_bytes(ours) == _tensor_bytes(theirs)
        return
    with ml.open_weights(f32) as w, ml.open_weights(theirs) as t, ml.open_weights(ours) as o:
        assert {n: o.info(n).quant for n in o} == {n: t.info(n).quant for n in t}
        for name in w:
            if o.info(name).quant:
                ref = w.tensor(name)
                mine = float((o.tensor(name) - ref).norm() / ref.norm())
                llama = float((t.tensor(name) - ref).norm() / ref.norm())
                assert mine <= 1.02 * llama, name


def test_llama_cpps_file_into_transformers(
        folder: Path, reference: dict[str, Path], tmp_path: Path) -> None:
    """llama.cpp's converter output -> ``mlmf-lab convert x.gguf out/`` -> from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlmf_lab.cli import main

    ref = reference["f32"]
    assert main(["convert", str(ref), str(tmp_path / "out")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    original = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        x = torch.tensor([TOKENS])
        assert torch.equal(back(x).logits, original(x).logits)
    tok, tok_back = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(
        tmp_path / "out")
    for text in hf_tiny.TEXTS:
        assert tok_back(text)["input_ids"] == tok(text)["input_ids"]


def test_llama_cpp_tokenizes_our_file_like_its_own(
        folder: Path, reference: dict[str, Path], tmp_path: Path) -> None:
    ref = reference["f32"]
    ours = ml.convert(folder, tmp_path / "ours.gguf")
    assert llamacpp.tokenize(ours, hf_tiny.TEXTS) == llamacpp.tokenize(ref, hf_tiny.TEXTS)


@pytest.mark.parametrize(("model_type", "pre"), [("mistral", None), ("qwen2", "gpt-2")])
def test_the_rest_of_the_llama_family(tmp_path: Path, model_type: str, pre: str | None) -> None:
    """Mistral is llama.cpp's 'llama' (rotary rows permuted); Qwen2 its own, with Q/K/V
    biases and no permutation."""
    model = hf_tiny.causal_lm(tmp_path / "hf", model_type)
    ref_file = tmp_path / "ref.gguf"
    llamacpp.reference_convert(tmp_path / "hf", ref_file, "f32", pre=pre)
    path = ml.convert(tmp_path / "hf", tmp_path / "model.gguf")
    _same_as_reference(path, ref_file, skip=("general.quantization_version",))
    with torch.no_grad():
        ref = model(torch.tensor([TOKENS])).logits[0].numpy()
    assert _relative(llamacpp.logits(path, TOKENS), ref) <= TOLERANCE["f32"]
    back = ml.convert(path, tmp_path / "back")
    assert (back / "config.json").read_bytes() == (tmp_path / "hf" / "config.json").read_bytes()


# -- rotary scalings ---------------------------------------------------------------------------
# Past the original context of 32 / 64 positions (a short one, so that the scaling matters on
# a tiny model): the logits move by 3e-2 to 7e-2 from those of the unscaled model. Measured
# against transformers: 7e-7 to 8e-7.
LONG = [1] + [(7 * i + 3) % 316 + 3 for i in range(119)]
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def _long_logits(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.tensor([LONG])).logits[0].numpy()


@pytest.mark.parametrize(("model_type", "rope"), [
    ("llama", LLAMA3), ("llama", YARN), ("llama", {**YARN, "attention_factor": 1.25}),
    ("qwen2", YARN), ("llama", {"rope_type": "linear", "factor": 2.0})],
    ids=["llama3", "yarn", "yarn-attention", "qwen2-yarn", "linear"])
def test_rope_scaling_both_ways(tmp_path: Path, model_type: str, rope: dict[str, object]) -> None:
    """Llama 3 as llama.cpp's converter writes it (rope_freqs, bytes alike); YaRN with the keys
    llama.cpp reads. An attention_factor goes in rope.scaling.attn_factor: the converter's
    yarn_attn_factor is not read by llama.cpp's llama and qwen2 (its file is 1.5e-2 off).

    Back from the converter's file (no carried config), the scaling is rebuilt from llama.cpp's
    keys, Llama 3's parameters solved from its rope_freqs: the model llama.cpp runs."""
    from transformers import AutoModelForCausalLM

    model = hf_tiny.causal_lm(tmp_path / "hf", model_type, rope=rope)
    unscaled = _long_logits(hf_tiny.causal_lm(tmp_path / "plain", model_type))
    ref = _long_logits(model)
    assert _relative(unscaled, ref) > 2e-2
    path = ml.convert(tmp_path / "hf", tmp_path / "model.gguf")
    assert _relative(llamacpp.logits(path, LONG), ref) <= TOLERANCE["f32"]
    ref_file = tmp_path / "ref.gguf"
    llamacpp.reference_convert(tmp_path / "hf", ref_file, "f32",
                               pre="gpt-2" if model_type == "qwen2" else None)
    _same_as_reference(path, ref_file, skip=("general.quantization_version",))
    back = ml.convert(ref_file, tmp_path / "back")
    parameters = json.loads((back / "config.json").read_text())["rope_parameters"]
    if "attention_factor" in rope:
        assert _relative(llamacpp.logits(ref_file, LONG), ref) > 1e-2
        assert parameters == {"rope_theta": 10000.0, **YARN}
    else:
        assert parameters == {"rope_theta": 10000.0, **rope}
        assert np.array_equal(_long_logits(AutoModelForCausalLM.from_pretrained(back)), ref)


# -- GPT-2 and BERT, where gguf's tables cover them ------------------------------------------
GPT2_TOKENS = [277, 220, 306, 292, 11, 307, 260, 300, 5, 77, 200]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    hf_tiny.gpt2(path)
    config = json.loads((path / "config.json").read_text())
    config["n_ctx"] = config["n_positions"]  # llama.cpp's converter reads the older name
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "tiny-bert"
    hf_tiny.bert(path)
    return path


def ggml_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU as ggml's CPU backend computes it in float32 (``ggml-cpu/vec.h``, built with
    ``GGML_GELU_FP16``): for -10 < x < 10, x is rounded to float16 and looked up in a table of
    float16(gelu(h)) over every float16 h, gelu being the tanh form in float32; x itself from
    10 up, 0 from -10 down."""
    h = x.half().float()
    table = (0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * h * (1 + 0.044715 * h * h))))
    return torch.where(x >= 10, x, torch.where(x <= -10, torch.zeros_like(x),
                                               table.half().float()))


class GgmlGelu(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ggml_gelu(x)


@pytest.mark.parametrize("quant", list(TOLERANCE))
def test_gpt2_in_llama_cpp(gpt2: Path, tmp_path: Path, quant: str) -> None:
    """GPT-2's Conv1D weights go in transposed, its tied head as token_embd.

    ggml tabulates GELU in float16 (``ggml_gelu``), which transformers' float32 GELU is not:
    on this model that alone moves the logits by 1.3e-4, so in f32 llama.cpp is held to 1e-4
    against GPT2 with ggml's GELU (measured 1.5e-5: float32 noise in a GELU input flips its
    float16 rounding now and then), and to 5e-4 against transformers' own. The other types
    are measured against transformers' own (f16 3e-4, block types 7e-3 to 1.1e-2)."""
    from transformers import AutoModelForCausalLM

    path = ml.convert(gpt2, tmp_path / f"{quant}.gguf", quant=quant)
    got = llamacpp.logits(path, GPT2_TOKENS)
    model = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(gpt2).config)
    assert ml.load_into(model, path).ok  # names and transposes back
    assert model.config.activation_function == "gelu_new"  # the tanh form, as ggml's table
    with torch.no_grad():
        ref = model.eval()(torch.tensor([GPT2_TOKENS])).logits[0].numpy()
        for block in model.transformer.h:
            block.mlp.act = GgmlGelu()
        as_ggml = model(torch.tensor([GPT2_TOKENS])).logits[0].numpy()
    if quant == "f32":
        assert _relative(got, as_ggml) <= TOLERANCE["f32"]
        assert _relative(got, ref) <= 5e-4
    else:
        assert _relative(got, ref) <= TOLERANCE[quant]


def test_gpt2_like_llama_cpps_converter(gpt2: Path, tmp_path: Path) -> None:
    ref_file = tmp_path / "ref.gguf"
    llamacpp.reference_convert(gpt2, ref_file, "q8_0", pre="gpt-2")
    path = ml.convert(gpt2, tmp_path / "q8_0.gguf", quant="q8_0")
    _same_as_reference(path, ref_file)
    assert llamacpp.tokenize(path, hf_tiny.TEXTS) == llamacpp.tokenize(ref_file, hf_tiny.TEXTS)


def test_bert_in_llama_cpp(bert: Path, tmp_path: Path) -> None:
    """An encoder: llama.cpp's per-token embeddings against BertModel's last hidden state."""
    from transformers import AutoModel, AutoTokenizer

    ref_file = tmp_path / "ref.gguf"
    llamacpp.reference_convert(bert, ref_file, "q8_0", pre="default")
    with pytest.warns(UserWarning, match="'bert' layout has no place for pooler.dense.bias, "
                      "pooler.dense.weight; not written"):
        path = ml.convert(bert, tmp_path / "q8_0.gguf", quant="q8_0")
    _same_as_reference(path, ref_file)
    tokens = AutoTokenizer.from_pretrained(bert)("hello world, the fox")["input_ids"]
    with torch.no_grad():
        ref = AutoModel.from_pretrained(bert).eval()(torch.tensor([tokens])).last_hidden_state
    with pytest.warns(UserWarning):
        f32 = ml.convert(bert, tmp_path / "f32.gguf")
    assert _relative(llamacpp.embeddings(f32, tokens), ref[0].numpy()) <= 1e-4
    texts = [*hf_tiny.TEXTS, "Hello World, THE Fox"]
    assert llamacpp.tokenize(f32, texts) == [AutoTokenizer.from_pretrained(bert)(t)["input_ids"]
                                             for t in texts]
