"""A BERT encoder small enough to read at once, for the MiniLM sentence encoder.

Module names follow Hugging Face's ``BertModel`` so its ``model.safetensors``
loads as is (onto the meta device, then ``ml.load_into``: weights stay memory-mapped).
Sentence embeddings are mean-pooled over the attention mask and L2-normalized,
as sentence-transformers' all-MiniLM-L6-v2 does.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MLMFError, StateDictError
from ..files import read_json


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384  # d
    num_hidden_layers: int = 6
    num_attention_heads: int = 12  # nh; head size hs = d / nh
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise MLMFError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> BertConfig:
        """Read the fields we use from an HF ``config.json`` (others are ignored)."""
        doc = read_json(path, "the model config", expect=dict)
        return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc})


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.register_buffer("position_ids", torch.arange(c.max_position_embeddings)[None])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, d)
        position_ids: torch.Tensor = self.position_ids  # type: ignore[assignment]
        pos = position_ids[:, : ids.shape[1]]
        x = self.word_embeddings(ids) + self.position_embeddings(pos)
        x = x + self.token_type_embeddings(torch.zeros_like(ids))
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.nh = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)


class AttentionOutput(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class Attention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(c)
        self.output = AttentionOutput(c)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, d = x.shape
        s = self.self

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, nh, T, hs)
            return t.view(B, T, s.nh, d // s.nh).transpose(1, 2)

        q, k, v = heads(s.query(x)), heads(s.key(x)), heads(s.value(x))
        if need_weights:  # the views want the (B, nh, T, T) map itself
            att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // s.nh) + bias, dim=-1)
            y = att @ v
        else:
            att, y = None, F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        y = y.transpose(1, 2).reshape(B, T, d)
        return self.output.LayerNorm(x + self.output.dense(y)), att


class Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int, eps: float | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(n_out, eps=eps)


class Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Dense(c.hidden_size, c.intermediate_size)
        self.output = Dense(c.intermediate_size, c.hidden_size, eps=c.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, att = self.attention(x, bias, need_weights)
        h = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.output.dense(h)), att


class Encoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))


class Pooler(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class MiniLM(nn.Module):
    """BERT encoder + mean pooling. ``MiniLM.from_pretrained(ml.examples.minilm_dir())``."""

    def __init__(self, config: BertConfig, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)  # in the file; unused by sentence embeddings

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> MiniLM:
        """Build on the meta device and memory-map the weights of ``folder``'s weight file.

        A file without ``embeddings.position_ids`` (what transformers >= 4.31 saves: the
        buffer is non-persistent there) gets it rebuilt, as ``BertEmbeddings`` does.

        Raises:
            StateDictError: any other tensor missing, unexpected or of another shape.
        """
        from ..loading import load_into

        folder = Path(folder)
        config = BertConfig.from_json(folder / "config.json")
        with torch.device("meta"):
            model = cls(config, tokenizer=load_tokenizer(folder))
        weights = folder / "model.safetensors"
        path = weights if weights.is_file() else folder
        report = load_into(model, path, strict=False)
        if report.missing == ["embeddings.position_ids"]:
            model.embeddings.position_ids = torch.arange(config.max_position_embeddings)[None]
            report = report._replace(missing=[])
        if not report.ok:
            raise StateDictError(f"the model and the file disagree: {report.describe()}", path)
        return model.eval()

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T), 1 = token, 0 = padding
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Token states (B, T, d) and, if asked, one (B, nh, T, T) attention map per layer."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        x = self.embeddings(input_ids)
        maps = []
        for layer in self.encoder.layer:
            x, att = layer(x, bias, output_attentions)
            if att is not None:
                maps.append(att)
        return x, maps

    def tokenize(self, texts: list[str], max_length: int = 128) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (B, T), padded to the longest text."""
        if self.tokenizer is None:
            raise MLMFError("this MiniLM has no tokenizer; build it with from_pretrained(folder)")
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise MLMFError("expected a non-empty list of non-empty strings to encode")
        tok = self.tokenizer
        tok.enable_truncation(max_length)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        enc = tok.encode_batch(texts)
        return {
            "input_ids": torch.tensor([e.ids for e in enc]),
            "attention_mask": torch.tensor([e.attention_mask for e in enc]),
        }

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings (N, d): masked mean of the token states, L2-normalized."""
        batch = self.tokenize(texts)
        states, _ = self(batch["input_ids"], batch["attention_mask"])
        return F.normalize(mean_pool(states, batch["attention_mask"]), dim=-1)


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, T, d) states over the positions where ``mask`` (B, T) is 1."""
    m = mask[..., None].to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1e-9)


def load_tokenizer(folder: Path) -> Any:
    """The model's own ``tokenizer.json`` through the ``tokenizers`` package."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad files
        raise MLMFError(f"cannot read the tokenizer ({e})", path) from None
