"""What the Hub and PROV tools read from us: Hub ids, UTF-8 card YAML, PROV types as names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml
from huggingface_hub import ModelCard, metadata_load
from prov.identifier import QualifiedName
from prov.model import PROV

import mlmf_lab as ml
from mlmf_lab.provenance.card import hub_model_id, model_card, save_model_card
from mlmf_lab.provenance.lineage import Lineage, read_prov


class W(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(8, 8))


def _hub_cache(root: Path, repo: str = "org--tiny") -> Path:
    """``models--org--tiny`` as huggingface_hub lays it out: the snapshot file links to a blob."""
    folder = root / "hub" / f"models--{repo}"
    (folder / "blobs").mkdir(parents=True)
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    blob = folder / "blobs" / "e3b0c442"
    ml.save_state_dict({"w": torch.ones(8, 8)}, blob.with_suffix(".safetensors"))
    blob.with_suffix(".safetensors").rename(blob)
    snap = folder / "snapshots" / "0123abcd" / "model.safetensors"
    os.symlink(os.path.relpath(blob, snap.parent), snap)
    return snap


def test_card_names_the_hub_id_of_a_base_in_a_hub_cache(tmp_path: Path) -> None:
    snap = _hub_cache(tmp_path)
    with Lineage(tmp_path / "lin.db") as lin:
        model = W()
        ml.load_into(model, snap)
        ml.save_state_dict(model.state_dict(), tmp_path / "tuned.safetensors")
    card = ModelCard(model_card(ml.describe(tmp_path / "tuned.safetensors"), lineage=lin))
    assert card.data.base_model == "org/tiny"
    assert hub_model_id(snap) == hub_model_id(snap.resolve()) == "org/tiny"
    assert hub_model_id(tmp_path / "models--x--y" / "z") is None  # not under snapshots/blobs
    assert hub_model_id("/c/models--gpt2/snapshots/1/config.json") == "gpt2"
    assert hub_model_id("/c/models--a--b--c/snapshots/1/f") is None  # Hub names hold no --


def test_declared_base_path_in_a_hub_cache_becomes_its_id(tmp_path: Path) -> None:
    snap = _hub_cache(tmp_path, "sentence-transformers--all-MiniLM-L6-v2")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    ml.lora.inject(model, rank=2, alpha=4, targets=["0"])
    adapter = ml.lora.save_peft_adapter(model, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(snap.parent)  # a local snapshot, as PEFT records it
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    card = ModelCard(model_card(ml.describe(adapter)))
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_card_yaml_is_utf8_and_reads_back_equal(tmp_path: Path) -> None:
    ml.save_state_dict({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    desc = ml.describe(tmp_path / "m.safetensors")
    tags = ["🤗", "modèle", 'quote " and \\ backslash', "tab\tnewline\nend"]
    text = model_card(desc, tags=tags, license="apache-2.0")
    assert '- "🤗"' in text and "\\ud83e" not in text
    front = yaml.safe_load(text.split("---")[1])
    assert front["tags"][-4:] == tags
    path = save_model_card(desc, tmp_path / "README.md", tags=tags)
    assert "🤗".encode() in path.read_bytes()
    assert metadata_load(path)["tags"][-4:] == tags
    assert ModelCard.load(path).data.tags[-4:] == tags


def test_prov_types_are_qualified_names(tmp_path: Path) -> None:
    with Lineage(tmp_path / "lin.db") as lin:
        ml.save_state_dict({"w": torch.ones(2)}, tmp_path / "m.safetensors")
    out = lin.export_prov(tmp_path / "prov.json")
    raw = json.loads(out.read_text())
    agent = next(iter(raw["agent"].values()))
    assert agent["prov:type"] == {"$": "prov:SoftwareAgent", "type": "xsd:QName"}
    doc = read_prov(out)
    types = {t for r in doc.get_records() for t in r.get_asserted_types()}
    assert PROV["SoftwareAgent"] in types
    assert all(isinstance(t, QualifiedName) for t in types)
    assert {t.localpart for t in types} >= {"SoftwareAgent", "save", "state_dict", "weights"}
