"""Text preprocessing: the model's own ``tokenizer.json`` through the ``tokenizers`` package.

Padding (to the longest text or to ``max_length``), truncation and attention masks come
from the tokenizer itself, so ids match what the pretrained model was trained with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from ...errors import ConfigError, MLMFError
from .config import TextPreprocessing

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class TextBatch(NamedTuple):
    """Tokenized texts.

    input_ids: (B, L) int64. attention_mask: (B, L) bool, True on real tokens.
    tokens: the token strings of each text, padding included.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[list[str]]


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` (or a folder holding one).

    Raises:
        MLMFError: the file is missing or is not a tokenizer the package can read.
    """
    from tokenizers import Tokenizer

    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise MLMFError("expected a tokenizer.json file, found nothing there", p)
    try:
        return Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise MLMFError(f"expected a tokenizers JSON file, cannot parse it: {exc}", p) from None


def _pad_id(tok: Tokenizer, pad_token: str | None = None) -> tuple[int, str]:
    """The padding id and token: ``pad_token`` when given (it must be in the vocabulary),
    else the first of [PAD], <pad>, <PAD>, else id 0."""
    if pad_token is not None:
        idx = tok.token_to_id(pad_token)
        if idx is None:
            raise ConfigError(f"pad_token {pad_token!r} is not in this tokenizer's vocabulary "
                              f"of {tok.get_vocab_size()} tokens")
        return idx, pad_token
    for cand in ("[PAD]", "<pad>", "<PAD>"):
        idx = tok.token_to_id(cand)
        if idx is not None:
            return idx, cand
    return 0, tok.id_to_token(0) or "[PAD]"


def tokenize(
    texts: Sequence[str] | str, tokenizer: Tokenizer | str | os.PathLike[str],
    cfg: TextPreprocessing | None = None,
) -> TextBatch:
    """Tokenize a batch with padding, truncation and attention masks.

    Args:
        texts: the strings; none may be empty or only whitespace.
        tokenizer: a ``tokenizers.Tokenizer`` or the path of its ``tokenizer.json``.
        cfg: max_length, padding ("longest" | "max_length") and truncation.

    Returns:
        ``TextBatch`` (input_ids, attention_mask, tokens).

    Raises:
        MLMFError: empty batch or empty text; a text longer than ``max_length`` when
            truncation is off.

    Example:
        >>> batch = tokenize(["a red circle"], ml.examples.minilm_dir())  # doctest: +SKIP
    """
    cfg = cfg or TextPreprocessing()
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise MLMFError("expected at least one text, found an empty batch")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise MLMFError(f"text {i}: expected a string, found {type(t).__name__}")
        if not t.strip():
            raise MLMFError(f"text {i}: expected some words, found an empty string")
    tok = tokenizer if not isinstance(tokenizer, (str, os.PathLike)) else load_tokenizer(tokenizer)
    tok = _configured(tok, cfg)
    encs = tok.encode_batch(list(texts))
    if not cfg.truncation:
        for i, e in enumerate(encs):
            if len(e.ids) > cfg.max_length:
                raise MLMFError(f"text {i} has {len(e.ids)} tokens, more than max_length "
                                f"{cfg.max_length}; enable truncation or raise max_length")
    ids = torch.tensor([e.ids for e in encs], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.bool)
    return TextBatch(ids, mask, [list(e.tokens) for e in encs])


def _configured(tok: Tokenizer, cfg: TextPreprocessing) -> Tokenizer:
    """A copy of ``tok`` with this config's padding and truncation (the original untouched)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tok.to_str())
    if cfg.truncation:
        try:
            tok.enable_truncation(max_length=cfg.max_length)
        except Exception as exc:
            raise ConfigError(f"max_length {cfg.max_length} is too small for this tokenizer's "
                              f"special tokens: {exc}") from None
    else:
        tok.no_truncation()
    pad_id, pad_token = _pad_id(tok, cfg.pad_token)
    length = cfg.max_length if cfg.padding == "max_length" else None
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token, length=length)
    return tok


def build_word_tokenizer(words: Sequence[str]) -> Tokenizer:
    """A word-level tokenizer (lower case, whitespace split, [CLS] ... [SEP]) for small demos.

    Ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, then ``words`` in order. Save it with
    ``tok.save(path)`` to get a ``tokenizer.json`` like any pretrained model's.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok
