"""A small synthetic task that needs all three modalities, generated on the fly.

Each sample is an image with three coloured shapes (one red, one green, one blue; each a
circle, square or triangle drawn independently, so shapes may repeat; in random cells of a
3 x 3 grid), a short tone, and a caption. The caption either names a colour ("which
shape is red") or points at the tone ("which shape has the colour of the tone"); the
tone's pitch encodes a colour (330 Hz red, 660 Hz green, 1320 Hz blue) and is a decoy
when the caption names the colour itself. The answer is the shape of the object of that colour.

Text or audio alone are at chance (1/3). The image alone can only guess the most frequent
shape, which is right 17/27 = 0.63 of the time (``IMAGE_ONLY_BOUND``); above that a model
must have matched the colour asked for to the right object. Everything goes through the real
preprocessing pipelines (OpenCV, librosa framing + mel, a ``tokenizers`` tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from .config import (
    CrossModalAttentionConfig,
    FusionStrategy,
    Modality,
    ModalityConfig,
    MultiModalConfig,
)
from .preprocess.audio import AudioBatch, preprocess_audio
from .preprocess.config import AudioPreprocessing, ImagePreprocessing, TextPreprocessing
from .preprocess.image import ImageBatch, preprocess_images
from .preprocess.text import TextBatch, build_word_tokenizer, tokenize

if TYPE_CHECKING:
    from tokenizers import Tokenizer

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 40), "green": (40, 190, 70), "blue": (60, 90, 235)}
SHAPES = ("circle", "square", "triangle")
IMAGE_ONLY_BOUND = 17 / 27  # best accuracy of any model that sees only the image
PITCH_HZ = {"red": 330.0, "green": 660.0, "blue": 1320.0}
NAMED = ("which shape is {c}", "find the {c} shape", "what shape is the {c} one")
SPOKEN = ("which shape has the colour of the tone", "find the shape the tone names",
          "what shape is the colour you hear")


@dataclass(frozen=True)
class ShapesTask:
    """Sizes of the task. Source images are ``source`` (H, W); the model sees the
    central square resized to ``size`` with patches of ``patch`` (one grid cell each)."""

    source: tuple[int, int] = (72, 104)
    size: int = 36
    patch: int = 12
    sample_rate: int = 8000
    seconds: float = 0.25
    spoken_share: float = 0.25  # share of captions that point at the tone
    image: ImagePreprocessing = field(init=False)
    audio: AudioPreprocessing = field(init=False)
    text: TextPreprocessing = field(init=False)

    def __post_init__(self) -> None:
        # box filter: a 2x shrink averages 2x2 pixels, keeping the small shapes' edges sharp
        object.__setattr__(self, "image", ImagePreprocessing(
            self.size, self.patch, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
            resample="box"))
        object.__setattr__(self, "audio", AudioPreprocessing(
            sample_rate=self.sample_rate, n_fft=256, hop=128, n_mels=24))
        object.__setattr__(self, "text", TextPreprocessing(max_length=12, padding="max_length"))

    @property
    def grid(self) -> int:
        return self.size // self.patch

    def tokenizer(self) -> Tokenizer:
        words = sorted({w for t in NAMED + SPOKEN for w in t.split() if w != "{c}"} | set(COLOURS))
        return build_word_tokenizer(words)


class ShapesSample(NamedTuple):
    """One raw sample: image (H, W, 3) uint8 RGB, tone (samples,), caption, and the truth."""

    image: np.ndarray
    tone: np.ndarray
    caption: str
    colour: str  # the colour meant
    spoken: bool  # True when the caption points at the tone
    answer: int  # index into SHAPES
    cells: tuple[int, int, int]  # grid cell of the red, green, blue object
    shapes: tuple[int, int, int]  # shape index of the red, green, blue object


class ShapesData(NamedTuple):
    """A preprocessed dataset, ready for ``MultiModalModel``."""

    text: TextBatch
    image: ImageBatch
    audio: AudioBatch
    labels: torch.Tensor  # (N,) shape index
    target_cell: torch.Tensor  # (N,) patch index of the object meant
    cells: torch.Tensor  # (N, 3) patch index of each object
    spoken: torch.Tensor  # (N,) bool

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.labels.shape[0])

    def subset(self, keep: torch.Tensor) -> ShapesData:
        """The samples where ``keep`` (N,) bool is True."""
        t, i, a = self.text, self.image, self.audio
        return ShapesData(
            TextBatch(t.input_ids[keep], t.attention_mask[keep],
                      [x for x, k in zip(t.tokens, keep.tolist(), strict=True) if k]),
            ImageBatch(i.pixels[keep], i.patches[keep], i.grid),
            AudioBatch(a.mel[keep], a.mask[keep], a.seconds[keep]),
            self.labels[keep], self.target_cell[keep], self.cells[keep], self.spoken[keep])

    def inputs(self, idx: torch.Tensor | slice | None = None) -> dict[str, object]:
        """The model's inputs (all samples, or ``idx``)."""
        sel = slice(None) if idx is None else idx
        return {
            "caption": (self.text.input_ids[sel], self.text.attention_mask[sel]),
            "image": self.image.patches[sel],
            "tone": (self.audio.mel[sel], self.audio.mask[sel]),
        }


