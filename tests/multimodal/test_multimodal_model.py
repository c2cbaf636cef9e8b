"""Config round trip, cross-modal attention against the naive formula, fusion maths,
missing modalities, save/load (one file and per-modality parts)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import ConfigError, MLMFError, StateDictError
from mlmf_lab.multimodal import attention as att
from mlmf_lab.multimodal import fusion
from mlmf_lab.multimodal.config import (
    LATE_MODES,
    CrossModalAttentionConfig,
    FusionStrategy,
    Modality,
    ModalityConfig,
    MultiModalConfig,
)
from mlmf_lab.multimodal.io import load_multimodal, load_parts, save_multimodal, save_parts
from mlmf_lab.multimodal.model import MultiModalModel
from mlmf_lab.multimodal.preprocess.config import (
    AudioPreprocessing,
    ImagePreprocessing,
    TextPreprocessing,
    VideoPreprocessing,
)


def tiny_config(fusion_: str = "late", late_mode: str = "mean") -> MultiModalConfig:
    img = ImagePreprocessing(16, 8)
    return MultiModalConfig(
        (ModalityConfig("text", Modality.TEXT, "transformer", 16, 1, 2, 50, max_tokens=10,
                        preprocessing=TextPreprocessing(max_length=10)),
         ModalityConfig("image", Modality.IMAGE, "patch_transformer", 16, 1, 2,
                        preprocessing=img),
         ModalityConfig("audio", Modality.AUDIO, "mel_transformer", 16, 1, 2, 8,
                        preprocessing=AudioPreprocessing(n_mels=8)),
         ModalityConfig("video", Modality.VIDEO, "frame_temporal", 16, 1, 2,
                        preprocessing=VideoPreprocessing(clip_frames=3, image=img)),
         ModalityConfig("feats", Modality.CUSTOM, "linear", 16, 1, 2, 5)),
        fusion=fusion_, num_classes=4, attention=CrossModalAttentionConfig(16, 2),
        late_mode=late_mode, middle_layers=(0,), fusion_layers=1)


def tiny_inputs(b: int = 3, seed: int = 0) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    tmask = torch.ones(b, 6, dtype=torch.bool)
    tmask[0, 4:] = False
    amask = torch.ones(b, 7, dtype=torch.bool)
    amask[1, 5:] = False
    return {
        "text": (torch.randint(0, 50, (b, 6), generator=g), tmask),
        "image": torch.randn(b, 4, 192, generator=g),
        "audio": (torch.randn(b, 8, 7, generator=g), amask),
        "video": (torch.randn(b, 3, 4, 192, generator=g), torch.ones(b, 3, dtype=torch.bool)),
        "feats": torch.randn(b, 2, 5, generator=g),
    }


STRATEGIES = [("early", "mean"), ("middle", "mean"), ("late", "mean"), ("late", "weighted"),
              ("late", "gate"), ("attention", "mean")]

# ---------------------------------------------------------------- config


def test_config_json_round_trip() -> None:
    cfg = tiny_config("middle")
    back = MultiModalConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.modality("video").preprocessing.image == ImagePreprocessing(16, 8)
    assert back.fusion is FusionStrategy.MIDDLE


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown fusion strategy 'fancy'; supported: 'early'"):
        MultiModalConfig(tiny_config().modalities, fusion="fancy")
    with pytest.raises(ConfigError, match="unknown image encoder 'cnn'; supported: patch_"):
        ModalityConfig("im", "image", "cnn", preprocessing=ImagePreprocessing(16, 8))
    with pytest.raises(ConfigError, match="unknown late fusion mode 'max'"):
        MultiModalConfig(tiny_config().modalities, late_mode="max")
    with pytest.raises(ConfigError, match=r"middle_layers \[3\] must name layers 0..0"):
        MultiModalConfig(tiny_config().modalities, fusion="middle", middle_layers=(3,))
    with pytest.raises(ConfigError, match="names must be unique"):
        m = tiny_config().modalities[0]
        MultiModalConfig((m, m))
    with pytest.raises(ConfigError, match="not divisible by heads"):
        CrossModalAttentionConfig(10, 3)
    with pytest.raises(ConfigError, match="vocabulary size"):
        ModalityConfig("t", "text", "transformer")
    with pytest.raises(ConfigError, match="not valid JSON"):
        MultiModalConfig.from_json("{")
    with pytest.raises(ConfigError, match="unknown config fields"):
        MultiModalConfig.from_json('{"modalities": [], "colour": 1}')


# ---------------------------------------------------------------- attention


def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QKᵀ/√d)V with an explicit loop over batch and heads."""
    b, h, nq, d = q.shape
    out = torch.zeros_like(q)
    w = torch.zeros(b, h, nq, k.shape[2])
    for i in range(b):
        keep = torch.ones(k.shape[2], dtype=torch.bool) if mask is None else mask[i]
        for j in range(h):
            s = q[i, j] @ k[i, j, keep].T / math.sqrt(d)
            p = torch.exp(s - s.max(-1, keepdim=True).values)
            p = p / p.sum(-1, keepdim=True)
            w[i, j][:, keep] = p
            out[i, j] = p @ v[i, j, keep]
    return out, w


