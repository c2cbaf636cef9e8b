"""The sides ``ml.compare`` accepts beyond files, dicts and modules (a checkpoint step, by folder
or record, verified against its manifest), and the architecture check between two sides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_tiny import causal_lm
from torch import nn

import mlmf_lab as ml
from mlmf_lab.cli import main
from mlmf_lab.errors import ChecksumError, FormatError

LABELS = ("a", "b")


def two_states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Names in sorted order, as a safetensors file lists them: the totals are sums in the
    reference's name order, so the same order gives the very same bits."""
    g = torch.Generator().manual_seed(11)
    a = {"0.bias": torch.randn(16, generator=g), "0.weight": torch.randn(16, 8, generator=g),
         "1.bias": torch.randn(4, generator=g), "1.weight": torch.randn(4, 16, generator=g)}
    b = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in a.items()}
    b["1.bias"] = a["1.bias"].clone()
    return a, b


@pytest.fixture
def steps(tmp_path: Path) -> tuple[ml.CheckpointManager, dict[str, torch.Tensor],
                                   dict[str, torch.Tensor]]:
    a, b = two_states()
    cm = ml.CheckpointManager(tmp_path / "run", keep_last=None, max_shard_size=600)
    cm.save(a, 10)  # 4 tensors over 600 bytes: shards and an index
    cm.save({k: v.clone() for k, v in b.items()}, 20, metrics={"val_loss": 0.5})
    return cm, a, b


def test_a_step_by_folder_or_record_compares_as_its_state_dict(steps) -> None:
    cm, a, b = steps
    assert (cm.get(10).path / "model.safetensors.index.json").is_file()
    want = ml.compare(a, b, labels=LABELS).as_dict()
    assert want["weights"]["counts"] == {"changed": 3, "same": 1}
    for x, y in [(cm.get(10).path, cm.get(20).path), (cm.get(10), cm.get("best")),
                 (str(cm.get(10).path), b), (a, cm.get(20))]:
        assert ml.compare(x, y, labels=LABELS).as_dict() == want  # the very same numbers
    c = ml.compare(cm.get(10), cm.get(20).path)
    assert (c.a, c.b) == (str(cm.root / "step-000010"), str(cm.root / "step-000020"))


def test_a_damaged_step_is_refused_before_any_number(steps) -> None:
    cm, a, _ = steps
    folder = cm.get(20).path
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # a bit of a tensor: the header still reads
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"does not match the manifest") as e:
        ml.compare(a, folder)
    assert e.value.path == str(shard)
    with pytest.raises(ChecksumError, match="does not match the manifest"):
        ml.compare(cm.get(20), a)
    shard.write_bytes(bytes(data[:100]))  # truncated: its header no longer reads
    with pytest.raises(ChecksumError, match=r"size 100 bytes, the manifest says"):
        ml.compare(folder, a)
    (cm.get(10).path / "meta.json").write_text("{")
    with pytest.raises(ChecksumError, match="meta.json.*sha256 does not match"):
        ml.compare(cm.root / "step-000010", a)


def test_a_folder_with_another_tools_manifest_is_a_plain_folder(tmp_path: Path) -> None:
    a, b = two_states()
    ml.save_state_dict(a, tmp_path / "model.safetensors")
    (tmp_path / "manifest.json").write_text(json.dumps({"files": ["model.safetensors"]}))
    assert ml.compare(tmp_path, b, labels=LABELS).as_dict() == \
        ml.compare(a, b, labels=LABELS).as_dict()
    step = tmp_path / "step-000001"  # named like a step: its manifest must be a checkpoint's
    step.mkdir()
    ml.save_state_dict(a, step / "model.safetensors")
    (step / "manifest.json").write_text("{}")
    with pytest.raises(FormatError, match="expected a 'mlmf-checkpoint-manifest' document"):
        ml.compare(step, b)


