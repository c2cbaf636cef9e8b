"""Small valid files of every kind a reader takes: where each fuzz case starts.

``build_seeds(root)`` writes ``root/<target>/<variant>/...`` with the library's own writers
(and torch's, and a lineage store recording real operations). The fuzz driver runs it in a
forked child, so the driver itself never runs a torch operation before it forks (forking a
process with live OpenMP threads can hang the children). Tensors are tiny: a case must open,
read and fail in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import torch
from torch import nn

import mlmf_lab as ml

from .gguf_bytes import STRING, gguf_bytes, info, k_blocks, kv, s

GGUF_QUANTS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k")  # what our writer takes
HAND_K = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")  # K blocks built by hand (gguf_bytes)


class Tiny(nn.Module):
    """The model adapters and checkpoints are loaded into (PEFT's module names)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 8) -> (B, 2)
        return self.out(self.v_proj(torch.relu(self.q_proj(x))))


def training_parts(model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer and scheduler a checkpoint case saves and loads."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2)


def _state(g: torch.Generator) -> dict[str, torch.Tensor]:
    emb = torch.randn(4, 32, generator=g)
    return {"emb.weight": emb, "head.weight": emb,  # tied: stored once, listed in mlmf.tied
            "proj.weight": torch.randn(6, 32, generator=g).bfloat16(),
            "norm.weight": torch.randn(32, generator=g).half(),
            "steps": torch.arange(5), "mask": torch.tensor([True, False]),
            "scale": torch.tensor(2.0), "empty": torch.zeros(0, 3)}


def build_seeds(root: Path) -> None:
    """Write every seed below ``root`` (one folder per target, one per variant inside)."""
    g = torch.Generator().manual_seed(0)
    state = _state(g)
    meta = {"step": 3, "config": {"layers": [1, 2]}, "note": "seed"}
    _safetensors(root / "safetensors", state, meta, g)
    for variant, quant in (("plain", None), ("int8", "int8")):
        folder = root / "sharded" / variant / "model"
        ml.save_state_dict({k: v.float() if quant else v for k, v in state.items()
                            if v.is_floating_point() or not quant},
                           folder, metadata=meta, max_shard_size=400, quant=quant)
    gguf_state = {"tok_embd.weight": torch.randn(2, 256, generator=g),
                  "blk.0.attn_norm.weight": torch.randn(256, generator=g),
                  "blk.0.ffn_up.weight": torch.randn(2, 256, generator=g).half(),
                  "blk.0.ffn_down.weight": torch.randn(2, 256, generator=g).bfloat16(),
                  "positions": torch.arange(8, dtype=torch.int32), "odd": torch.randn(3, 5)}
    for quant in (None, *GGUF_QUANTS):
        (root / "gguf" / str(quant)).mkdir(parents=True)
        ml.save_state_dict(gguf_state, root / "gguf" / str(quant) / "x.gguf", metadata=meta,
                           quant=quant)
    _k_blocks(root / "gguf" / "k" / "x.gguf", g)
    small = {"a": torch.randn(3, 4, generator=g), "b": torch.arange(6), "c": torch.ones(2).half()}
    for variant, obj, zipped in (("zip", small, True), ("legacy", small, False),
                                 ("wrapped", {"state_dict": small, "epoch": 1}, True)):
        (root / "bin" / variant).mkdir(parents=True)
        torch.save(obj, root / "bin" / variant / "x.bin", _use_new_zipfile_serialization=zipped)
    _peft(root / "peft")
    _checkpoint(root / "checkpoint" / "plain" / "run")
    _lineage(root / "lineage" / "plain", small)
    (root / "dcp" / "plain").mkdir(parents=True)
    ml.save_state_dict(small, root / "dcp" / "plain" / "x.dcp", metadata=meta)


def _safetensors(folder: Path, state: dict[str, torch.Tensor], meta: dict[str, object],
                 g: torch.Generator) -> None:
    floats = {"w": torch.randn(4, 64, generator=g), "b": torch.randn(4, generator=g)}
    for variant, tensors, quant in (("plain", state, None), ("int8", floats, "int8"),
                                    ("int4", floats, "int4")):
        (folder / variant).mkdir(parents=True)
        ml.save_state_dict(tensors, folder / variant / "x.safetensors", metadata=meta,
                           quant=quant)


def _k_blocks(path: Path, g: torch.Generator) -> None:
    """Every K type, two rows of one block each, random codes (the writer makes only some)."""
    path.parent.mkdir(parents=True)
    infos, data = [], b""
    for name in HAND_K:
        qtype = gguf.GGMLQuantizationType[name]
        blocks = k_blocks(qtype, 2, g).tobytes()
        infos.append(info(name.lower(), (256, 2), int(qtype), len(data)))
        data += blocks + b"\0" * (-len(blocks) % 32)
    path.write_bytes(gguf_bytes([kv("general.architecture", STRING, s("llama"))], infos, data))


def _peft(folder: Path) -> None:
    model = Tiny()
    ml.lora.inject(model, rank=2, alpha=4, targets=["q_proj", "v_proj"])
    ml.lora.save_peft_adapter(model, folder / "plain" / "adapter")
    ml.lora.save_peft_adapter(model, folder / "patterns" / "adapter")
    config = folder / "patterns" / "adapter" / "adapter_config.json"
    doc = json.loads(config.read_text())  # per-module values: patterns the loader compiles
    doc.update(rank_pattern={"v_proj": 2}, alpha_pattern={r".*q_\w+": 4, "v_proj": 8})
    config.write_text(json.dumps(doc))


def _checkpoint(root: Path) -> None:
    model = Tiny()
    opt, sched = training_parts(model)
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    sched.step()
    cm = ml.CheckpointManager(root, keep_last=None)
    cm.save(model, 1, optimizer=opt, scheduler=sched, metrics={"val_loss": 0.5},
            extra={"epoch": 1, "data": [1, 2]})


def _lineage(folder: Path, small: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True)
    with ml.Lineage(folder / "lineage.db"):
        ml.save_state_dict(small, folder / "a.safetensors")
        sd = ml.load_state_dict(folder / "a.safetensors")
        ml.save_state_dict({k: v * 2 for k, v in sd.items()}, folder / "b.safetensors",
                           metadata={"derived": True})
    for name in ("a.safetensors", "b.safetensors"):
        (folder / name).unlink()  # the store alone is the case
