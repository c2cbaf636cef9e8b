"""LoRA against PEFT on tiny random Llama and GPT-2 models built from configs (no download).

Every adapter gets non-zero ``lora_B`` (PEFT initialises it to zero, which would make
every comparison pass trivially).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import peft  # noqa: F401  (a dev dependency: missing fails, never skips)
import pytest
import torch
import transformers  # noqa: F401
from torch import nn

import mlmf_lab as ml
from mlmf_lab.errors import StateDictError, UnsupportedError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


MODELS: dict[str, tuple[Callable[[], nn.Module], dict[str, object]]] = {
    "llama": (tiny_llama, {"target_modules": ["q_proj", "v_proj", "down_proj"]}),
    "gpt2": (tiny_gpt2, {"target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True}),
}
IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def randomise(model: nn.Module, seed: int, std: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def peft_adapter(kind: str, folder: Path, seed: int = 1, **extra: object) -> nn.Module:
    """A PEFT model with random non-zero factors, saved to ``folder``."""
    from peft import LoraConfig, get_peft_model

    make, cfg = MODELS[kind]
    pm = get_peft_model(make(), LoraConfig(r=4, lora_alpha=8, **{**cfg, **extra}))
    randomise(pm, seed)
    pm.eval().save_pretrained(folder)
    return pm


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("rslora", [False, True])
def test_adapter_loaded_by_peft_and_by_us_gives_the_same_outputs(
    kind: str, rslora: bool, tmp_path: Path
) -> None:
    pm = peft_adapter(kind, tmp_path, use_rslora=rslora)
    ref = logits(pm)
    model = MODELS[kind][0]()
    base = logits(model)
    report = ml.lora.load_peft_adapter(model, tmp_path)
    assert len(report.modules) == 6
    assert (ref - base).abs().max() > 0.05  # the adapter matters
    assert (logits(model) - ref).abs().max() <= 1e-5

    merge = ml.lora.merge(model)
    merged_ref = logits(pm.merge_and_unload())
    assert merge.max_store_error == 0.0 and len(merge.modules) == 6
    assert (logits(model) - merged_ref).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", list(MODELS))
def test_adapter_saved_by_us_loads_in_peft(kind: str, tmp_path: Path) -> None:
    from peft import PeftModel

    make, cfg = MODELS[kind]
    model = make()
    ml.lora.inject(model, rank=3, alpha=6, targets=list(cfg["target_modules"]))  # type: ignore[call-overload]
    randomise(model, 5)
    ours = logits(model)
    ml.lora.save_peft_adapter(model, tmp_path / "ad")
    loaded = PeftModel.from_pretrained(make(), tmp_path / "ad").eval()
    assert (logits(loaded) - ours).abs().max() <= 1e-5
    assert (ours - logits(make())).abs().max() > 0.05


def test_heterogeneous_ranks_round_trip_through_rank_pattern(tmp_path: Path) -> None:
    from peft import PeftModel

    model = tiny_llama()
    ml.lora.inject(model, rank=4, alpha=8, targets=["q_proj"])
    # one adapter, different ranks/alphas per module: written as rank_pattern/alpha_pattern
    layer = ml.lora.lora_layers(model)["model.layers.1.self_attn.q_proj"]
    layer.delete_adapter("default")
    layer.add_adapter("default", ml.lora.AdapterSpec(2, 5.0))
    ml.lora.set_active(model, ["default"])
    randomise(model, 7)
    ours = logits(model)
    ml.lora.save_peft_adapter(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and list(cfg["rank_pattern"].values()) == [2]
    assert list(cfg["alpha_pattern"].values()) == [5.0]
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "ad").eval()
    assert (logits(loaded) - ours).abs().max() <= 1e-5
    fresh = tiny_llama()
    ml.lora.load_peft_adapter(fresh, tmp_path / "ad")
    assert (logits(fresh) - ours).abs().max() <= 1e-5


def test_regex_targets_save_as_exact_paths(tmp_path: Path) -> None:
    from peft import PeftModel

    model = tiny_llama()
    ml.lora.inject(model, rank=2, alpha=4, targets=r".*layers\.0\.self_attn\.(q|k)_proj")
    randomise(model, 3)
    ml.lora.save_peft_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["model.layers.0.self_attn.k_proj",
                                     "model.layers.0.self_attn.q_proj"]
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert (logits(loaded) - logits(model)).abs().max() <= 1e-5


def test_weighted_combination_matches_peft_cat(tmp_path: Path) -> None:
    pm = peft_adapter("llama", tmp_path / "a", seed=1)
    peft_adapter("llama", tmp_path / "b", seed=2)
    pm.load_adapter(tmp_path / "b", adapter_name="b")
    pm.add_weighted_adapter(["default", "b"], [0.7, -0.4], "mix", combination_type="cat")
    pm.set_adapter("mix")
    ref = logits(pm)

    model = tiny_llama()
    ml.lora.load_peft_adapter(model, tmp_path / "a", name="a")
    ml.lora.load_peft_adapter(model, tmp_path / "b", name="b")
    ml.lora.set_active(model, ["a", "b"], weights=[0.7, -0.4])
    assert (logits(model) - ref).abs().max() <= 1e-5
    ml.lora.merge(model)
    assert (logits(model) - ref).abs().max() <= 1e-5


def _write_adapter(folder: Path, tensors: dict[str, torch.Tensor], **cfg: object) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], **cfg}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def _factors(module: str, n_in: int = 32, n_out: int = 32, r: int = 2) -> dict[str, torch.Tensor]:
    key = f"base_model.model.{module}"
    return {f"{key}.lora_A.weight": torch.ones(r, n_in),
            f"{key}.lora_B.weight": torch.ones(n_out, r)}


def test_keys_matching_no_module_are_listed_and_nothing_changes(tmp_path: Path) -> None:
    tensors = {**_factors("model.layers.0.self_attn.q_proj"),
               **_factors("layers.0.self_attn.q_proj"),
               **_factors("model.layers.7.self_attn.q_proj")}
    folder = _write_adapter(tmp_path, tensors)
    model = tiny_llama()
    with pytest.raises(StateDictError) as err:
        ml.lora.load_peft_adapter(model, folder)
    msg = str(err.value)
    assert "2 adapter module(s) match no module" in msg
    assert "base_model.model.layers.0.self_attn.q_proj" in msg
    assert "base_model.model.model.layers.7.self_attn.q_proj" in msg
    assert "adapter_model.safetensors" in msg
    assert ml.lora.lora_layers(model) == {}


def test_shape_mismatch_names_module_and_both_shapes(tmp_path: Path) -> None:
    folder = _write_adapter(tmp_path, _factors("model.layers.0.self_attn.v_proj", n_out=32))
    with pytest.raises(StateDictError, match=r"'model\.layers\.0\.self_attn\.v_proj': lora_B "
                       r"expected shape \(16, 2\).*found \(32, 2\)"):
        ml.lora.load_peft_adapter(tiny_llama(), folder)


def test_other_keys_and_unsupported_configs_are_errors(tmp_path: Path) -> None:
    bad = {**_factors("model.layers.0.self_attn.q_proj"), "base_model.model.lm_head.weight":
           torch.zeros(64, 32)}
    with pytest.raises(StateDictError, match=r"1 other key\(s\): base_model.model.lm_head.weight"):
        ml.lora.load_peft_adapter(tiny_llama(), _write_adapter(tmp_path / "a", bad))
    ok = _factors("model.layers.0.self_attn.q_proj")
    with pytest.raises(UnsupportedError, match="use_dora"):
        ml.lora.load_peft_adapter(tiny_llama(), _write_adapter(tmp_path / "b", ok, use_dora=True))
    with pytest.raises(UnsupportedError, match="init_lora_weights='pissa', which also changes"):
        ml.lora.load_peft_adapter(tiny_llama(),
                                  _write_adapter(tmp_path / "p", ok, init_lora_weights="pissa"))
    with pytest.raises(UnsupportedError, match="expected peft_type 'LORA', found 'IA3'"):
        ml.lora.load_peft_adapter(tiny_llama(), _write_adapter(tmp_path / "c", ok, peft_type="IA3"))
    with pytest.raises(ml.MLMFError, match="adapter_config.json; not found"):
        ml.lora.load_peft_adapter(tiny_llama(), tmp_path / "nowhere")
