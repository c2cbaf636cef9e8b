"""Tokenizers into GGUF metadata (through ``gguf.vocab``) and back (through transformers).

llama.cpp reads the vocabulary from the GGUF file itself (``tokenizer.ggml.*``); a model
folder's ``tokenizer.json`` or ``tokenizer.model`` is turned into those keys by the same
``gguf.vocab`` classes llama.cpp's converter uses:

- ``tokenizer.model`` (sentencepiece): ``gguf.SentencePieceVocab`` -> ``"llama"``;
- ``tokenizer.json`` BPE with byte fallback (Llama 2, Mistral): ``gguf.LlamaHfVocab`` ->
  ``"llama"``;
- ``tokenizer.json`` byte-level BPE (GPT-2, Llama 3, Qwen2): ``gguf.BpeVocab`` -> ``"gpt2"``,
  with its merges; the pre-tokenizer is named for llama.cpp when transformers' table of
  llama.cpp pre-tokenizers has its split pattern, else ``"default"`` (and the record says so);
- ``tokenizer.json`` WordPiece (BERT) -> ``"bert"``, in llama.cpp's phantom-space spelling.

Special token ids and the add-BOS/EOS flags come from ``gguf.SpecialVocab``. A folder with no
tokenizer gets ``tokenizer.ggml.model = "none"``: llama.cpp then loads the model and runs it
on token ids, but cannot tokenize or detokenize text.

Back: transformers rebuilds a tokenizer from a GGUF file's metadata, which
``hf_tokenizer_files`` saves as Hugging Face tokenizer files: the files
``AutoTokenizer.from_pretrained(folder, gguf_file=name)`` gives, byte for byte, from the class
it would pick (named directly, which spares its ``gguf.GGUFReader`` pass over the vocabulary).
Reading a file's tokenizer (``read_vocabulary``) counts its arrays without decoding them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MLMFError
from ..files import read_json
from .gguf_meta import array_length

if TYPE_CHECKING:
    from gguf import GGUFWriter

LOWERCASE_KEY = "tokenizer.ggml.normalizer.lowercase"  # not yet in gguf 0.19's Keys
NO_TOKENIZER = ("no tokenizer: tokenizer.ggml.model is 'none', so llama.cpp runs the model on "
                "token ids but cannot tokenize or detokenize text")


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer a GGUF file carries.

    Attributes:
        model: ``tokenizer.ggml.model``: ``"llama"``, ``"gpt2"``, ``"bert"`` or ``"none"``.
        tokens: how many tokens (padded to the embedding's rows).
        merges: how many BPE merges (0 for the other kinds).
        source: the file it was read from, or None.
        note: what llama.cpp will not do with it, or "".
    """

    model: str
    tokens: int
    merges: int = 0
    source: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "tokens": self.tokens, "merges": self.merges,
                "source": self.source, "note": self.note}


def write_vocabulary(folder: Path, writer: GGUFWriter, n_vocab: int) -> Vocabulary:
    """Add the tokenizer of the model folder ``folder`` to ``writer``'s metadata.

    Args:
        folder: the Hugging Face model folder.
        writer: a ``gguf.GGUFWriter`` collecting the metadata.
        n_vocab: rows of the token embedding; the vocabulary is padded to it with unused
            ``[PAD<i>]`` tokens, as llama.cpp's converter does.

    Raises:
        MLMFError: a tokenizer file that cannot be read, or more tokens than ``n_vocab``.
    """
    if (folder / "tokenizer.model").is_file():
        return _sentencepiece(folder, writer, n_vocab)
    path = folder / "tokenizer.json"
    if not path.is_file():
        writer.add_tokenizer_model("none")
        return Vocabulary("none", 0, note=NO_TOKENIZER)
    doc = read_json(path, "tokenizer.json", expect=dict)
    try:
        model = doc["model"]
        kind, byte_fallback = model["type"], bool(model.get("byte_fallback"))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise MLMFError(f"cannot read the tokenizer ({type(e).__name__}: {e})", path) from None
    if kind == "BPE" and byte_fallback:
        return _llama_hf(folder, writer, n_vocab)
    if kind == "BPE":
        return _byte_level(folder, doc, writer, n_vocab)
    if kind == "WordPiece":
        return _wordpiece(folder, doc, writer, n_vocab)
    writer.add_tokenizer_model("none")
    return Vocabulary("none", 0, source=os.fspath(path),
                      note=f"a {kind} tokenizer.json has no llama.cpp form in this lab; "
                      f"{NO_TOKENIZER}")