def test_attend_matches_naive_formula_with_masks() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 4, 8, generator=g) for _ in range(3))
    k, v = torch.randn(3, 2, 6, 8, generator=g), torch.randn(3, 2, 6, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 1]]).bool()
    for m in (None, mask):
        ref_out, ref_w = naive(q, k, v, m)
        assert torch.allclose(att.attend(q, k, v, m), ref_out, atol=1e-5)
        assert torch.allclose(att.attention_weights(q, k, m), ref_w, atol=1e-6)


def test_module_matches_naive_and_ignores_masked_keys() -> None:
    torch.manual_seed(0)
    mod = att.CrossModalAttention(CrossModalAttentionConfig(8, 2), context_dim=6).eval()
    x, ctx = torch.randn(2, 3, 8), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    out, w = mod(x, ctx, mask, output_attentions=True)
    q = att.split_heads(mod.q(x), 2)
    k, v = att.split_heads(mod.k(ctx), 2), att.split_heads(mod.v(ctx), 2)
    ref_out, ref_w = naive(q, k, v, mask)
    assert torch.allclose(out, mod.out(att.merge_heads(ref_out)), atol=1e-5)
    assert w is not None and w.shape == (2, 2, 3, 5) and torch.allclose(w, ref_w, atol=1e-6)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 3))
    ctx2 = ctx.clone()
    ctx2[0, 3:] = 100.0  # masked keys: changing them changes nothing
    assert torch.allclose(mod(x, ctx2, mask)[0], out, atol=1e-6)


def test_all_masked_context_gives_zero_not_nan() -> None:
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    out = att.attend(q, k, v, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros_like(out))


def naive_pool(w: torch.Tensor, qmask: torch.Tensor | None) -> torch.Tensor:
    """Per sample: the mean over heads and real query tokens, scaled to sum to 1."""
    b, _, nq, nk = w.shape
    out = torch.zeros(b, nk)
    for i in range(b):
        rows = [w[i, :, j].mean(0) for j in range(nq) if qmask is None or qmask[i, j]]
        if rows and float(sum(rows).sum()) > 0:
            acc = sum(rows) / len(rows)
            out[i] = acc / acc.sum()
    return out


def test_pool_attention_matches_a_loop_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(3, 2, 4, 8, generator=g), torch.randn(3, 2, 5, 8, generator=g)
    kmask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 1], [0, 0, 0, 0, 0]]).bool()
    w = att.attention_weights(q, k, kmask)  # sample 2 has no key: all its weights are 0
    qmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    for m in (None, qmask):
        assert torch.allclose(att.pool_attention(w, m), naive_pool(w, m), atol=1e-6)
    got = att.pool_attention(w, qmask)
    assert torch.allclose(got[:2].sum(-1), torch.ones(2)) and torch.equal(got[2], torch.zeros(5))
    assert (got[1, 2:4] == 0).all()  # masked keys get nothing
    padded = w.clone()
    padded[1, :, 2:] = 7.0  # what padding queries hold changes nothing
    assert torch.equal(att.pool_attention(padded, qmask), got)
    assert torch.equal(att.pool_attention(w, torch.zeros(3, 4, dtype=torch.bool)),
                       torch.zeros(3, 5))


# ---------------------------------------------------------------- fusion maths