def test_the_cli_compares_a_step_folder(steps, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cm, a, b = steps
    ml.save_state_dict(b, tmp_path / "b.safetensors")
    assert main(["compare", str(cm.get(10).path), str(tmp_path / "b.safetensors"),
                 "--json", "--all"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want = ml.compare(a, b).as_dict()["weights"]
    assert doc["weights"]["tensors"] == want["tensors"] and doc["weights"]["total"] == \
        want["total"]
    (cm.get(10).path / "manifest.json").write_text("[]")
    assert main(["compare", str(cm.root / "step-000010"), str(tmp_path / "b.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "step-000010/manifest.json" in err and "mlmf-checkpoint-manifest" in err


def test_the_step_kind_is_known_to_any_import_of_compare() -> None:
    code = ("from mlmf_lab.compare.sources import KINDS\n"
            "print(list(KINDS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "['a checkpoint step (its folder or CheckpointRecord)']"


# -- architectures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    return causal_lm(tmp_path_factory.mktemp("llama"), "llama", tokenizer=False)


def test_a_subclass_compares_with_its_base(llama) -> None:
    import transformers

    class MyLlama(transformers.LlamaForCausalLM):
        """A user's subclass: another class name, the same architecture."""

    mine = MyLlama(llama.config).eval()
    mine.load_state_dict(llama.state_dict())
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(3))
    for x, y in [(llama, mine), (mine, llama)]:
        c = ml.compare(x, y, ids)
        assert c.weights.total.rel_change == 0.0 and c.outputs.kl_mean == 0.0

    class Head(nn.Sequential):
        """A plain subclass with one more tensor: compared on the shared ones."""

    base = nn.Sequential(nn.Linear(3, 3))
    more = Head(nn.Linear(3, 3), nn.Linear(3, 1))
    more[0].load_state_dict(base[0].state_dict())
    assert ml.compare(base, more).weights.counts() == {"same": 2, "only in b": 2}


def test_modules_of_one_model_type_or_of_agreeing_tensors_compare(llama) -> None:
    import transformers

    # other classes, one model type: the shared tensors (the backbone) are compared
    backbone = transformers.LlamaForSequenceClassification(llama.config).eval()
    assert ml.compare(llama, backbone).weights.counts()["only in a"] == 1  # lm_head

    def net() -> type[nn.Module]:
        class Net(nn.Module):  # defined again, as a notebook cell run twice does
            def __init__(self) -> None:
                super().__init__()
                self.fc = nn.Linear(2, 2)
        return Net

    assert net() is not net()
    assert ml.compare(net()(), net()()).weights.counts() == {"changed": 2}

    class Other(nn.Module):  # unrelated, and no model type: its tensors are a subset
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    assert ml.compare(net()(), Other()).weights.counts() == {"changed": 2}


def test_truly_different_architectures_are_refused(llama, tmp_path: Path) -> None:
    from hf_tiny import gpt2

    other = gpt2(tmp_path / "gpt2")
    with pytest.raises(ml.MLMFError, match=r"^different architectures: LlamaForCausalLM is "
                                           r"'llama', GPT2LMHeadModel is 'gpt2'; compare models "
                                           r"of the same architecture$"):
        ml.compare(llama, other)
    with pytest.raises(ml.MLMFError, match=r"^different architectures: Linear is class Linear, "
                                           r"Conv1d is class Conv1d \(neither derives from the "
                                           r"other, no common model_type\) and 'weight' is "
                                           r"\(3, 3\) in Linear and \(3, 3, 1\) in Conv1d"):
        ml.compare(nn.Linear(3, 3), nn.Conv1d(3, 3, 1))
    with pytest.raises(ml.MLMFError, match=r"and a has 2 tensors b lacks \('0.weight', \.\.\.\) "
                                           r"and b has 2 a lacks \('weight', \.\.\.\)"):
        ml.compare(nn.Sequential(nn.Linear(3, 3)), nn.Linear(3, 3), labels=LABELS)
