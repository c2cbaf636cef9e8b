"""Transformers models <-> GGUF in llama.cpp's layout, without llama.cpp: the round trip, the
Q/K rows, transformers' own GGUF loader, the CLI, and the refusals.

llama.cpp itself (its converter, its quantizer, its logits) is in ``test_gguf_llamacpp.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import hf_tiny
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.cli import main
from mlmf_lab.errors import MLMFError, UnsupportedError
from mlmf_lab.formats.gguf_arch import permute_qk, unpermute_qk
from mlmf_lab.formats.gguf_rope import (
    RopeScaling,
    fit_llama3,
    llama3_divisors,
    scaling_to_hf,
    yarn_mscale,
)

TOKENS = torch.tensor([[1, 313, 318, 287, 279, 282, 276, 268, 259, 314, 5, 77]])


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    return folder, hf_tiny.causal_lm(folder)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(TOKENS).logits


def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf), verbatim."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


@pytest.mark.parametrize("shape", [(64, 16), (64,)])
def test_qk_permutation_is_llama_cpps_and_undone(shape: tuple[int, ...]) -> None:
    w = torch.randn(shape)
    assert torch.equal(permute_qk(w, 4), llama_cpp_permute(w, 4))
    assert torch.equal(unpermute_qk(permute_qk(w, 4), 4), w)
    with pytest.raises(MLMFError, match="64 rows do not split into 3 heads of an even size"):
        permute_qk(w, 3)


def test_qk_rows_come_back_on_quantized_bytes() -> None:
    """Blocks never straddle rows: un-permuting the stored bytes equals quantizing the rows."""
    w = torch.randn(64, 256)
    q = ml.quant.quantize(permute_qk(w, 4), "q4_k")
    assert torch.equal(unpermute_qk(q.data, 4), ml.quant.quantize(w, "q4_k").data)


def test_round_trip_is_bit_exact_config_and_tokenizer_included(
        llama: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, model = llama
    path = ml.convert(folder, tmp_path / "model.gguf")
    back = ml.convert(path, tmp_path / "back")
    assert (back / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    original, restored = ml.load_state_dict(folder), ml.load_state_dict(back)
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(back)), logits(model))
    tok, tok_back = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(back)
    for text in hf_tiny.TEXTS:
        assert tok_back(text)["input_ids"] == tok(text)["input_ids"]


def test_the_gguf_carries_llama_cpps_layout(llama: tuple[Path, torch.nn.Module],
                                             tmp_path: Path) -> None:
    folder, model = llama
    path = ml.convert(folder, tmp_path / "model.gguf", quant="f16")
    fields = gguf.GGUFReader(path).fields
    typed = {k: (f.types[0].name, f.contents()) for k, f in fields.items()
             if k.startswith("llama.")}
    assert typed == {
        "llama.block_count": ("UINT32", 2), "llama.context_length": ("UINT32", 256),
        "llama.embedding_length": ("UINT32", 256), "llama.feed_forward_length": ("UINT32", 512),
        "llama.attention.head_count": ("UINT32", 4), "llama.attention.head_count_kv": ("UINT32", 2),
        "llama.attention.layer_norm_rms_epsilon": ("FLOAT32", pytest.approx(1e-5)),
        "llama.rope.freq_base": ("FLOAT32", 10000.0), "llama.rope.dimension_count": ("UINT32", 64),
        "llama.attention.key_length": ("UINT32", 64),
        "llama.attention.value_length": ("UINT32", 64),
        "llama.vocab_size": ("UINT32", 320)}
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_F16)
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 320
    with ml.open_weights(path) as wf:
        q = model.model.layers[1].self_attn.q_proj.weight.detach()
        assert torch.equal(wf.tensor("blk.1.attn_q.weight"), permute_qk(q, 4).half())
        assert wf.info("blk.1.attn_norm.weight").dtype == "float32"


def test_transformers_own_gguf_loader_reads_our_file(llama: tuple[Path, torch.nn.Module],
                                                      tmp_path: Path) -> None:
    """Not a default 7B Llama any more: the hyperparameters are where transformers looks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, model = llama
    path = ml.convert(folder, tmp_path / "model.gguf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name)
    assert (loaded.config.hidden_size, loaded.config.num_hidden_layers) == (256, 2)
    assert torch.equal(logits(loaded), logits(model))
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert tok("hello world")["input_ids"] == AutoTokenizer.from_pretrained(folder)(
        "hello world")["input_ids"]


@pytest.mark.parametrize("quant", ["q8_0", "q4_k"])
def test_load_into_maps_names_and_keeps_blocks(llama: tuple[Path, torch.nn.Module],
                                               tmp_path: Path, quant: str) -> None:
    from transformers import AutoModelForCausalLM

    folder, model = llama
    path = ml.convert(folder, tmp_path / "model.gguf", quant=quant)
    dense = AutoModelForCausalLM.from_config(model.config)
    assert ml.load_into(dense, path).ok
    kept = AutoModelForCausalLM.from_config(model.config)
    assert ml.load_into(kept, path, keep_quantized=True).ok
    layer = kept.model.layers[0].self_attn.k_proj
    assert isinstance(layer, ml.quant.QuantLinear)
    expected = ml.quant.quantize(model.model.layers[0].self_attn.k_proj.weight.detach(), quant)
    assert torch.equal(layer.qweight.data, expected.data)  # rows back in place, still blocks
    assert torch.allclose(logits(kept), logits(dense), atol=1e-4)


def test_f16_gguf_loads_into_a_float32_model(llama: tuple[Path, torch.nn.Module],
                                              tmp_path: Path) -> None:
    """f16 matrices beside f32 norms: the model's dtype decides (the forward pass used to
    fail on mixed dtypes)."""
    from transformers import AutoModelForCausalLM

    folder, model = llama
    path = ml.convert(folder, tmp_path / "model.gguf", quant="f16")
    loaded = AutoModelForCausalLM.from_config(model.config)
    assert ml.load_into(loaded, path).ok
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.allclose(logits(loaded), logits(model), atol=2e-3)


def test_load_into_a_folder_transformers_saved_with_tied_embeddings(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = hf_tiny.causal_lm(tmp_path / "tied", tie=True)
    assert "lm_head.weight" not in ml.open_weights(tmp_path / "tied")
    fresh = AutoModelForCausalLM.from_config(model.config)
    assert ml.load_into(fresh, tmp_path / "tied").ok
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert torch.equal(logits(fresh), logits(model))


def test_tied_model_round_trip_writes_no_output_tensor(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = hf_tiny.causal_lm(tmp_path / "tied", tie=True)
    path = ml.convert(tmp_path / "tied", tmp_path / "tied.gguf")
    assert "output.weight" not in ml.open_weights(path)  # llama.cpp reuses token_embd
    back = AutoModelForCausalLM.from_pretrained(ml.convert(path, tmp_path / "back"))
    assert torch.equal(logits(back), logits(model))


def test_cli_says_what_it_wrote(llama: tuple[Path, torch.nn.Module], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    folder, _ = llama
    assert main(["convert", str(folder), str(tmp_path / "m.gguf"), "--quant", "q8_0"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path / 'm.gguf'} (gguf, architecture llama)",
        "  tensors: 21 (5 F32, 16 Q8_0)", "  tokenizer: llama, 320 tokens"]
    assert main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path / 'out'} (hf, architecture llama)", "  tensors: 21 (21 float32)",
        "  tokenizer: tokenizer.json, tokenizer_config.json"]


def test_without_a_tokenizer_it_says_what_llama_cpp_cannot_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf_tiny.causal_lm(tmp_path / "bare", tokenizer=False)
    with pytest.warns(UserWarning, match="no tokenizer: tokenizer.ggml.model is 'none', so "
                      "llama.cpp runs the model on token ids but cannot tokenize"):
        assert main(["convert", str(tmp_path / "bare"), str(tmp_path / "m.gguf")]) == 0
    out = capsys.readouterr().out
    assert "  tokenizer: none\n  note: no tokenizer: tokenizer.ggml.model is 'none'" in out
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.model"].contents() == \
        "none"


def test_tensors_llama_cpp_has_no_place_for_are_refused(
        llama: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, _ = llama
    state = ml.load_state_dict(folder)
    state["model.layers.0.adapter.weight"] = torch.zeros(4, 4)
    bad = tmp_path / "bad"
    ml.save_state_dict(state, bad)
    (bad / "config.json").write_bytes((folder / "config.json").read_bytes())
    with pytest.raises(UnsupportedError, match="1 tensors have no place in llama.cpp's 'llama' "
                       "layout: model.layers.0.adapter.weight"):
        ml.convert(bad, tmp_path / "m.gguf")


def test_config_without_a_needed_key_names_it(llama: tuple[Path, torch.nn.Module],
                                              tmp_path: Path) -> None:
    folder, _ = llama
    config = json.loads((folder / "config.json").read_text())
    del config["rms_norm_eps"]
    bad = tmp_path / "bad"
    ml.save_state_dict(ml.load_state_dict(folder), bad)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(MLMFError, match=r"config.json: config.json needs rms_norm_eps as a "
                       "number; found None"):
        ml.convert(bad, tmp_path / "m.gguf")


def test_hostile_counts_and_class_names_are_refused(
        llama: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    """Counts and names come from the files: checked before they size or build anything."""
    from transformers import AutoModelForCausalLM

    from mlmf_lab.errors import FormatError

    folder, model = llama
    path = ml.convert(folder, tmp_path / "model.gguf")
    with ml.open_weights(path) as wf:
        state, meta = wf.state_dict(), dict(wf.metadata)
    ml.save_state_dict(state, tmp_path / "deep.gguf", {**meta, "llama.block_count": 10**9})
    with pytest.raises(FormatError, match="llama.block_count is 1000000000 but the file holds "
                       "only 21 tensors"):
        ml.load_into(AutoModelForCausalLM.from_config(model.config), tmp_path / "deep.gguf")
    config = {**meta["mlmf.hf_config"], "architectures": ["AutoTokenizer"]}
    ml.save_state_dict(state, tmp_path / "odd.gguf", {**meta, "mlmf.hf_config": config})
    with pytest.raises(UnsupportedError, match="'AutoTokenizer' is not a transformers model "
                       "class for model_type 'llama'"):
        ml.convert(tmp_path / "odd.gguf", tmp_path / "out")
    deep = tmp_path / "deep"
    ml.save_state_dict(ml.load_state_dict(folder), deep)
    config = json.loads((folder / "config.json").read_text())
    (deep / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**9}))
    with pytest.raises(MLMFError, match="config.json says 1000000000 layers but the weights "
                       "hold only 21 tensors"):
        ml.convert(deep, tmp_path / "deep-hf.gguf")


# -- rotary scalings ---------------------------------------------------------------------------
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
        "attention_factor": 1.25}
LONG = torch.tensor([[1] + [(7 * i + 3) % 316 + 3 for i in range(79)]])


def long_logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(LONG).logits


@pytest.mark.parametrize("rope", [LLAMA3, YARN], ids=["llama3", "yarn"])
def test_scaled_round_trip_is_bit_exact(tmp_path: Path, rope: dict[str, object]) -> None:
    from transformers import AutoModelForCausalLM

    model = hf_tiny.causal_lm(tmp_path / "hf", rope=rope, tokenizer=False)
    with pytest.warns(UserWarning, match="no tokenizer"):
        path = ml.convert(tmp_path / "hf", tmp_path / "model.gguf")
    back = ml.convert(path, tmp_path / "back")
    assert (back / "config.json").read_bytes() == (tmp_path / "hf" / "config.json").read_bytes()
    original, restored = ml.load_state_dict(tmp_path / "hf"), ml.load_state_dict(back)
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert torch.equal(long_logits(AutoModelForCausalLM.from_pretrained(back)), long_logits(model))
    loaded = AutoModelForCausalLM.from_config(model.config)
    assert ml.load_into(loaded, path).ok  # rope_freqs is no weight of the model
    assert torch.equal(long_logits(loaded), long_logits(model))


def test_the_gguf_carries_llama_cpps_rope_scaling(tmp_path: Path) -> None:
    hf_tiny.causal_lm(tmp_path / "l3", rope=LLAMA3, tokenizer=False)
    hf_tiny.causal_lm(tmp_path / "yarn", rope=YARN, tokenizer=False)
    with pytest.warns(UserWarning, match="no tokenizer"):
        l3 = ml.convert(tmp_path / "l3", tmp_path / "l3.gguf", quant="q8_0")
        yarn = ml.convert(tmp_path / "yarn", tmp_path / "yarn.gguf")
    with ml.open_weights(l3) as wf:
        assert wf.info("rope_freqs.weight").dtype == "float32"  # whatever the file type
        assert torch.equal(wf.tensor("rope_freqs.weight"), llama3_divisors(10000.0, 64, 8.0, 1.0,
                                                                           4.0, 32))
        assert not any(k.startswith("llama.rope.scaling") for k in wf.metadata)
    fields = gguf.GGUFReader(yarn).fields
    typed = {k: (f.types[0].name, f.contents()) for k, f in fields.items()
             if k.startswith("llama.rope.scaling")}
    assert typed == {
        "llama.rope.scaling.type": ("STRING", "yarn"),
        "llama.rope.scaling.factor": ("FLOAT32", 4.0),
        "llama.rope.scaling.original_context_length": ("UINT32", 64),
        # what llama.cpp's converter copies (llama.cpp's llama does not read it) ...
        "llama.rope.scaling.yarn_attn_factor": ("FLOAT32", 1.25),
        # ... and what llama.cpp reads: a multiplier on its own 1 + 0.1 ln(factor)
        "llama.rope.scaling.attn_factor": ("FLOAT32", pytest.approx(1.25 / yarn_mscale(4.0)))}


def test_without_a_carried_config_the_files_scaling_wins(tmp_path: Path) -> None:
    """The scaling is rebuilt from llama.cpp's keys and rope_freqs, and where a carried config
    disagrees with them, the file's wins (it is what llama.cpp runs)."""
    from transformers import AutoModelForCausalLM

    model = hf_tiny.causal_lm(tmp_path / "l3", rope=LLAMA3, tokenizer=False)
    hf_tiny.causal_lm(tmp_path / "yarn", rope=YARN, tokenizer=False)
    with pytest.warns(UserWarning, match="no tokenizer"):
        l3 = ml.convert(tmp_path / "l3", tmp_path / "l3.gguf")
        yarn = ml.convert(tmp_path / "yarn", tmp_path / "yarn.gguf")
    with ml.open_weights(l3) as wf:
        state, meta = wf.state_dict(), dict(wf.metadata)
    del meta["mlmf.hf_config"]
    ml.save_state_dict(state, tmp_path / "bare.gguf", meta)
    back = ml.convert(tmp_path / "bare.gguf", tmp_path / "back")
    config = json.loads((back / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_theta": 10000.0, **LLAMA3}
    assert torch.equal(long_logits(AutoModelForCausalLM.from_pretrained(back)), long_logits(model))
    with ml.open_weights(yarn) as wf:
        state, meta = wf.state_dict(), dict(wf.metadata)
    ml.save_state_dict(state, tmp_path / "edited.gguf", {**meta, "llama.rope.scaling.factor": 2.0})
    back = ml.convert(tmp_path / "edited.gguf", tmp_path / "edited")
    config = json.loads((back / "config.json").read_text())
    assert config["rope_parameters"] == {
        "rope_theta": 10000.0, "rope_type": "yarn", "factor": 2.0,
        "original_max_position_embeddings": 64,
        "attention_factor": pytest.approx(1.25 / yarn_mscale(4.0) * yarn_mscale(2.0))}


@pytest.mark.parametrize(("settings", "base", "dim"), [
    ((8.0, 1.0, 4.0, 8192), 500000.0, 128), ((32.0, 1.0, 4.0, 8192), 500000.0, 64),
    ((8.0, 1.0, 4.0, 32), 10000.0, 64)], ids=["llama-3.1", "llama-3.2", "tiny"])
def test_llama3_parameters_come_back_from_rope_freqs(
        settings: tuple[float, float, float, int], base: float, dim: int) -> None:
    factor, low, high, original = settings
    fitted = fit_llama3(llama3_divisors(base, dim, *settings), base, dim)
    assert fitted == {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                      "high_freq_factor": high, "original_max_position_embeddings": original}
    noise = RopeScaling(divisors=1 + torch.rand(dim // 2))
    with pytest.raises(UnsupportedError, match="rope_freqs.weight follows llama 3's rule for no "
                       "factor, low/high freq factor and original context"):
        scaling_to_hf(noise, base, dim)


@pytest.mark.parametrize(("model_type", "rope", "error", "message"), [
    ("qwen2", LLAMA3, UnsupportedError, "rope_type 'llama3', which llama.cpp does not run for "
     "this architecture; supported: default, linear, yarn"),
    ("llama", {"rope_type": "dynamic", "factor": 2.0}, UnsupportedError,
     "rope_type 'dynamic', which llama.cpp does not run for this architecture; supported: "
     "default, linear, llama3, yarn"),
    ("llama", {**YARN, "beta_fast": 16}, UnsupportedError, "yarn has beta_fast 16; llama.cpp's "
     "llama and qwen2 read no beta_fast from a GGUF file and always use 32"),
    ("llama", {k: v for k, v in LLAMA3.items() if k != "high_freq_factor"}, MLMFError,
     "rope_type 'llama3' needs high_freq_factor as a positive number; found None")])
def test_rope_scalings_llama_cpp_would_not_run_are_refused(
        tmp_path: Path, model_type: str, rope: dict[str, object], error: type[Exception],
        message: str) -> None:
    hf_tiny.causal_lm(tmp_path / "hf", model_type, tokenizer=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rope_parameters"] = {"rope_theta": 10000.0, **rope}  # as edited by hand
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(error, match=message):
        ml.convert(tmp_path / "hf", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