def test_fusion_functions() -> None:
    vec = torch.tensor([[[1.0, 0], [0, 1], [4, 4]]])  # (1, 3, 2)
    present = torch.tensor([[True, True, False]])
    assert torch.equal(fusion.fuse_mean(vec, present), torch.tensor([[0.5, 0.5]]))
    fused, w = fusion.fuse_weighted(vec, present, torch.tensor([0.0, math.log(3), 5.0]))
    assert torch.allclose(w, torch.tensor([[0.25, 0.75, 0.0]]))
    assert torch.allclose(fused, torch.tensor([[0.25, 0.75]]))
    fused, w = fusion.fuse_gate(vec, present, torch.tensor([[0.2, 0.6, 0.9]]))
    assert torch.allclose(w, torch.tensor([[0.25, 0.75, 0.0]]))
    fused, w = fusion.fuse_attention(vec, present, torch.tensor([[2.0, 2.0, 9.0]]))
    assert torch.allclose(w, torch.tensor([[0.5, 0.5, 0.0]]))
    none = torch.zeros(1, 3, dtype=torch.bool)
    assert torch.equal(fusion.fuse_attention(vec, none, torch.zeros(1, 3))[0], torch.zeros(1, 2))


# ---------------------------------------------------------------- model


@pytest.mark.parametrize(("strategy", "mode"), STRATEGIES)
def test_every_strategy_runs_and_missing_modality_is_masked(strategy: str, mode: str) -> None:
    torch.manual_seed(0)
    model = MultiModalModel(tiny_config(strategy, mode)).eval()
    inputs = tiny_inputs()
    out = model(inputs, output_attentions=True)
    assert out.logits.shape == (3, 4) and torch.isfinite(out.logits).all()
    assert torch.equal(out.logits, model(inputs).logits)  # asking for maps changes nothing
    assert out.present.all()
    if strategy in ("late", "attention"):
        assert out.modality_weights is not None
        assert torch.allclose(out.modality_weights.sum(-1), torch.ones(3))
    if strategy == "middle":
        assert {k for k in out.attentions if k.startswith("fusion.")} == {
            "fusion.text", "fusion.image", "fusion.audio", "fusion.video", "fusion.feats"}
        img = out.attentions["fusion.text"].span("image")
        assert img.shape == (3, 1, 2, 6, 4) and img.grid == (2, 2) and img.patch_offset == 0
    # audio left out of the dict == audio fully masked for that sample
    without = {k: v for k, v in inputs.items() if k != "audio"}
    out_without = model(without)
    mel, amask = inputs["audio"]  # type: ignore[misc]
    amask = amask.clone()
    amask[2] = False
    out_masked = model({**inputs, "audio": (mel, amask)})
    assert torch.allclose(out_masked.logits[2], out_without.logits[2], atol=1e-5)
    assert not out_masked.present[2, 2] and out_masked.present[1, 2]
    assert not torch.allclose(out_masked.logits[1], out_without.logits[1], atol=1e-4)
    if out_without.modality_weights is not None:
        assert (out_without.modality_weights[:, 2] == 0).all()
    only_text = model({"text": inputs["text"]})  # a single modality still works
    assert torch.isfinite(only_text.logits).all()


def test_fusions_registry_builds_every_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(fusion.FUSIONS) == list(FusionStrategy)  # each strategy is implemented
    assert tuple(fusion.LATE_FUSIONS) == LATE_MODES  # and each late mode the config accepts
    built = {(s, m): type(MultiModalModel(tiny_config(s, m)).fusion).__name__
             for s, m in STRATEGIES}
    assert built == {("early", "mean"): "EarlyFusion", ("middle", "mean"): "MiddleFusion",
                     ("late", "mean"): "MeanFusion", ("late", "weighted"): "WeightedFusion",
                     ("late", "gate"): "GateFusion", ("attention", "mean"): "AttentionFusion"}
    monkeypatch.delitem(fusion.FUSIONS, FusionStrategy.ATTENTION)
    with pytest.raises(ConfigError, match="unknown fusion strategy 'attention'; supported: "
                                          "early, middle, late$"):
        MultiModalModel(tiny_config("attention"))
    monkeypatch.delitem(fusion.LATE_FUSIONS, "gate")
    with pytest.raises(ConfigError, match="unknown late fusion mode 'gate'; supported: "
                                          "mean, weighted$"):
        MultiModalModel(tiny_config("late", "gate"))


