"""LoRA: forward latency of an unmerged adapter against PEFT's (goal <= 1.0x), merge/unmerge time.

The same random Llama (built from a config) gets the same adapter twice: through
``peft.get_peft_model`` (factors randomised, saved) and through ``ml.lora.load_peft_adapter``
of that folder, so both compute the same function (checked). Forward passes of the base,
PEFT and mlmf_lab models are interleaved round by round; times are medians, and the ratio
is the median of the per-round ratios (each pair timed side by side), which stays stable
when other processes load the machine. Merge/unmerge: PEFT's ``merge_adapter`` /
``unmerge_adapter`` against ``ml.lora.merge`` / ``unmerge``, plus the drift of the base
weights after 5 cycles and the memory each approach holds while merged.

    python benchmarks/bench_lora.py [--quick]
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, publish, table  # noqa: E402

import mlmf_lab as ml  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_base(hidden: int, layers: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 2),
                      num_key_value_heads=max(hidden // 64, 2), max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def pair(hidden: int, layers: int, rank: int, folder: Path) -> tuple[nn.Module, nn.Module]:
    """(PEFT model, mlmf_lab model) carrying the same non-zero adapter."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(make_base(hidden, layers),
                        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    pm.eval().save_pretrained(folder)
    ours = make_base(hidden, layers)
    ml.lora.load_peft_adapter(ours, folder)
    return pm, ours


def forward_rows(pm: nn.Module, ours: nn.Module, shapes: list[tuple[int, int]],
                 calls: int, rounds: int) -> list[list[str]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = copy.deepcopy(pm).unload()  # the same base weights without the adapter: the floor
    with torch.no_grad():
        for m in base.modules():
            assert not isinstance(m, BaseTunerLayer)
    rows = []
    for batch, seq in shapes:
        ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            diff = (pm(ids).logits - ours(ids).logits).abs().max().item()
            assert diff < 1e-4, f"models disagree by {diff}"
            assert (base(ids).logits - pm(ids).logits).abs().max() > 1e-4, "adapter is a no-op"
            t = interleaved({"base": lambda x=ids: base(x), "peft": lambda x=ids: pm(x),
                             "ours": lambda x=ids: ours(x)}, calls, rounds)
        med = {k: statistics.median(v) for k, v in t.items()}
        # the ratio of the two timings taken side by side in each round, then its median:
        # robust to the load of other processes drifting during the run
        ratio = statistics.median(o / p for o, p in zip(t["ours"], t["peft"], strict=True))
        rows.append([f"{batch}×{seq} tokens", f"{med['base'] * 1e3:.2f}",
                     f"{med['peft'] * 1e3:.2f}", f"{med['ours'] * 1e3:.2f}", f"{ratio:.2f}x",
                     "yes" if ratio <= 1.0 else "**no**", f"{diff:.1e}"])
    return rows


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer", "").removeprefix("base_model.model."): v.clone()
            for k, v in model.state_dict().items() if "lora_" not in k}


def drift(model: nn.Module, before: dict[str, torch.Tensor]) -> float:
    now = base_weights(model)
    return max((now[k] - v).abs().max().item() for k, v in before.items())


def merge_rows(pm: nn.Module, ours: nn.Module, repeat: int) -> list[list[str]]:
    def cycle_times(merge: Callable[[], object],
                    unmerge: Callable[[], object]) -> tuple[float, float]:
        m, u = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            merge()
            t1 = time.perf_counter()
            unmerge()
            u.append(time.perf_counter() - t1)
            m.append(t1 - t0)
        return statistics.median(m), statistics.median(u)

    targeted = sum(layer.base_layer.weight.numel() * layer.base_layer.weight.element_size()
                   for layer in ml.lora.lora_layers(ours).values())
    rows = []
    for name, model, merge, unmerge, held in [
        ("PEFT merge_adapter / unmerge_adapter", pm, pm.merge_adapter, pm.unmerge_adapter, 0),
        ("ml.lora.merge (safe=True, default) / unmerge", ours, lambda: ml.lora.merge(ours),
         lambda: ml.lora.unmerge(ours), targeted),
        ("ml.lora.merge(safe=False) / unmerge", ours, lambda: ml.lora.merge(ours, safe=False),
         lambda: ml.lora.unmerge(ours), targeted),
    ]:
        before = base_weights(model)
        for _ in range(5):
            merge()
            unmerge()
        err = drift(model, before)
        m, u = cycle_times(merge, unmerge)
        rows.append([name, f"{m * 1e3:.1f}", f"{u * 1e3:.1f}", f"{err:.1e}",
                     ml.units.human_bytes(held)])
    return rows


def main(quick: bool) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    if quick:
        hidden, layers, rank, shapes, calls, rounds, repeat = 64, 2, 8, [(1, 8)], 3, 3, 3
    else:
        hidden, layers, rank = 512, 4, 16
        shapes, calls, rounds, repeat = [(1, 8), (1, 128), (4, 128)], 3, 31, 7
    with tempfile.TemporaryDirectory() as tmp:
        pm, ours = pair(hidden, layers, rank, Path(tmp))
        fwd = forward_rows(pm, ours, shapes, calls, rounds)
        mrg = merge_rows(pm, ours, repeat)
    n_params = sum(p.numel() for p in make_base(hidden, layers).parameters())
    body = (
        table(["input", "base ms", "PEFT unmerged ms", "mlmf_lab unmerged ms",
               "mlmf_lab / PEFT (median of paired ratios)", "<= 1.0x", "max |Δlogits|"], fwd)
        + "\n\n"
        + table(["merge path", "merge ms", "unmerge ms", "max |W - W₀| after 5 cycles",
                 "extra memory while merged"], mrg)
    )
    how = (f"Llama from config: hidden {hidden}, {layers} layers, {n_params / 1e6:.1f} M "
           f"parameters; LoRA r={rank} on {', '.join(TARGETS)} ({len(ml.lora.lora_layers(ours))} "
           f"modules), float32, one thread, `torch.no_grad`. Forward: median over {rounds} "
           f"interleaved rounds of {calls} calls. Merge/unmerge: median of {repeat} cycles. "
           "mlmf_lab keeps the original weight objects while merged (exact unmerge); PEFT "
           "subtracts ΔW again (its merge_adapter default is safe_merge=False).")
    publish("lora", "LoRA: unmerged forward vs PEFT, merge/unmerge", how, body, quick)


if __name__ == "__main__":
    main("--quick" in sys.argv[1:])