def _add_tokens(writer: GGUFWriter, model: str, tokens: list[Any], scores: list[float] | None,
                types: list[int], n_vocab: int, source: Path) -> None:
    from gguf import TokenType

    if len(tokens) > n_vocab:
        raise MLMFError(f"the tokenizer has {len(tokens)} tokens but the token embedding only "
                        f"{n_vocab} rows", source)
    for i in range(len(tokens), n_vocab):  # rows the tokenizer never produces
        tokens.append(f"[PAD{i}]")
        types.append(TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    writer.add_tokenizer_model(model)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(types)


def _special(folder: Path, writer: GGUFWriter, n_vocab: int, merges: bool = False) -> int:
    from gguf import SpecialVocab

    special = SpecialVocab(folder, load_merges=merges, n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)
    return len(special.merges)


def _sentencepiece(folder: Path, writer: GGUFWriter, n_vocab: int) -> Vocabulary:
    from gguf import SentencePieceVocab

    path = folder / "tokenizer.model"
    try:
        vocab = SentencePieceVocab(folder)
    except RuntimeError as e:  # gguf raises this when sentencepiece is missing
        raise MLMFError(f"reading tokenizer.model needs the sentencepiece package ({e}); "
                        "`pip install sentencepiece`", path) from None
    except (OSError, ValueError) as e:
        raise MLMFError(f"cannot read the sentencepiece model ({e})", path) from None
    tokens, scores, types = (list(x) for x in zip(*vocab.all_tokens(), strict=True))
    _add_tokens(writer, "llama", tokens, scores, types, n_vocab, path)
    writer.add_tokenizer_pre("default")
    _special(folder, writer, n_vocab)
    return Vocabulary("llama", n_vocab, 0, os.fspath(path))


def _llama_hf(folder: Path, writer: GGUFWriter, n_vocab: int) -> Vocabulary:
    from gguf import LlamaHfVocab

    path = folder / "tokenizer.json"
    try:
        vocab = LlamaHfVocab(folder)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise MLMFError(f"gguf.LlamaHfVocab cannot read the tokenizer ({e})", path) from None
    tokens, scores, types = (list(x) for x in zip(*vocab.all_tokens(), strict=True))
    _add_tokens(writer, "llama", tokens, scores, types, n_vocab, path)
    writer.add_tokenizer_pre("default")
    _special(folder, writer, n_vocab)
    return Vocabulary("llama", n_vocab, 0, os.fspath(path))


def _byte_level(folder: Path, doc: dict[str, Any], writer: GGUFWriter,
                n_vocab: int) -> Vocabulary:
    from gguf import BpeVocab

    path = folder / "tokenizer.json"
    try:
        vocab = BpeVocab(folder)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise MLMFError(f"gguf.BpeVocab cannot read the tokenizer ({e})", path) from None
    tokens, _, types = (list(x) for x in zip(*vocab.all_tokens(), strict=True))
    tokens = [t if isinstance(t, str) else t.decode() for t in tokens]
    added = _added_types(doc)
    types = [added.get(t, kind) for t, kind in zip(tokens, types, strict=True)]
    _add_tokens(writer, "gpt2", tokens, None, types, n_vocab, path)
    pre = pre_tokenizer_name(doc.get("pre_tokenizer"))
    writer.add_tokenizer_pre(pre or "default")
    merges = _special(folder, writer, n_vocab, merges=True)
    note = "" if pre else ("llama.cpp does not know this pre-tokenizer: it splits text with "
                           "its default pattern, so its tokens may differ from the tokenizer's")
    return Vocabulary("gpt2", n_vocab, merges, os.fspath(path), note)


def _added_types(doc: dict[str, Any]) -> dict[str, int]:
    """Added token -> its type as llama.cpp's converter gives it: CONTROL when special, else
    USER_DEFINED (``gguf.BpeVocab`` misses those that are also in the base vocabulary)."""
    from gguf import TokenType

    return {t["content"]: int(TokenType.CONTROL if t.get("special") else TokenType.USER_DEFINED)
            for t in doc.get("added_tokens", []) if isinstance(t, dict) and "content" in t}


def pre_tokenizer_name(pre: Any) -> str | None:
    """llama.cpp's name (``tokenizer.ggml.pre``) for a byte-level ``pre_tokenizer`` of
    ``tokenizer.json``: ``"gpt-2"`` for GPT-2's own, else the first name in transformers'
    table of llama.cpp pre-tokenizers whose split pattern is the tokenizer's; None if none."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    split = next((p for p in parts or [] if isinstance(p, dict) and p.get("type") == "Split"),
                 None)
    pattern = (split or {}).get("pattern", {})
    regex = pattern.get("Regex") if isinstance(pattern, dict) else None
    if regex is None:
        return None
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
        )
    except ImportError:  # transformers is optional here: llama.cpp then uses its default
        return None
    return next((name for name, split in GGUF_PRE_TOKENIZER_SPLITS.items() if split == regex),
                None)


def _wordpiece(folder: Path, doc: dict[str, Any], writer: GGUFWriter,
               n_vocab: int) -> Vocabulary:
    from gguf import TokenType

    path = folder / "tokenizer.json"
    vocab = doc["model"].get("vocab")
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise MLMFError("the WordPiece vocabulary must map tokens to the ids 0..n-1", path)
    special = {t.get("content") for t in doc.get("added_tokens", []) if t.get("special")}
    tokens: list[Any] = []
    types: list[int] = []
    for token in sorted(vocab, key=vocab.__getitem__):
        # llama.cpp's WordPiece spells word starts with a phantom space, and "##" pieces bare
        control = token in special
        types.append(TokenType.CONTROL if control else TokenType.NORMAL)
        tokens.append(token if control else token[2:] if token.startswith("##")
                      else "\u2581" + token)
    _add_tokens(writer, "bert", tokens, None, types, n_vocab, path)
    writer.add_tokenizer_pre("default")
    normalizer = doc.get("normalizer")
    if isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer":
        # llama.cpp lowercases unless told otherwise: a cased model must say so
        writer.add_bool(LOWERCASE_KEY, bool(normalizer.get("lowercase", True)))
    _special(folder, writer, n_vocab)
    return Vocabulary("bert", n_vocab, 0, os.fspath(path))


def read_vocabulary(metadata: dict[str, Any]) -> Vocabulary:
    """What a GGUF file's metadata says of its tokenizer (its arrays counted, not decoded)."""
    model = metadata.get("tokenizer.ggml.model")
    if not isinstance(model, str) or model == "none":
        return Vocabulary("none", 0, note=NO_TOKENIZER)
    return Vocabulary(model, array_length(metadata, "tokenizer.ggml.tokens") or 0,
                      array_length(metadata, "tokenizer.ggml.merges") or 0)


def hf_tokenizer_files(path: Path, architecture: str) -> dict[str, bytes]:
    """The Hugging Face tokenizer files transformers builds from a GGUF file's metadata.

    Args:
        path: the GGUF file.
        architecture: its ``general.architecture``.

    Returns:
        File name -> content (``tokenizer.json``, ``tokenizer_config.json``, ...), as
        ``AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained`` writes them.

    Raises:
        MLMFError: transformers cannot build a tokenizer of this kind.
    """
    from transformers import AutoConfig, AutoTokenizer, TokenizersBackend
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    folder = os.fspath(path.parent)
    try:
        # AutoTokenizer picks the class from a config it rebuilds with gguf.GGUFReader, which
        # walks the vocabulary item by item (8-15 s for Llama 3's) to read a few numbers.
        # With no tokenizer_config.json beside the file to name another, its pick is the class
        # registered for that config's model_type: the architecture's name for those mapped
        # here (llama, qwen2, gpt2; transformers' "mistral" and "llama" share their class)
        if (path.parent / "tokenizer_config.json").exists():
            loader: Any = AutoTokenizer
        else:
            config = AutoConfig.for_model(architecture)
            loader = TOKENIZER_MAPPING.get(type(config), TokenizersBackend) or AutoTokenizer
        tokenizer = loader.from_pretrained(folder, gguf_file=path.name)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise MLMFError(f"transformers cannot rebuild the tokenizer ({e})", path) from None
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


__all__ = ["NO_TOKENIZER", "Vocabulary", "hf_tokenizer_files", "pre_tokenizer_name",
           "read_vocabulary", "write_vocabulary"]