def test_model_input_errors() -> None:
    model = MultiModalModel(tiny_config())
    with pytest.raises(MLMFError, match="unknown inputs \\['speech'\\]; this model reads: text"):
        model({"speech": torch.zeros(1, 3)})
    with pytest.raises(MLMFError, match="no input given"):
        model({})
    with pytest.raises(MLMFError, match="disagree on the batch size"):
        model({"image": torch.zeros(2, 4, 192), "feats": torch.zeros(3, 2, 5)})
    with pytest.raises(MLMFError, match=r"expected patches \(B, 4, 192\), found \(2, 9, 192\)"):
        model({"image": torch.zeros(2, 9, 192)})
    with pytest.raises(MLMFError, match=r"token ids must be in \[0, 50\)"):
        model({"text": torch.tensor([[3, 99]])})


def test_model_reads_preprocessing_batches() -> None:
    import numpy as np

    from mlmf_lab.multimodal.preprocess import build_word_tokenizer, preprocess_images, tokenize

    model = MultiModalModel(tiny_config("early")).eval()
    tok = build_word_tokenizer(["a", "red", "dot"])
    text = tokenize(["a red dot", "red"], tok, TextPreprocessing(max_length=10))
    imgs = preprocess_images([np.zeros((20, 30, 3), np.uint8)] * 2, ImagePreprocessing(16, 8))
    assert model({"text": text, "image": imgs}).logits.shape == (2, 4)


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize(("strategy", "mode"), [("middle", "mean"), ("late", "gate")])
def test_save_load_round_trip(tmp_path: Path, strategy: str, mode: str) -> None:
    torch.manual_seed(1)
    model = MultiModalModel(tiny_config(strategy, mode)).eval()
    path = save_multimodal(model, tmp_path / "mm.safetensors")
    with ml.open_weights(path) as wf:
        assert MultiModalConfig.from_json(wf.metadata["mlmf.multimodal.config"]) == model.config
    back = load_multimodal(path)
    assert back.config == model.config
    inputs = tiny_inputs()
    assert torch.equal(back(inputs).logits, model(inputs).logits)


def test_save_load_parts(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = MultiModalModel(tiny_config("attention")).eval()
    parts = save_parts(model, tmp_path / "parts")
    assert set(parts) == {"text", "image", "audio", "video", "feats", "fusion"}
    with ml.open_weights(parts["image"]) as wf:
        assert "patch_embed.weight" in wf  # keys relative to the encoder
    back = load_parts(parts)
    inputs = tiny_inputs()
    assert torch.equal(back(inputs).logits, model(inputs).logits)
    # swap in another image encoder trained elsewhere: only the image branch changes
    torch.manual_seed(3)
    other = MultiModalModel(tiny_config("attention"))
    ml.save_state_dict({k.removeprefix("encoders.image."): v.detach()
                        for k, v in other.state_dict().items()
                        if k.startswith("encoders.image.")}, tmp_path / "img2.safetensors")
    mixed = load_parts({**parts, "image": tmp_path / "img2.safetensors"})
    assert torch.equal(mixed.encoders["image"].patch_embed.weight,
                       other.encoders["image"].patch_embed.weight)
    assert torch.equal(mixed.head[1].weight, model.head[1].weight)
    missing = {k: v for k, v in parts.items() if k != "audio"}
    with pytest.raises(StateDictError, match="missing from the file: encoders.audio"):
        load_parts(missing)
    with pytest.raises(MLMFError, match="unknown part 'speech'"):
        load_parts({**parts, "speech": parts["audio"]})


def test_load_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    ml.save_state_dict({"w": torch.zeros(2)}, plain)
    with pytest.raises(MLMFError, match="plain.safetensors.*mlmf.multimodal.config"):
        load_multimodal(plain)
    bad = tmp_path / "bad.safetensors"
    ml.save_state_dict({"w": torch.zeros(2)}, bad,
                       metadata={"mlmf.multimodal.config": '{"modalities": [], "fusion": "x"}'})
    with pytest.raises(MLMFError, match="bad.safetensors.*stored multi-modal config is invalid"):
        load_multimodal(bad)
    wrong = tmp_path / "wrong.safetensors"
    ml.save_state_dict({"w": torch.zeros(2)}, wrong,
                       metadata={"mlmf.multimodal.config": tiny_config().to_json()})
    with pytest.raises(StateDictError, match="wrong.safetensors"):
        load_multimodal(wrong)
