"""Tiny Hugging Face models and tokenizers, made on the spot and saved by transformers itself.

Nothing is downloaded: the tokenizers are trained by the ``tokenizers`` library on a few
sentences, the models are random (seeded), with non-trivial norms so that a wrong norm
would show. Sizes are the smallest that still exercise the layouts: two heads of K/V for
four of Q (grouped-query attention), rows of 256 so that every GGUF block type applies.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

CORPUS = ["the quick brown fox jumps over the lazy dog", "weights are files and files are weights",
          "llama and gguf and transformers", "hello world, hello models 12 345"] * 20
TEXTS = ["hello world, the fox", "weights are files", "the lazy dog and 12 models"]


def _trained(size: int, special: list[str], **model: object) -> dict[str, object]:
    """A BPE trained on ``CORPUS``, as ``tokenizer.json``'s ``model`` section."""
    tok = Tokenizer(models.BPE(unk_token=model.get("unk_token")))
    if model.get("spm"):
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    extra = {} if model.get("spm") else {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()}
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=special, show_progress=False,
                                  **extra)
    tok.train_from_iterator(CORPUS, trainer)
    return json.loads(tok.to_str())["model"]


def spm_tokenizer(folder: Path, size: int = 320) -> int:
    """A Llama-2-style tokenizer (BPE with byte fallback, ``▁`` for spaces); its size."""
    trained = _trained(size - 256, ["<unk>", "<s>", "</s>"], unk_token="<unk>", spm=True)
    order = sorted(trained["vocab"], key=trained["vocab"].get)
    vocab: dict[str, int] = {}
    for token in order[:3] + [f"<0x{b:02X}>" for b in range(256)] + order[3:]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    _save(tok, folder, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                        "add_bos_token": True, "add_eos_token": False})
    return len(vocab)


def bpe_tokenizer(folder: Path, size: int = 320) -> int:
    """A GPT-2-style byte-level BPE tokenizer; its size."""
    trained = _trained(size - 1, [])
    vocab = dict(trained["vocab"])
    vocab["<|endoftext|>"] = len(vocab)
    merges = [tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    _save(tok, folder, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
    return len(vocab)


def wordpiece_tokenizer(folder: Path, size: int = 256) -> int:
    """A BERT-style WordPiece tokenizer; its size."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=size, special_tokens=special, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    _save(tok, folder, {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                        "unk_token": "[UNK]", "mask_token": "[MASK]"})
    return tok.get_vocab_size()


def _save(tok: Tokenizer, folder: Path, config: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _roughen_norms(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def causal_lm(folder: Path, model_type: str = "llama", tie: bool = False, seed: int = 0,
              tokenizer: bool = True, rope: dict[str, object] | None = None) -> torch.nn.Module:
    """A tiny llama / mistral / qwen2 causal LM saved by ``save_pretrained`` (eval mode), with
    a Llama-2-style tokenizer (qwen2: byte-level BPE) unless ``tokenizer`` is False, and the
    rotary scaling ``rope`` (``rope_parameters`` without ``rope_theta``) when given."""
    import transformers

    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
               "mistral": ("MistralConfig", "MistralForCausalLM"),
               "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
    config_cls, model_cls = (getattr(transformers, n) for n in classes[model_type])
    make = bpe_tokenizer if model_type == "qwen2" else spm_tokenizer  # what each family uses
    n_vocab = make(folder) if tokenizer else 320
    bos, eos = (n_vocab - 1, n_vocab - 1) if make is bpe_tokenizer else (1, 2)
    config = config_cls(vocab_size=n_vocab, hidden_size=256, intermediate_size=512,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=256, tie_word_embeddings=tie, bos_token_id=bos,
                        eos_token_id=eos, rms_norm_eps=1e-5,
                        **({} if rope is None else
                           {"rope_parameters": {"rope_theta": 10000.0, **rope}}))
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    _roughen_norms(model, seed)
    model.save_pretrained(folder)
    return model


def gpt2(folder: Path, seed: int = 0) -> torch.nn.Module:
    """A tiny GPT-2 (tied head, ``Conv1D`` weights) with its byte-level tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    n_vocab = bpe_tokenizer(folder)
    config = GPT2Config(vocab_size=n_vocab, n_positions=256, n_embd=256, n_layer=2, n_head=4,
                        bos_token_id=n_vocab - 1, eos_token_id=n_vocab - 1)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    _roughen_norms(model, seed)
    model.save_pretrained(folder)
    return model


def bert(folder: Path, seed: int = 0) -> torch.nn.Module:
    """A tiny BERT encoder (``BertModel``) with its WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    n_vocab = wordpiece_tokenizer(folder)
    config = BertConfig(vocab_size=n_vocab, hidden_size=256, intermediate_size=512,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                        pad_token_id=0)
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    _roughen_norms(model, seed)
    model.save_pretrained(folder)
    return model


def llama_state(layers: int = 16, vocab: int = 128, hidden: int = 64,
                inter: int = 160) -> dict[str, torch.Tensor]:
    """Tensors named and shaped as transformers' LlamaForCausalLM (16 layers: fine-grained
    enough to balance 4 ranks)."""
    g = torch.Generator().manual_seed(0)
    t = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g)}
    for i in range(layers):
        pre = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[pre + f"self_attn.{name}.weight"] = torch.randn(hidden, hidden, generator=g)
        t[pre + "mlp.gate_proj.weight"] = torch.randn(inter, hidden, generator=g)
        t[pre + "mlp.up_proj.weight"] = torch.randn(inter, hidden, generator=g)
        t[pre + "mlp.down_proj.weight"] = torch.randn(hidden, inter, generator=g)
        t[pre + "input_layernorm.weight"] = torch.ones(hidden)
        t[pre + "post_attention_layernorm.weight"] = torch.ones(hidden)
    t["model.norm.weight"] = torch.ones(hidden)
    t["lm_head.weight"] = torch.randn(vocab, hidden, generator=g)
    return t
