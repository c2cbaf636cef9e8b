"""Preprocessing for text, image, audio and video, against independent references
(PIL for resizing maths, librosa's own melspectrogram, the tokenizer's own encodings,
explicit loops for patches) and with every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import mlmf_lab as ml
from mlmf_lab.errors import ConfigError, MLMFError
from mlmf_lab.multimodal.preprocess import image as pim
from mlmf_lab.multimodal.preprocess import video as pvid
from mlmf_lab.multimodal.preprocess.audio import (
    load_audio,
    log_mel,
    normalize_frames,
    power_spectrum,
    preprocess_audio,
)
from mlmf_lab.multimodal.preprocess.config import (
    AudioPreprocessing,
    ImagePreprocessing,
    TextPreprocessing,
    VideoPreprocessing,
)
from mlmf_lab.multimodal.preprocess.text import build_word_tokenizer, load_tokenizer, tokenize

# ---------------------------------------------------------------- image


def test_patchify_matches_explicit_loop() -> None:
    x = torch.randn(2, 3, 8, 12)
    p = pim.patchify(x, 4)
    assert p.shape == (2, 6, 48)
    for b in range(2):
        for i in range(6):
            r, c = divmod(i, 3)
            ref = x[b, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].permute(1, 2, 0).reshape(-1)
            assert torch.equal(p[b, i], ref)
    assert torch.equal(pim.unpatchify(p, 4, (2, 3)), x)


def test_image_pipeline_keeps_aspect_and_crops_center() -> None:
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = (255, 0, 0)  # the central third is red
    cfg = ImagePreprocessing(size=64, patch=16, mean=(0, 0, 0), std=(1, 1, 1))
    out = pim.preprocess_images([img], cfg)
    assert out.pixels.shape == (1, 3, 64, 64) and out.patches.shape == (1, 16, 768)
    assert out.grid == (4, 4)
    # resized to 64x192 then the central 64 columns: all red (up to edge interpolation)
    assert out.pixels[0, 0, :, 2:-2].min() > 0.99 and out.pixels[0, 1:].abs().max() < 0.01
    assert pim.resize(img, cfg).shape == (64, 192, 3)
    stretched = ImagePreprocessing(size=64, patch=16, resize="stretch")
    assert pim.resize(img, stretched).shape == (64, 64, 3)


def test_resize_rounds_as_transformers_and_crops_or_pads() -> None:
    from transformers.image_transforms import get_resize_output_image_size

    for h, w in [(61, 97), (97, 61), (300, 451), (7, 300), (224, 224), (17, 29)]:
        cfg = ImagePreprocessing(size=32, patch=8)
        want = get_resize_output_image_size(np.zeros((h, w, 3)), 32, default_to_square=False,
                                            input_data_format="channels_last")
        assert pim.resize_size(h, w, cfg) == tuple(want), (h, w)
    assert pim.resize_size(61, 97, ImagePreprocessing(32, 8)) == (32, 50)  # 50.9: truncated
    small = np.full((3, 5, 3), 200, np.uint8)
    padded = pim.center_crop(small, 8)  # zeros around; of an odd margin the larger half before
    assert padded.shape == (8, 8, 3) and (padded[3:6, 2:7] == 200).all()
    assert padded[:3].max() == 0 and padded[6:].max() == 0 and padded[:, 7:].max() == 0


def test_normalize_and_reference_resize(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), img[:, :, ::-1])
    assert np.array_equal(pim.decode_image(path), img)  # PNG is lossless, RGB order kept
    cfg = ImagePreprocessing(size=20, patch=5, resample="bicubic")
    got = pim.prepare_image(path, cfg)
    # reference: PIL's own bicubic 40x60 -> 20x30, the central 20 columns, normalized
    ref = np.asarray(Image.fromarray(img).resize((30, 20), Image.Resampling.BICUBIC), np.float32)
    ref = (ref[:, 5:25] / 255 - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)
    assert np.abs(got - ref).max() < 1e-5


def test_image_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(MLMFError, match="bad.jpg.*OpenCV can decode"):
        pim.preprocess_images([bad], ImagePreprocessing(32, 8))
    with pytest.raises(MLMFError, match="empty file"):
        (tmp_path / "e.png").write_bytes(b"")
        pim.decode_image(tmp_path / "e.png")
    with pytest.raises(MLMFError, match="no such file|cannot read"):
        pim.decode_image(tmp_path / "missing.png")
    with pytest.raises(MLMFError, match=r"found shape \(4, 4, 2\)"):
        pim.decode_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(MLMFError, match="non-empty"):
        pim.decode_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match="must divide the image size 30"):
        ImagePreprocessing(30, 16)
    with pytest.raises(ConfigError, match="size must be > 0"):
        ImagePreprocessing(0, 16)
    with pytest.raises(MLMFError, match="empty batch"):
        pim.preprocess_images([], ImagePreprocessing(32, 8))


# ---------------------------------------------------------------- text


def test_tokenize_matches_the_tokenizer_itself() -> None:
    from tokenizers import Tokenizer

    folder = ml.examples.minilm_dir()
    texts = ["A red circle.", "The quick brown fox jumps over the lazy dog"]
    out = tokenize(texts, folder, TextPreprocessing(max_length=32))
    ref = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref.no_padding()  # the shipped file pads to 128 by itself
    for i, t in enumerate(texts):
        ids = ref.encode(t).ids
        assert out.input_ids[i, : len(ids)].tolist() == ids
        assert out.attention_mask[i].sum() == len(ids)
        assert (out.input_ids[i, len(ids):] == 0).all()  # [PAD] is 0 in BERT vocabularies
    assert out.tokens[0][:3] == ["[CLS]", "a", "red"]
    assert out.input_ids.shape[1] == len(ref.encode(texts[1]).ids)  # padded to the longest


def test_tokenize_truncation_and_fixed_padding() -> None:
    tok = build_word_tokenizer(["red", "blue", "circle"])
    out = tokenize(["red blue circle red blue"], tok, TextPreprocessing(max_length=4))
    assert out.tokens[0] == ["[CLS]", "red", "blue", "[SEP]"]
    out = tokenize(["red"], tok, TextPreprocessing(max_length=6, padding="max_length"))
    assert out.input_ids.tolist() == [[2, 4, 3, 0, 0, 0]]
    assert out.attention_mask.tolist() == [[True, True, True, False, False, False]]
    with pytest.raises(MLMFError, match="more than max_length 4"):
        tokenize(["red blue circle red"], tok, TextPreprocessing(max_length=4, truncation=False))


def test_text_errors(tmp_path: Path) -> None:
    tok = build_word_tokenizer(["red"])
    with pytest.raises(MLMFError, match="text 1: expected some words, found an empty string"):
        tokenize(["red", "  "], tok)
    with pytest.raises(MLMFError, match="empty batch"):
        tokenize([], tok)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(MLMFError, match="tokenizer.json.*cannot parse"):
        load_tokenizer(tmp_path)
    with pytest.raises(MLMFError, match="expected a tokenizer.json"):
        load_tokenizer(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="padding"):
        TextPreprocessing(padding="left")


# ---------------------------------------------------------------- audio


def test_log_mel_matches_librosa() -> None:
    import librosa

    cfg = AudioPreprocessing(sample_rate=16000, n_fft=400, hop=160, n_mels=40, normalize=False)
    rng = np.random.default_rng(0)
    y = (np.sin(2 * np.pi * 440 * np.arange(8000) / 16000) + 0.1 * rng.normal(size=8000))
    y = y.astype(np.float32)
    ref = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400, hop_length=160, n_mels=40)
    got = log_mel(torch.from_numpy(y)[None], cfg)[0].numpy()
    assert got.shape == ref.shape
    assert np.abs(got - librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=None)).max() < 1e-2
    spec = power_spectrum(torch.from_numpy(y)[None], 400, 160)[0].numpy()
    ref_spec = np.abs(librosa.stft(y, n_fft=400, hop_length=160)) ** 2
    assert np.allclose(spec, ref_spec, rtol=1e-3, atol=1e-3)


def test_audio_file_resample_mono_and_batch_mask(tmp_path: Path) -> None:
    import soundfile as sf

    sr = 22050
    t = np.arange(sr // 2) / sr
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t)], 1) * 0.5
    sf.write(tmp_path / "a.wav", stereo, sr)
    cfg = AudioPreprocessing(sample_rate=8000, n_fft=256, hop=128, n_mels=32)
    y = load_audio(tmp_path / "a.wav", cfg)
    assert y.ndim == 1 and abs(y.size - 4000) <= 1  # 0.5 s at 8 kHz
    peak = np.argmax(np.abs(np.fft.rfft(y))) * 8000 / y.size
    assert abs(peak - 1000) < 5  # the tone survives resampling
    short = (np.zeros(1000, np.float32) + 0.1, 8000)
    out = preprocess_audio([tmp_path / "a.wav", short], cfg)
    assert out.mel.shape[0] == 2 and out.mask.sum(1).tolist() == [1 + y.size // 128, 8]
    assert torch.all(out.mel[1, :, 8:] == 0)
    valid = out.mel[0][:, out.mask[0]]
    assert abs(float(valid.mean())) < 1e-4 and abs(float(valid.std(unbiased=False)) - 1) < 1e-3
    assert out.seconds.tolist() == pytest.approx([y.size / 8000, 0.125])


def test_normalize_ignores_padding() -> None:
    mel = torch.randn(1, 4, 10)
    mask = torch.tensor([[True] * 6 + [False] * 4])
    a = normalize_frames(mel, mask)
    b = normalize_frames(mel[:, :, :6], mask[:, :6])
    assert torch.allclose(a[:, :, :6], b, atol=1e-6) and (a[:, :, 6:] == 0).all()


def test_audio_errors(tmp_path: Path) -> None:
    cfg = AudioPreprocessing(sample_rate=8000, n_fft=256, hop=128, n_mels=16)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(MLMFError, match="bad.wav.*librosa can decode"):
        preprocess_audio([bad], cfg)
    with pytest.raises(MLMFError, match="no such file"):
        load_audio(tmp_path / "missing.wav", cfg)
    with pytest.raises(MLMFError, match="empty signal"):
        load_audio((np.zeros(0, np.float32), 8000), cfg)
    with pytest.raises(MLMFError, match="NaN"):
        load_audio((np.full(500, np.nan, np.float32), 8000), cfg)
    with pytest.raises(MLMFError, match="at least 129 samples"):
        preprocess_audio([(np.ones(50, np.float32), 8000)], cfg)
    with pytest.raises(ConfigError, match="hop 300 exceeds"):
        AudioPreprocessing(n_fft=256, hop=300)
    with pytest.raises(ConfigError, match="fmax"):
        AudioPreprocessing(sample_rate=8000, fmax=6000)


# ---------------------------------------------------------------- video


def _frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame i is a flat grey of level 10 * i: the decoded level tells which frame it was."""
    return np.stack([np.full((h, w, 3), 10 * i, np.uint8) for i in range(n)])


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_fps_sampling_and_clips(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"v{suffix}"
    pvid.write_video(path, _frames(20), fps=10)
    info = pvid.video_info(path)
    assert info.frames == 20 and info.fps == pytest.approx(10) and info.width == 64
    frames, times = pvid.read_frames(path, fps=5)  # every second frame
    assert len(frames) == 10 and times.tolist() == pytest.approx([i * 0.2 for i in range(10)])
    levels = [int(round(f.mean() / 10)) for f in frames]
    assert levels == list(range(0, 20, 2))
    cfg = VideoPreprocessing(fps=5, clip_frames=4, stride=2,
                             image=ImagePreprocessing(32, 8, mean=(0, 0, 0), std=(1, 1, 1)))
    out = pvid.preprocess_video(path, cfg)
    assert out.patches.shape == (4, 4, 16, 192) and out.pixels.shape == (4, 4, 3, 32, 32)
    assert out.frame_mask.all() and out.grid == (4, 4)
    # clip c starts at sampled frame 2c, i.e. source frame 4c
    first = (out.pixels[:, 0].mean(dim=(1, 2, 3)) * 255 / 10).round().tolist()
    assert first == [0, 4, 8, 12]


def test_every_sampled_frame_is_in_a_clip(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    pvid.write_video(path, _frames(12), fps=10)
    cfg = VideoPreprocessing(fps=10, clip_frames=4, stride=3, image=ImagePreprocessing(
        16, 8, mean=(0, 0, 0), std=(1, 1, 1)))
    out = pvid.preprocess_video(path, cfg)  # clips start at 0, 3, 6, 9: the last is padded
    levels = (out.pixels.mean(dim=(2, 3, 4)) * 255 / 10).round().long()
    seen = {int(v) for v, m in zip(levels.flatten(), out.frame_mask.flatten(), strict=True) if m}
    assert seen == set(range(12))  # was 10 of 12: the tail frames were left out
    assert out.frame_mask.tolist()[-1] == [True, True, True, False]
    assert levels[-1].tolist() == [9, 10, 11, 11]  # padding repeats the last frame
    assert out.times[-1].tolist() == pytest.approx([0.9, 1.0, 1.1, 1.1])


@pytest.mark.parametrize(("src", "fps"), [(10, 3), (10, 4), (25, 7), (30, 12), (12, 30),
                                          (30, 30)])
def test_decoding_picks_the_frames_the_arithmetic_says(tmp_path: Path, src: int,
                                                       fps: int) -> None:
    path = tmp_path / "v.avi"
    pvid.write_video(path, _frames(23, 16, 16), fps=src)
    frames, times = pvid.read_frames(path, fps)
    chosen = [int(round(f.mean() / 10)) for f in frames]
    assert chosen == pvid.sample_indices(23, src, fps).tolist()
    assert times.tolist() == pytest.approx([i / src for i in chosen])
    # the rule: output frame k is the frame shown at time k / fps (the last at or before it)
    ref = sorted({int(np.floor(k / fps * src + 1e-6)) for k in range(int(23 / src * fps) + 2)
                  if k / fps < 23 / src - 1e-9})
    assert chosen == ref


class FakeCapture:
    """A variable-rate stream: frame i (a grey of level i) shown from ``times[i]``."""

    def __init__(self, times: list[float], fps: float) -> None:
        self.times, self.fps, self.i = times, fps, -1

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FPS:
            return self.fps
        if prop == cv2.CAP_PROP_POS_MSEC:
            return self.times[self.i] * 1000
        return 0.0

    def grab(self) -> bool:
        self.i += 1
        return self.i < len(self.times)

    def retrieve(self) -> tuple[bool, np.ndarray]:
        return True, np.full((4, 4, 3), self.i, np.uint8)

    def release(self) -> None:
        pass


def test_variable_frame_rate_uses_decoded_timestamps(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # 25 fps nominal, with a burst at 50 fps and a frame held for 0.3 s
    times = [0.0, 0.04, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.22, 0.52, 0.56, 0.6, 0.64]
    monkeypatch.setattr(pvid, "_open", lambda path: FakeCapture(times, 25.0))
    frames, got = pvid.read_frames(tmp_path / "vfr.mp4", fps=10)
    chosen = [int(f[0, 0, 0]) for f in frames]
    # the frame shown at 0, 0.1, ..., 0.6 s: the last one at or before each time
    want = sorted({max(i for i, t in enumerate(times) if t <= k / 10 + 1e-9)
                   for k in range(7)})
    assert chosen == want == [0, 3, 7, 8, 11]  # 0.3, 0.4 and 0.5 s all show frame 8
    assert got.tolist() == pytest.approx([times[i] for i in chosen])  # not i / 25


def test_frame_picker_edges() -> None:
    picker, chosen = pvid.FramePicker(src_fps=25.0, fps=5.0), []
    for t in [0.0, 0.04, 0.08, 0.08, 0.3]:  # a repeated time gets the nominal interval
        chosen += picker.offer(t)
    assert picker.times[3] == pytest.approx(0.12)
    # 0 s shows frame 0, 0.2 s frame 3; at 0.4 s frame 4 (from 0.3 s) is no longer shown
    assert chosen + picker.finish() == [0, 3]
    assert pvid.sample_indices(0, 25.0, 5.0).tolist() == []
    with pytest.raises(ConfigError, match="frame rates must be > 0"):
        pvid.FramePicker(0.0, 5.0)


def test_short_video_is_padded_with_mask(tmp_path: Path) -> None:
    path = tmp_path / "short.avi"
    pvid.write_video(path, _frames(3), fps=4)
    cfg = VideoPreprocessing(fps=4, clip_frames=5, stride=5, image=ImagePreprocessing(16, 8))
    out = pvid.preprocess_video(path, cfg)
    assert out.frame_mask.tolist() == [[True, True, True, False, False]]
    assert torch.equal(out.pixels[0, 4], out.pixels[0, 2])


def test_clip_and_sampling_maths() -> None:
    assert pvid.clip_starts(10, 4, 3) == [0, 3, 6]
    assert pvid.clip_starts(12, 4, 3) == [0, 3, 6, 9]  # the last clip reaches frame 11
    assert pvid.clip_starts(3, 4, 2) == [0]
    assert pvid.sample_indices(30, 30.0, 10.0).tolist() == list(range(0, 30, 3))
    assert pvid.sample_indices(5, 10.0, 25.0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        pvid.clip_starts(10, 0, 1)
    with pytest.raises(ConfigError, match="stride 5 > clip_frames 4 would leave frames"):
        pvid.clip_starts(10, 4, 5)
    with pytest.raises(ConfigError, match="video stride 5 exceeds clip_frames 4"):
        VideoPreprocessing(clip_frames=4, stride=5)
    assert VideoPreprocessing(clip_frames=4).stride == 4


def test_video_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF....AVI LIST garbage" * 10)
    cfg = VideoPreprocessing(image=ImagePreprocessing(16, 8))
    with pytest.raises(MLMFError, match="bad.avi"):
        pvid.preprocess_video(bad, cfg)
    with pytest.raises(MLMFError, match="no such file"):
        pvid.preprocess_video(tmp_path / "none.mp4", cfg)
    with pytest.raises(MLMFError, match=r"\.avi or \.mp4"):
        pvid.write_video(tmp_path / "x.mkv", _frames(2), 5)
    with pytest.raises(ConfigError, match="clip_frames must be > 0"):
        VideoPreprocessing(clip_frames=0)