def draw_shape(img: np.ndarray, shape: str, colour: tuple[int, int, int],
               center: tuple[int, int], r: int) -> None:
    """Draw a filled shape of radius ``r`` (pixels) at ``center`` (x, y), in place."""
    import cv2

    x, y = center
    if shape == "circle":
        cv2.circle(img, (x, y), r, colour, -1, lineType=cv2.LINE_AA)
    elif shape == "square":
        s = int(r * 0.85)
        cv2.rectangle(img, (x - s, y - s), (x + s, y + s), colour, -1, lineType=cv2.LINE_AA)
    elif shape == "triangle":
        pts = np.array([[x, y - r], [x - r, y + r - 1], [x + r, y + r - 1]], np.int32)
        cv2.fillPoly(img, [pts], colour, lineType=cv2.LINE_AA)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def tone(freq: float, task: ShapesTask, rng: np.random.Generator) -> np.ndarray:
    """A sine at ``freq`` with a random phase, level and a little noise (float32)."""
    n = int(task.sample_rate * task.seconds)
    t = np.arange(n) / task.sample_rate
    level = rng.uniform(0.3, 0.8)
    y = level * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return (y + rng.normal(0, 0.05, n)).astype(np.float32)


def make_sample(rng: np.random.Generator, task: ShapesTask) -> ShapesSample:
    """Draw one sample (see the module docstring for the rules)."""
    h, w = task.source
    img = rng.integers(20, 45, size=(h, w, 3), dtype=np.uint8)
    side = min(h, w)
    cell = side // task.grid
    left, top = (w - side) // 2, (h - side) // 2
    cells = rng.choice(task.grid * task.grid, size=3, replace=False)
    shapes = rng.integers(len(SHAPES), size=3)  # repeats allowed
    for (_name, rgb), c, s in zip(COLOURS.items(), cells, shapes, strict=True):
        row, col = divmod(int(c), task.grid)
        jitter = rng.integers(-2, 3, size=2)
        cx = left + col * cell + cell // 2 + int(jitter[0])
        cy = top + row * cell + cell // 2 + int(jitter[1])
        draw_shape(img, SHAPES[s], rgb, (cx, cy), int(cell * 0.36))
    names = list(COLOURS)
    target = int(rng.integers(3))
    spoken = bool(rng.random() < task.spoken_share)
    heard = target if spoken else int(rng.integers(3))  # a decoy tone when the caption names it
    freq = PITCH_HZ[names[heard]] * rng.uniform(0.97, 1.03)
    templates = SPOKEN if spoken else NAMED
    caption = templates[int(rng.integers(len(templates)))].format(c=names[target])
    return ShapesSample(img, tone(freq, task, rng), caption, names[target], spoken,
                        int(shapes[target]), (int(cells[0]), int(cells[1]), int(cells[2])),
                        (int(shapes[0]), int(shapes[1]), int(shapes[2])))


def make_samples(n: int, seed: int, task: ShapesTask | None = None) -> list[ShapesSample]:
    """``n`` raw samples from a seeded generator."""
    task = task or ShapesTask()
    rng = np.random.default_rng(seed)
    return [make_sample(rng, task) for _ in range(n)]


def make_dataset(n: int, seed: int, task: ShapesTask | None = None,
                 tokenizer: Tokenizer | None = None) -> ShapesData:
    """``n`` samples through the real preprocessing pipelines."""
    task = task or ShapesTask()
    samples = make_samples(n, seed, task)
    tok = tokenizer or task.tokenizer()
    text = tokenize([s.caption for s in samples], tok, task.text)
    image = preprocess_images([s.image for s in samples], task.image)
    audio = preprocess_audio([(s.tone, task.sample_rate) for s in samples], task.audio)
    cells = torch.tensor([s.cells for s in samples])
    target = torch.tensor([s.cells[list(COLOURS).index(s.colour)] for s in samples])
    return ShapesData(text, image, audio, torch.tensor([s.answer for s in samples]),
                      target, cells, torch.tensor([s.spoken for s in samples]))


def demo_config(fusion: FusionStrategy | str, task: ShapesTask | None = None,
                vocab_size: int | None = None, dim: int = 32, late_mode: str = "mean",
                layers: int = 1) -> MultiModalConfig:
    """A tiny model for the task: caption, image and tone encoders of width ``dim``."""
    task = task or ShapesTask()
    vocab = vocab_size or task.tokenizer().get_vocab_size()
    heads = 2
    mods = (
        ModalityConfig("caption", Modality.TEXT, "transformer", dim, layers, heads, vocab,
                       max_tokens=task.text.max_length, preprocessing=task.text),
        ModalityConfig("image", Modality.IMAGE, "patch_transformer", dim, layers, heads,
                       preprocessing=task.image),
        ModalityConfig("tone", Modality.AUDIO, "mel_transformer", dim, layers, heads,
                       task.audio.n_mels, max_tokens=64, preprocessing=task.audio),
    )
    return MultiModalConfig(mods, fusion=FusionStrategy(fusion), num_classes=len(SHAPES),
                            attention=CrossModalAttentionConfig(dim, heads),
                            late_mode=late_mode, middle_layers=tuple(range(layers)),
                            fusion_layers=2)
