"""describe(), content hashes, tensor statistics and model cards."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.numpy import load_file as np_load_file
from torch import nn

import mlmf_lab as ml
from mlmf_lab import events
from mlmf_lab.errors import MLMFError
from mlmf_lab.formats import FORMATS
from mlmf_lab.provenance import hashing
from mlmf_lab.provenance.card import model_card, save_model_card
from mlmf_lab.provenance.lineage import Lineage, content_hash, file_tensor_hash, state_hash
from mlmf_lab.provenance.tensorstats import stats_of, tensor_stats


def reference_hash(path) -> str:
    """The documented tensor hash, computed independently from safetensors' numpy loader."""
    arrays = np_load_file(str(path))
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        dims = ",".join(map(str, a.shape))
        h.update(f"{name}\0{a.dtype.name}\0{dims}\0{a.nbytes}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed_tokens.weight  # tied


def test_file_hash_matches_the_documented_formula(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tensors = {"b": torch.randn(3, 5), "a": torch.randn(7).half(), "c": torch.arange(4)}
    path = tmp_path / "m.safetensors"
    ml.save_state_dict(tensors, path)
    expected = reference_hash(path)
    assert file_tensor_hash(path).sha256 == expected
    assert state_hash(tensors).sha256 == expected  # memory == file
    monkeypatch.setattr(hashing, "CHUNK", 7)  # chunk edges inside tensors change nothing
    assert file_tensor_hash(path).sha256 == expected
    tensors["a"][0] += 1
    assert state_hash(tensors).sha256 != expected


def test_hash_ignores_layout_but_not_content(tmp_path):
    torch.manual_seed(1)
    model = Net()
    ml.save_state_dict(model.state_dict(), tmp_path / "one.safetensors")
    ml.save_state_dict(model.state_dict(), tmp_path / "sharded", max_shard_size=300)
    torch.save({k: v.clone() for k, v in model.state_dict().items()
                if k != "head.weight"}, tmp_path / "model.bin")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    ref = reference_hash(tmp_path / "one.safetensors")
    assert state_hash(model.state_dict()).sha256 == ref  # the tied alias counted once
    assert content_hash(tmp_path / "sharded") == content_hash(tmp_path / "one.safetensors")
    assert content_hash(tmp_path / "model.bin").sha256 == ref
    (tmp_path / "notes.txt").write_bytes(b"abc")
    assert content_hash(tmp_path / "notes.txt") == (hashlib.sha256(b"abc").hexdigest(), "bytes")
    with pytest.raises(MLMFError, match="missing.safetensors"):
        content_hash(tmp_path / "missing.safetensors")


def test_describe_the_real_minilm_file():
    path = ml.examples.minilm_path()
    desc = ml.describe(path)
    config = json.loads((path.parent / "config.json").read_text())
    by_type: dict[str, int] = {}
    with safe_open(str(path), "np") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        for k in f.keys():
            a = f.get_tensor(k)
            by_type[a.dtype.name] = by_type.get(a.dtype.name, 0) + a.nbytes
    assert desc.architecture == "BertModel (bert)" and desc.architecture_source == "config.json"
    assert desc.num_parameters == sum(math.prod(s) for s in shapes.values())
    assert desc.num_tensors == len(shapes)
    assert desc.bytes_by_type == by_type and set(by_type) == {"float32", "int64"}
    assert desc.modalities == ("text",) and not desc.modalities_guessed
    assert desc.base_model == config["_name_or_path"]
    assert desc.content_hash == reference_hash(path)
    html = desc._repr_html_()
    assert "BertModel" in html and "22,713,728" in html


def test_modalities_declared_beat_guesses(tmp_path):
    names = {"vision_model.patch_embed.weight": torch.zeros(2, 2),
             "text_model.embed_tokens.weight": torch.zeros(3, 2)}
    ml.save_state_dict(names, tmp_path / "model.safetensors")
    guessed = ml.describe(tmp_path / "model.safetensors", hash=False)
    assert guessed.modalities == ("text", "vision") and guessed.modalities_guessed
    assert guessed.content_hash is None and guessed.architecture is None
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "clip", "text_config": {}, "vision_config": {}}))
    declared = ml.describe(tmp_path / "model.safetensors")
    assert declared.modalities == ("text", "vision") and not declared.modalities_guessed
    assert "config.json vision_config" in declared.modalities_source
    assert declared.architecture == "clip"
    (tmp_path / "solo").mkdir()  # no config.json beside: the file's own metadata declares
    audio = tmp_path / "solo" / "audio.safetensors"
    ml.save_state_dict(names, audio, metadata={"modalities": ["audio"]})
    assert ml.describe(audio).modalities == ("audio",)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(MLMFError, match="config.json: the JSON beside the weights is not valid"):
        ml.describe(tmp_path / "model.safetensors")


def test_describe_gguf_architecture(tmp_path):
    import gguf

    assert "gguf" in {f.name for f in FORMATS}  # a broken registration fails, never skips
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    desc = ml.describe(tmp_path / "m.gguf")
    assert desc.architecture == "llama" and "general.architecture" in desc.architecture_source
    assert desc.num_parameters == 32 and desc.format == "gguf"


def test_describe_a_live_model_and_its_saved_file_agree(tmp_path):
    torch.manual_seed(2)
    model = Net()
    live = ml.describe(model)
    ml.save_state_dict(model.state_dict(), tmp_path / "net.safetensors")
    saved = ml.describe(tmp_path / "net.safetensors")
    assert live.content_hash == saved.content_hash
    assert live.num_parameters == saved.num_parameters == 10 * 6 + 6 * 6 + 6
    assert live.architecture == "Net" and live.modalities_guessed
    with pytest.raises(MLMFError, match="path or an nn.Module"):
        ml.describe(torch.zeros(3))
    with pytest.raises(MLMFError, match="nope.safetensors"):
        ml.describe(tmp_path / "nope.safetensors")


