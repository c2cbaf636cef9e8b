"""AttentionView and its library functions, without a browser: state, bytes, windows, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.multimodal.attention_maps import (
    AttentionError,
    attention_stack,
    patch_map,
    quantize_map,
    quantize_maps,
    thumbnails,
    token_window,
    top_keys,
)


def maps(layers: int = 3, heads: int = 4, q: int = 5, k: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(layers, 1, heads, q, k, generator=g).softmax(-1)


def test_stack_accepts_a_transformers_tuple_a_tensor_and_multimodal_maps() -> None:
    from mlmf_lab.multimodal.maps import AttentionMaps, TokenInfo

    m = maps()
    as_tuple = tuple(m)  # one (B, H, Q, K) per layer, like output.attentions
    assert torch.equal(attention_stack(as_tuple), m[:, 0])
    assert torch.equal(attention_stack(m[:, 0]), m[:, 0])
    text = TokenInfo.uniform("text", list("abcde"), 1)
    image = TokenInfo.uniform("image", [f"p{i}" for i in range(5)], 1)
    record = AttentionMaps.build("fusion.text", list(m), text, [image])
    assert torch.equal(attention_stack(record), m[:, 0])


@pytest.mark.parametrize("bad, message", [
    (None, "capture_attentions"),
    ((None, None), "layer 0 has no attention map (None)"),
    ((), "empty tuple"),
    ((torch.ones(1, 2, 3, 3), torch.ones(1, 2, 4, 4)), "differ in shape"),
    (torch.ones(2, 3), "(layers, heads, queries, keys)"),
    ((torch.full((1, 1, 2, 2), float("nan")),), "NaN"),
])
def test_stack_refuses_missing_or_malformed_maps_and_says_why(bad, message) -> None:
    with pytest.raises(AttentionError) as e:
        attention_stack(bad)
    assert message in str(e.value)
    assert isinstance(e.value, ml.MLMFError)


def test_thumbnails_max_pool_so_a_sharp_head_stays_visible() -> None:
    stack = torch.zeros(1, 1, 512, 512)
    stack[0, 0, 300, 7] = 0.9  # one strong weight among 262,144
    t = thumbnails(stack, side=24)
    assert t.shape == (1, 1, 24, 24) and t.dtype == np.uint8
    assert t.max() == 255 and (t == 255).sum() == 1
    small = thumbnails(torch.rand(2, 3, 5, 7))
    assert small.shape == (2, 3, 5, 7)


def test_quantized_map_reads_back_within_half_a_step() -> None:
    m = torch.rand(40, 50)
    data, scale = quantize_map(m)
    back = np.frombuffer(data, np.uint8).reshape(40, 50) / 255 * scale
    assert len(data) == 2000 and abs(scale - float(m.max())) < 1e-7
    assert np.abs(back - m.numpy()).max() <= scale / 255 / 2 + 1e-6
    assert quantize_map(torch.zeros(2, 2)) == (b"\0\0\0\0", 0.0)


def test_every_head_quantized_at_once_matches_one_at_a_time() -> None:
    m = maps(layers=2, heads=3, q=7, k=9)[:, 0]
    m[1, 2] = 0.0  # a zero map: scale 0, all bytes 0, no NaN
    data, scales = quantize_maps(m)
    assert data.shape == (2, 3, 7, 9) and data.dtype == np.uint8
    assert scales.shape == (2, 3) and scales.dtype == np.float32
    idx, w = top_keys(m, 2)
    assert idx.shape == w.shape == (2, 3, 7, 2)
    for layer in range(2):
        for head in range(3):
            one, scale = quantize_map(m[layer, head])
            assert data[layer, head].tobytes() == one and float(scales[layer, head]) == scale
            one_idx, one_w = top_keys(m[layer, head], 2)
            assert np.array_equal(idx[layer, head], one_idx)
            assert np.array_equal(w[layer, head], one_w)  # each map scaled by its own max
    assert scales[1, 2] == 0.0 and not data[1, 2].any() and not w[1, 2].any()


def test_top_keys_are_the_strongest_first() -> None:
    m = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]])
    idx, w = top_keys(m, 2)
    assert idx.tolist() == [[1, 2], [0, 2]] and idx.dtype == np.uint16
    assert w[0, 0] == 255 and w.dtype == np.uint8
    assert top_keys(m, 10)[0].shape == (2, 3)


def test_token_window_and_patch_map() -> None:
    assert token_window(512, 300, 64) == (268, 332)
    assert token_window(20, 5, 64) == (0, 20)
    m = torch.arange(20.0).reshape(2, 10)
    assert patch_map(m, 1, (3, 3), offset=1).tolist() == [[11, 12, 13], [14, 15, 16],
                                                          [17, 18, 19]]
    assert patch_map(m, -1, (3, 3), 1)[0, 0].item() == 6.0  # mean over the two queries
    with pytest.raises(AttentionError, match="a 4x4 patch grid after 0 other keys needs 16"):
        patch_map(m, 0, (4, 4))


def test_view_state_follows_layer_and_head_one_head_at_a_time() -> None:
    m = maps(layers=3, heads=4, q=6, k=6)
    tokens = list("abcdef")
    view = ml.views.AttentionView(tuple(m), tokens=tokens, top_k=2)
    assert view.shape == [3, 4, 6, 6] and view.tokens == tokens == view.key_tokens
    assert len(view.thumbs) == 3 * 4 * 6 * 6 and len(view.head_map) == 36
    view.layer, view.head = 2, 3
    expected, scale = quantize_map(m[2, 0, 3])
    assert view.head_map == expected and view.head_scale == pytest.approx(scale)
    assert np.frombuffer(view.top_idx, np.uint16).reshape(6, 2).tolist() == \
        top_keys(m[2, 0, 3], 2)[0].tolist()
    assert repr(view) == "AttentionView(3 layers x 4 heads, 6 queries x 6 keys; layer 2, head 3)"
    with pytest.raises(AttentionError, match="head 4 out of range: the maps have 4 heads"):
        view.head = 4
    with pytest.raises(AttentionError, match="3 tokens and 3 key labels for maps of 6 queries"):
        ml.views.AttentionView(tuple(m), tokens=list("abc"))


def test_a_click_gets_one_message_with_the_new_head(monkeypatch) -> None:
    m = maps(layers=3, heads=4, q=6, k=6)
    view = ml.views.AttentionView(tuple(m), top_k=2)
    sent: list[dict] = []
    monkeypatch.setattr(view, "_send", lambda msg, buffers=None: sent.append(msg))
    view.set_state({"layer": 2, "head": 3})  # what the page sends when a thumbnail is clicked
    updates = [msg["state"] for msg in sent if msg["method"] == "update"]
    assert len(updates) == 1 and updates[0]["head_shown"] == [2, 3]
    assert view.head_map == quantize_map(m[2, 0, 3])[0] and view.head_shown == [2, 3]
    sent.clear()
    view.set_state({"layer": 2, "head": 3})  # nothing new: nothing sent but the echo
    assert [msg["method"] for msg in sent] == ["echo_update"]


def test_heads_too_many_to_encode_ahead_are_encoded_when_selected(monkeypatch) -> None:
    from mlmf_lab.views import attention

    m = maps(layers=2, heads=2, q=5, k=5)
    ahead = ml.views.AttentionView(tuple(m), top_k=2)
    monkeypatch.setattr(attention, "ENCODE_AHEAD_BYTES", 10)
    each = ml.views.AttentionView(tuple(m), top_k=2)
    for view in (ahead, each):
        view.layer, view.head = 1, 1
    assert ahead.head_map == each.head_map == quantize_map(m[1, 0, 1])[0]
    assert ahead.top_idx == each.top_idx and ahead.top_w == each.top_w
    assert ahead.head_scale == each.head_scale


def test_top_k_is_the_stride_of_the_top_keys_the_page_reads() -> None:
    m = maps(layers=1, heads=2, q=4, k=4)
    view = ml.views.AttentionView(tuple(m), top_k=10)
    assert view.top_k == 4 and len(view.top_idx) == 4 * 4 * 2  # capped at the keys
    view.top_k = 1
    assert np.frombuffer(view.top_idx, np.uint16).tolist() == \
        top_keys(m[0, 0, 0], 1)[0].ravel().tolist()
    with pytest.raises(AttentionError, match="top_k 0: draw at least 1 line per query"):
        view.top_k = 0


def test_long_inputs_are_windowed_and_stay_small() -> None:
    m = torch.rand(12, 12, 512, 512)
    view = ml.views.AttentionView(m, window=64)
    assert view.window == [0, 64]
    view.query = 300
    assert view.window == [268, 332] == view.key_window
    assert len(view.thumbs) == 12 * 12 * 24 * 24  # 82,944 bytes for 144 heads
    assert len(view.head_map) == 512 * 512  # one head, uint8


def test_image_mode_sends_the_query_over_the_patch_grid() -> None:
    m = maps(layers=1, heads=2, q=3, k=10)  # CLS + a 3x3 grid
    image = np.zeros((30, 30, 3), np.uint8)
    view = ml.views.AttentionView(tuple(m), tokens=["x", "y", "z"], image=image,
                                  patch_offset=1)
    assert view.grid == [3, 3] and view.image_png[:4] == b"\x89PNG"
    view.query = 1
    assert view.patch == quantize_map(patch_map(m[0, 0, 0], 1, (3, 3), 1))[0]
    assert "over a 3x3 patch grid" in repr(view)
    with pytest.raises(AttentionError, match="pass grid=\\(rows, cols\\)"):
        ml.views.AttentionView(tuple(maps(1, 1, 2, 8)), image=image)


def test_mimebundle_carries_a_png_fallback_and_the_repr() -> None:
    view = ml.views.AttentionView(tuple(maps()))
    data, _ = view._repr_mimebundle_()
    assert data["text/plain"] == repr(view)
    assert data["image/png"].startswith("iVBOR")  # base64 of a PNG
    assert "application/vnd.jupyter.widget-view+json" in data


def test_capture_attentions_switches_sdpa_to_eager_for_one_call() -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    ids = torch.tensor([[1, 5, 7, 2]])
    assert model(input_ids=ids, output_attentions=False).attentions is None
    maps_ = ml.views.capture_attentions(model, input_ids=ids)
    assert len(maps_) == 2 and maps_[0].shape == (1, 2, 4, 4)
    assert torch.allclose(maps_[0].sum(-1), torch.ones(1, 2, 4))
    assert model.config._attn_implementation == "sdpa"  # switched back


def test_capture_attentions_refuses_what_it_cannot_read() -> None:
    with pytest.raises(AttentionError, match="cannot capture attentions from a Linear"):
        ml.views.capture_attentions(torch.nn.Linear(2, 2))


def test_capture_attentions_of_the_real_minilm() -> None:
    from mlmf_lab.models import MiniLM

    lm = MiniLM.from_pretrained(ml.examples.minilm_dir())
    batch = lm.tokenize(["A cat sleeps on the sofa."])
    maps_ = ml.views.capture_attentions(lm, **batch)
    assert len(maps_) == 6 and maps_[0].shape[1:] == (12, 9, 9)
    view = ml.views.AttentionView(maps_)
    assert view.shape == [6, 12, 9, 9]
