"""One attention-map record (``AttentionMaps``) from every encoder and every fusion that
computes attention, under one keyword (``output_attentions``): what each record holds,
checked against the attention recomputed by hand; its labels, spans and grid; the view."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_multimodal_model import tiny_config, tiny_inputs

from mlmf_lab.errors import MLMFError
from mlmf_lab.multimodal import attention as att
from mlmf_lab.multimodal.config import (
    CrossModalAttentionConfig,
    Modality,
    ModalityConfig,
    MultiModalConfig,
)
from mlmf_lab.multimodal.maps import AttentionMaps, KeySpan, TokenInfo
from mlmf_lab.multimodal.model import MultiModalModel
from mlmf_lab.multimodal.preprocess import (
    build_word_tokenizer,
    preprocess_audio,
    preprocess_images,
    tokenize,
)
from mlmf_lab.multimodal.preprocess.config import (
    AudioPreprocessing,
    ImagePreprocessing,
    TextPreprocessing,
    VideoPreprocessing,
)
from mlmf_lab.multimodal.preprocess.video import VideoBatch

ENCODER_MAPS = {"text", "image", "audio", "video", "video.frames", "feats"}
FUSION_MAPS = {"early": {"fusion"}, "middle": {f"fusion.{n}" for n in
                                               ("text", "image", "audio", "video", "feats")},
               "late": set(), "attention": {"fusion"}}


@pytest.mark.parametrize("strategy", list(FUSION_MAPS))
@torch.no_grad()
def test_every_encoder_and_fusion_returns_its_maps(strategy: str) -> None:
    torch.manual_seed(0)
    model = MultiModalModel(tiny_config(strategy)).eval()
    out = model(tiny_inputs(), output_attentions=True)
    assert set(out.attentions) == ENCODER_MAPS | FUSION_MAPS[strategy]
    assert model(tiny_inputs()).attentions == {}  # not asked: none made
    for source, maps in out.attentions.items():
        assert maps.source == source
        b, _, heads, _, _ = maps.shape
        assert b == (9 if source == "video.frames" else 3)  # frames: clips x 3 frames
        assert heads == (1 if strategy == "attention" and source == "fusion" else 2)
        rows = maps.weights.sum(-1)  # every real query's weights sum to 1 over the keys
        assert torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]), atol=1e-5)
    if strategy == "attention":  # one query (the fused vector) over the five inputs
        fusion = out.attentions["fusion"]
        assert fusion.shape == (3, 1, 1, 1, 5) and fusion.tokens[0] == ("fused",)
        assert torch.equal(fusion.weights[:, 0, 0, 0], out.modality_weights)
    if strategy == "early":  # the shared sequence: [CLS] then every input's tokens
        fusion = out.attentions["fusion"]
        assert fusion.key_tokens[0][0] == "[CLS]" and fusion.tokens == fusion.key_tokens
        assert [s.name for s in fusion.spans] == ["fusion", "text", "image", "audio", "video",
                                                  "feats"]
        assert fusion.span("image").grid == (2, 2)
        assert fusion.grid == (2, 2) and fusion.patch_offset == 1 + 6  # [CLS] + 6 text tokens


@torch.no_grad()
def test_the_maps_are_the_attention_the_blocks_apply() -> None:
    torch.manual_seed(1)
    model = MultiModalModel(tiny_config("middle")).eval()
    inputs = tiny_inputs()
    out = model(inputs, output_attentions=True)
    enc = model.encoder("image")
    tokens, mask, _ = enc.embed(*enc.prepare(inputs["image"]))
    block = enc.blocks[0]
    h = block.norm1(tokens)
    q, k = att.split_heads(block.attn.q(h), 2), att.split_heads(block.attn.k(h), 2)
    assert torch.allclose(out.attentions["image"].weights[:, 0],
                          att.attention_weights(q, k, mask), atol=1e-6)
    # middle fusion: the text attends to the others' tokens after layer 0, masks included
    cross = out.attentions["fusion.text"]
    assert [s.name for s in cross.spans] == ["image", "audio", "video", "feats"]
    assert cross.layers == (0,)
    audio = cross.span("audio").weights  # audio frames 5, 6 of sample 1 are padding
    assert float(audio[1, ..., 5:].abs().max()) == 0.0 and float(audio[0, ..., 5:].sum()) > 0


@torch.no_grad()
def test_labels_come_from_the_preprocessing_batches() -> None:
    tok = build_word_tokenizer(["a", "red", "dot"])
    img = ImagePreprocessing(16, 8)
    audio_cfg = AudioPreprocessing(sample_rate=8000, n_fft=256, hop=128, n_mels=8)
    cfg = MultiModalConfig(
        (ModalityConfig("text", Modality.TEXT, "transformer", 16, 1, 2, 10, max_tokens=10,
                        preprocessing=TextPreprocessing(max_length=10)),
         ModalityConfig("image", Modality.IMAGE, "patch_transformer", 16, 1, 2,
                        preprocessing=img),
         ModalityConfig("audio", Modality.AUDIO, "mel_transformer", 16, 1, 2, 8, max_tokens=64,
                        preprocessing=audio_cfg),
         ModalityConfig("video", Modality.VIDEO, "frame_temporal", 16, 1, 2,
                        preprocessing=VideoPreprocessing(clip_frames=3, image=img))),
        fusion="middle", attention=CrossModalAttentionConfig(16, 2))
    model = MultiModalModel(cfg).eval()
    patches = torch.randn(2, 3, 4, 192)
    video = VideoBatch(torch.zeros(2, 3, 3, 16, 16), patches, torch.ones(2, 3, dtype=torch.bool),
                       torch.tensor([[0.0, 0.25, 0.5], [0.75, 1.0, 1.25]]), (2, 2))
    inputs = {"text": tokenize(["a red dot", "red"], tok, cfg.modality("text").preprocessing),
              "image": preprocess_images([np.zeros((20, 30, 3), np.uint8)] * 2, img),
              "audio": preprocess_audio([(np.ones(1000, np.float32) * 0.1, 8000)] * 2,
                                        audio_cfg),
              "video": video}
    out = model(inputs, output_attentions=True)
    assert out.attentions["text"].tokens == (("[CLS]", "a", "red", "dot", "[SEP]"),
                                             ("[CLS]", "red", "[SEP]", "[PAD]", "[PAD]"))
    assert out.attentions["image"].tokens[0] == ("r0c0", "r0c1", "r1c0", "r1c1")
    assert out.attentions["audio"].tokens[0][:3] == ("0.00s", "0.02s", "0.03s")
    assert out.attentions["video"].tokens[1] == ("0.75s", "1.00s", "1.25s")
    keys = out.attentions["fusion.text"]
    assert keys.key_times is not None and torch.isnan(keys.key_times[0, :4]).all()  # patches
    assert keys.span("video").key_times.tolist() == video.times.tolist()  # type: ignore[union-attr]
    assert out.attentions["video.frames"].shape[0] == 6  # clips x frames


def test_the_record_checks_itself_and_serializes() -> None:
    w = torch.rand(2, 3, 4, 5, 6)
    labels = (tuple("abcde"),) * 2
    keys = (tuple("uvwxyz"),) * 2
    rec = AttentionMaps("fusion.text", w, labels, keys,
                        (KeySpan("image", 0, 4, (2, 2)), KeySpan("audio", 4, 6)), (0, 1, 2))
    assert rec.grid == (2, 2) and rec.patch_offset == 0
    assert rec.span("audio").key_tokens == (("y", "z"),) * 2
    doc = rec.as_dict()
    assert json.loads(json.dumps(doc)) == doc and doc["shape"] == [2, 3, 4, 5, 6]
    assert [r["layer"] for r in rec.rows()] == [0, 1, 2]
    assert "keys: image[0:4], audio[4:6]" in repr(rec)
    with pytest.raises(MLMFError, match="fusion.text attends to no 'video'; its keys come "
                                        "from: image, audio"):
        rec.span("video")
    with pytest.raises(MLMFError, match="key spans .* do not cover the 6 keys in order"):
        AttentionMaps("x", w, labels, keys, (KeySpan("image", 0, 4),), (0, 1, 2))
    with pytest.raises(MLMFError, match="expected 2 x 5 query labels"):
        AttentionMaps("x", w, (tuple("abc"),) * 2, keys, (KeySpan("a", 0, 6),), (0, 1, 2))
    with pytest.raises(MLMFError, match=r"must be \(batch, layers, heads, queries, keys\)"):
        AttentionMaps("x", w[0], labels, keys, (KeySpan("a", 0, 6),), (0, 1, 2))
    with pytest.raises(MLMFError, match="batch index 5 out of range for a batch of 2"):
        rec.stack(5)
    info = TokenInfo.uniform("t", ["a", "b"], 2)
    built = AttentionMaps.build("t", [torch.rand(2, 1, 2, 2)] * 2, info, [info])
    assert built.shape == (2, 2, 1, 2, 2) and built.layers == (0, 1)


@torch.no_grad()
def test_the_view_takes_the_record() -> None:
    import mlmf_lab.views as views
    torch.manual_seed(2)
    model = MultiModalModel(tiny_config("middle")).eval()
    out = model(tiny_inputs(), output_attentions=True)
    image = out.attentions["fusion.text"].span("image")
    view = views.AttentionView(**image.view_args(1), image=np.zeros((16, 16, 3)))
    assert view.grid == [2, 2] and view.key_tokens == ["r0c0", "r0c1", "r1c0", "r1c1"]
    assert view.shape == [1, 2, 6, 4]
    plain = views.AttentionView(out.attentions["image"])  # the record alone, sample 0
    assert plain.shape == [1, 2, 4, 4]
    captured = views.capture_attentions(model, inputs=tiny_inputs())
    assert set(captured) == set(out.attentions)
