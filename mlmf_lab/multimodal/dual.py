"""A CLIP-style dual encoder assembled from a CLIP folder: the text and image towers of
``hf.load_encoder`` (with their projections) and the folder's learned temperature.

The maths is ``contrastive_logits``: both embeddings L2-normalized, their dot products
times ``exp(logit_scale)``, as ``CLIPModel`` computes them.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import MLMFError
from ..formats import open_weights
from . import hf
from .config import Modality
from .maps import AttentionMaps, TokenInfo, patch_labels, token_labels
from .preprocess.image import ImageBatch
from .preprocess.text import TextBatch


def contrastive_logits(text: torch.Tensor, image: torch.Tensor,
                       logit_scale: torch.Tensor) -> torch.Tensor:
    """(Bt, P) and (Bi, P) embeddings -> (Bt, Bi) ``exp(logit_scale)`` x cosine similarity.

    Example:
        >>> contrastive_logits(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]]),
        ...                    torch.tensor(0.0))
        tensor([[0.6000]])
    """
    return normalized(text) @ normalized(image).T * logit_scale.exp()


def normalized(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (``CLIPModel``'s ``_get_vector_norm``)."""
    return x / x.pow(2).sum(dim=-1, keepdim=True).pow(0.5)


class DualOutput(NamedTuple):
    """text_embeds (Bt, P) and image_embeds (Bi, P), L2-normalized; logits_per_text
    (Bt, Bi) and logits_per_image (Bi, Bt); attentions: ``"text"`` and ``"image"`` (the
    towers' self-attention) with ``output_attentions=True``."""

    text_embeds: torch.Tensor
    image_embeds: torch.Tensor
    logits_per_text: torch.Tensor
    logits_per_image: torch.Tensor
    attentions: dict[str, AttentionMaps]


class DualEncoder(nn.Module):
    """Text tower, image tower, one temperature: what ``CLIPModel`` computes, on its parts.

    Example:
        >>> clip = DualEncoder.from_pretrained("clip-folder")  # doctest: +SKIP
        >>> prep = ml.multimodal.preprocessing_for("clip-folder")  # doctest: +SKIP
        >>> out = clip(tokenize(texts, prep.text.tokenizer, prep.text),
        ...            preprocess_images(images, prep.image))  # doctest: +SKIP
        >>> out.logits_per_image.softmax(-1)  # doctest: +SKIP
    """

    def __init__(self, text: nn.Module, image: nn.Module, logit_scale: torch.Tensor) -> None:
        super().__init__()
        self.text = text
        self.image = image
        self.logit_scale = nn.Parameter(logit_scale.detach().reshape(()).float())

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> DualEncoder:
        """Both towers of a CLIP folder (weights mapped) and its ``logit_scale``.

        Raises:
            ConfigError: not a CLIP folder (the registry names what loads);
            StateDictError: weights that do not fit its config.json.
        """
        text = hf.load_encoder(folder, Modality.TEXT)
        image = hf.load_encoder(folder, Modality.IMAGE)
        with open_weights(folder) as wf:
            if "logit_scale" not in wf:
                raise MLMFError("expected a CLIPModel checkpoint with a logit_scale, found "
                                "none (a single tower?); load that tower with load_encoder",
                                folder)
            scale = wf.tensor("logit_scale")
        return cls(text, image, scale).eval()

    def text_features(self, text: Any, output_attentions: bool = False) -> Any:
        """The text tower's output (``text_embeds``: projected, not normalized)."""
        ids, mask = _text(text)
        with hf.eager_attention(self.text) if output_attentions else nullcontext():
            return self.text(input_ids=ids, attention_mask=mask,
                             output_attentions=output_attentions)

    def image_features(self, images: Any, output_attentions: bool = False) -> Any:
        """The image tower's output (``image_embeds``: projected, not normalized)."""
        pixels = images.pixels if isinstance(images, ImageBatch) else images
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4:
            raise MLMFError(f"expected pixels (B, 3, H, W) or an ImageBatch, found "
                            f"{getattr(pixels, 'shape', type(pixels).__name__)}")
        with hf.eager_attention(self.image) if output_attentions else nullcontext():
            return self.image(pixel_values=pixels, output_attentions=output_attentions)

    def forward(self, text: Any, images: Any, output_attentions: bool = False) -> DualOutput:
        """Embed both sides and score every text against every image.

        Args:
            text: a ``TextBatch``, ``(ids, mask)`` or ids (B, L).
            images: an ``ImageBatch`` (its pixels) or pixels (B, 3, S, S).
            output_attentions: also the towers' attention maps.
        """
        t = self.text_features(text, output_attentions)
        i = self.image_features(images, output_attentions)
        logits = contrastive_logits(t.text_embeds, i.image_embeds, self.logit_scale)
        maps: dict[str, AttentionMaps] = {}
        if output_attentions:
            words = TokenInfo("text", token_labels(text, _text(text)[0]))
            config: Any = self.image.config
            side = int(config.image_size) // int(config.patch_size)
            patches = TokenInfo.uniform("image", patch_labels((side, side), 1),
                                        i.image_embeds.shape[0], grid=(side, side),
                                        patch_offset=1)
            maps = {"text": AttentionMaps.build("text", t.attentions, words, [words]),
                    "image": AttentionMaps.build("image", i.attentions, patches, [patches])}
        return DualOutput(normalized(t.text_embeds), normalized(i.image_embeds), logits,
                          logits.T, maps)


def _text(text: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(text, TextBatch):
        return text.input_ids, text.attention_mask.long()
    if isinstance(text, tuple) and len(text) == 2:
        return text[0], text[1].long()
    if isinstance(text, torch.Tensor) and text.dim() == 2:
        return text, None
    raise MLMFError(f"expected a TextBatch, (ids, mask) or ids (B, L), found "
                    f"{type(text).__name__}")


def load_dual_encoder(folder: str | os.PathLike[str]) -> DualEncoder:
    """``DualEncoder.from_pretrained(folder)``: a CLIP folder as a dual encoder."""
    return DualEncoder.from_pretrained(folder)
