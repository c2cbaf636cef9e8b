"""Filling meta-device models copy-free, and the real MiniLM against transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import mlmf_lab as ml
from mlmf_lab.errors import StateDictError
from mlmf_lab.models import MiniLM


class Tiny(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, d)
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, 20, bias=False)
        self.head.weight = self.embed.weight  # tied

    def tie_weights(self) -> None:
        self.head.weight = self.embed.weight


def test_meta_model_is_filled_from_the_memory_map(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = Tiny()
    path = tmp_path / "tiny.safetensors"
    ml.save_state_dict(ref.state_dict(), path)
    with torch.device("meta"):
        model = Tiny()
    report = ml.load_into(model, path)
    assert report.ok
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.head.weight is model.embed.weight
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(model.head(model.proj(model.embed(x))), ref.head(ref.proj(ref.embed(x))))
    view = ml.open_weights(path).tensor("proj.weight")  # same file, same mapped bytes
    assert torch.equal(model.proj.weight.detach(), view)


def test_key_report_and_strict_error(tmp_path: Path) -> None:
    sd = Tiny().state_dict()
    sd["extra.bias"] = torch.ones(3)
    sd["proj.weight"] = torch.ones(4, 4)
    del sd["proj.bias"]
    path = tmp_path / "bad.safetensors"
    ml.save_state_dict(sd, path)
    with pytest.raises(StateDictError) as info:
        ml.load_into(Tiny(), path)
    msg = str(info.value)
    assert str(path) in msg and "missing from the file: proj.bias" in msg
    assert "not in the model: extra.bias" in msg
    assert "proj.weight: model expects [8, 8], file has [4, 4]" in msg
    report = ml.load_into(Tiny(), path, strict=False)
    assert report.missing == ["proj.bias"] and report.unexpected == ["extra.bias"]


def test_minilm_matches_transformers() -> None:
    from transformers import BertModel

    folder = ml.examples.minilm_dir()
    ours = MiniLM.from_pretrained(folder)
    ref = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    batch = ours.tokenize(["weights are files", "a longer sentence about memory maps and models"])
    with torch.no_grad():
        states, maps = ours(batch["input_ids"], batch["attention_mask"], output_attentions=True)
        out = ref(**batch, output_attentions=True)
    mask = batch["attention_mask"].bool()
    assert (states - out.last_hidden_state)[mask].abs().max() < 1e-4
    assert len(maps) == 6 and (maps[2] - out.attentions[2]).abs().max() < 1e-5
    emb = ours.encode(["a cat sits", "a kitten sits", "interest rates rose"])
    sims = emb @ emb.T
    assert sims[0, 1] > 0.5 > sims[0, 2]


def test_meta_model_gets_the_buffers_no_file_holds(tmp_path: Path) -> None:
    """transformers' rotary inv_freq is computed at construction, never saved: load_into
    computes it as from_pretrained does, so the meta-built model gives the same logits."""
    import transformers
    from hf_tiny import causal_lm

    ref = causal_lm(tmp_path / "llama", tokenizer=False)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(ref.config).eval()
    ml.load_into(model, tmp_path / "llama")
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_a_buffer_nothing_can_compute_is_named(tmp_path: Path) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.register_buffer("table", torch.arange(4.0), persistent=False)

    ml.save_state_dict(Scaled().state_dict(), tmp_path / "s.safetensors")
    with torch.device("meta"):
        model = Scaled()
    with pytest.raises(ml.errors.StateDictError, match=r"buffers \['table'\] are on the meta "
                       r"device and in no file; build the model with only its parameters"):
        ml.load_into(model, tmp_path / "s.safetensors")