def test_tensor_stats_against_torch(tmp_path, monkeypatch):
    import mlmf_lab.provenance.tensorstats as ts

    torch.manual_seed(3)
    t = torch.randn(33, 17)
    t[0, :5] = 0
    t[1, 1] = float("nan")
    monkeypatch.setattr(ts, "CHUNK_ELEMENTS", 50)
    s = stats_of("t", t)
    finite = t[torch.isfinite(t)].double()
    assert s.nonfinite == 1
    assert s.mean == pytest.approx(float(finite.mean()), rel=1e-9)
    assert s.std == pytest.approx(float(finite.std(unbiased=False)), rel=1e-9)
    assert (s.min, s.max) == (float(finite.min()), float(finite.max()))
    assert s.zero_fraction == pytest.approx(5 / t.numel())
    ml.save_state_dict({"a": t, "b": torch.ones(4)}, tmp_path / "s.safetensors")
    file_stats = tensor_stats(tmp_path / "s.safetensors")
    assert [x.name for x in file_stats] == ["a", "b"] and file_stats[1].std == 0.0
    desc = ml.describe(tmp_path / "s.safetensors", stats=True)
    assert desc.stats is not None and desc.stats[0].mean == pytest.approx(s.mean)
    assert "<td>" in desc._repr_html_()


def test_model_card_front_matter_read_by_huggingface_hub(tmp_path):
    desc = ml.describe(ml.examples.minilm_path(), hash=False)
    card = ModelCard(model_card(desc, license="apache-2.0"))
    assert card.data.base_model == "nreimers/MiniLM-L6-H384-uncased"
    assert card.data.license == "apache-2.0"
    assert "BertModel" in card.data.tags
    assert "| architecture | `BertModel (bert)" in card.text
    with pytest.raises(MLMFError, match="supported: adapter, merge, quantized, finetune"):
        model_card(desc, base_model_relation="distilled")


def test_model_card_relation_from_lineage(tmp_path):
    torch.manual_seed(4)
    ml.save_state_dict(Net().state_dict(), tmp_path / "base.safetensors")
    with Lineage(tmp_path / "lin.db") as lin:
        model = Net()
        ml.load_into(model, tmp_path / "base.safetensors")
        with events.activity("quantize", used=[model], params={"scheme": "int8"}) as act:
            act.generated.append(model)  # the event a quantizer emits
        ml.save_state_dict(model.state_dict(), tmp_path / "q.safetensors")
        ml.lora.inject(model, rank=2, alpha=2, targets=["proj"])
        ml.lora.merge(model)
        ml.lora.unload(model)
        ml.save_state_dict(model.state_dict(), tmp_path / "tuned.safetensors")
    q = save_model_card(ml.describe(tmp_path / "q.safetensors"), tmp_path, lineage=lin)
    card = ModelCard.load(q)
    assert card.data.base_model == "base.safetensors"
    assert card.data.base_model_relation == "quantized"
    assert "2. quantize(scheme=int8)" in card.text
    tuned_desc = ml.describe(tmp_path / "tuned.safetensors")
    tuned = ModelCard(model_card(tuned_desc, lineage=lin))
    assert tuned.data.base_model_relation == "finetune"
    explicit = ModelCard(model_card(tuned_desc, lineage=lin, base_model="org/base",
                                    base_model_relation="merge"))
    assert (explicit.data.base_model, explicit.data.base_model_relation) == ("org/base", "merge")


def test_tensor_stats_by_name(tmp_path):
    ml.save_state_dict({"a": torch.arange(6.0), "b": torch.ones(2)}, tmp_path / "s.safetensors")
    (only,) = tensor_stats(tmp_path / "s.safetensors", names=["a"])
    assert (only.name, only.mean, only.max) == ("a", 2.5, 5.0)
    with pytest.raises(MLMFError, match="s.safetensors.*no tensor named 'c'"):
        tensor_stats(tmp_path / "s.safetensors", names=["c"])
    model = nn.Linear(2, 3)
    assert [s.name for s in tensor_stats(model, names=["bias"])] == ["bias"]
    with pytest.raises(MLMFError, match="no tensor 'nope'"):
        tensor_stats(model, names=["nope"])


def test_adapter_folder_is_described_and_carded_as_an_adapter(tmp_path):
    torch.manual_seed(6)
    ml.save_state_dict(Net().state_dict(), tmp_path / "base.safetensors")
    with Lineage(tmp_path / "lin.db") as lin:
        model = Net()
        ml.load_into(model, tmp_path / "base.safetensors")
        ml.lora.inject(model, rank=2, alpha=4, targets=["proj"])
        folder = ml.lora.save_peft_adapter(model, tmp_path / "adapter")
    assert lin.entity(folder).kind == "adapter"
    assert [a.name for a in lin.history(folder).steps] == ["load", "lora-inject", "lora-save"]
    peft_cfg = json.loads((folder / "adapter_config.json").read_text())
    desc = ml.describe(folder)
    assert desc.is_adapter and desc.architecture == f"{peft_cfg['peft_type']} adapter"
    assert desc.num_parameters == 2 * 6 + 6 * 2  # lora_A (2, 6) and lora_B (6, 2)
    card = ModelCard(model_card(desc, lineage=lin))
    assert (card.data.base_model, card.data.base_model_relation) == ("base.safetensors",
                                                                     "adapter")
