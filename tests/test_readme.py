"""README's "Python in one screen" runs unchanged, on a tiny Llama made on the spot."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import transformers
from hf_tiny import causal_lm

import mlmf_lab as ml

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_in_one_screen_runs_unchanged(tmp_path, monkeypatch) -> None:
    block = re.search(r"## Python in one screen\n\n```python\n(.*?)```",
                      README.read_text(encoding="utf-8"), re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)
    ref = causal_lm(tmp_path / "hf_llama")
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    ml.save_state_dict(state, "model.safetensors")
    ml.convert("hf_llama/", "model.gguf")

    def my_model() -> torch.nn.Module:
        return transformers.LlamaForCausalLM(ref.config)

    ids = torch.randint(0, ref.config.vocab_size, (2, 8))
    scope = {"torch": torch, "state": state, "MyModel": my_model, "tuned": ref, "ids": ids}
    exec(compile(block.group(1), "README.md", "exec"), scope)  # noqa: S102
    # the model the README filled on the meta device runs, with its rotary frequencies computed
    inv = dict(scope["model"].named_buffers())["model.rotary_emb.inv_freq"]
    assert torch.equal(inv, dict(ref.named_buffers())["model.rotary_emb.inv_freq"])
    assert scope["c"].as_dict() and (tmp_path / "adapter" / "adapter_config.json").is_file()
