"""Random Llama / Qwen2 / ailo checkpoints written locally, for tests, benchmarks and demos.

Built with `transformers`' own model classes and `save_pretrained`, so the folders are
exactly what a real Hugging Face checkpoint looks like — nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch


def make_hf_checkpoint(directory: str | Path, family: str = "llama", *, vocab: int = 512, hidden: int = 64,
                       layers: int = 4, heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
                       rope_theta: float = 10000.0, tie: bool = False, init_std: float = 0.02,
                       max_positions: int = 2048, eos: int | None = None, seed: int = 0,
                       max_shard_size: str | None = None):
    """Write a random model and return the `transformers` model itself (the reference)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = classes[family]
    config = config_cls(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        num_key_value_heads=kv_heads, intermediate_size=intermediate, rope_theta=rope_theta,
                        tie_word_embeddings=tie, initializer_range=init_std, max_position_embeddings=max_positions,
                        eos_token_id=eos, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), safe_serialization=True, **kwargs)
    return model


def make_byte_bpe_tokenizer(directory: str | Path, vocab: int, text: str | None = None) -> Path:
    """A byte-level BPE `tokenizer.json` of at most `vocab` tokens, trained on a little text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = text or ("the quick brown fox jumps over the lazy dog. " * 20 +
                      "rooms of nodes serve large models together, one span each. " * 20)
    tok.train_from_iterator([corpus], trainer)
    path = Path(directory) / "tokenizer.json"
    path.write_text(tok.to_str())
    return path
