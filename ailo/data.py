"""Token data: a folder of UTF-8 text becomes token batches (SPEC R4 step 2, R5).

Every file is split by position into three fixed, disjoint parts: `train` (the first 90 %),
`val` (next 6 %: the published global validation set) and `holdout` (last 4 %: the
coordinator's fallback Proof-of-Contribution pool when it has no private holdout folder).
`all` is a whole file: a private holdout folder (`ailo coordinator --holdout-dir`, see
`ailo.federation.coordinator.holdout`) is used entirely, since no client ever sees it. Clients get
disjoint shards of `train` by file; their text never leaves their machine.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ailo.paths import cache_dir, corpus_dir
from ailo.tokenizer import encode_batch, eot_id

SPLITS = {"train": (0.0, 0.90), "val": (0.90, 0.96), "holdout": (0.96, 1.0), "all": (0.0, 1.0)}


def text_files(directory: Path) -> list[Path]:
    files = sorted(p for p in Path(directory).rglob("*.txt") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .txt files under {directory}")
    return files


def _split_text(text: str, split: str) -> str:
    try:
        lo, hi = SPLITS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}") from None
    n = len(text)
    return text[int(n * lo): int(n * hi)]


def shard_files(files: list[Path], shard: int, num_shards: int) -> list[Path]:
    """Client `shard` of `num_shards` owns every num_shards-th file (disjoint, covering)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} outside 0..{num_shards - 1}")
    return files[shard::num_shards]


def tokenize_files(files: list[Path], split: str, cache: Path | None = None) -> np.ndarray:
    """Token ids of `split` of each file, documents separated by <|endoftext|>; cached on disk."""
    key = hashlib.sha256()
    for f in files:
        key.update(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns};".encode())
    key.update(split.encode())
    cache = cache or cache_dir()
    path = cache / f"tokens-{key.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    texts = [_split_text(f.read_text(encoding="utf-8", errors="replace"), split) for f in files]
    eot = eot_id()
    ids: list[int] = []
    for doc in encode_batch(texts):
        ids.extend(doc)
        ids.append(eot)
    arr = np.asarray(ids, dtype=np.int32)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


@dataclass
class TokenDataset:
    """A flat token stream from which fixed-length training windows are drawn."""

    tokens: np.ndarray

    @classmethod
    def from_dir(cls, directory: Path | str | None = None, split: str = "train",
                 shard: int = 0, num_shards: int = 1) -> "TokenDataset":
        files = shard_files(text_files(Path(directory or corpus_dir())), shard, num_shards)
        return cls(tokenize_files(files, split))

    def __len__(self) -> int:
        return len(self.tokens)

    def random_batches(self, batch_size: int, seq_len: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (inputs, targets) batches of random windows, reproducible from `seed`."""
        if len(self.tokens) <= seq_len + 1:
            raise ValueError(f"dataset of {len(self.tokens)} tokens is shorter than one window of {seq_len + 1}")
        rng = np.random.default_rng(seed)
        data = torch.from_numpy(self.tokens.astype(np.int64))
        while True:
            starts = torch.from_numpy(rng.integers(0, len(self.tokens) - seq_len - 1, size=batch_size))
            idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
            window = data[idx]
            yield window[:, :-1], window[:, 1:]

    def epoch_batches(self, batch_size: int, seq_len: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over non-overlapping windows in a shuffled order (an epoch, SPEC R4's E)."""
        n = (len(self.tokens) - 1) // seq_len
        if n < 1:
            raise ValueError(f"dataset of {len(self.tokens)} tokens holds no window of {seq_len + 1}")
        data = torch.from_numpy(self.tokens.astype(np.int64))
        order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
        for i in range(0, n, batch_size):
            starts = order[i:i + batch_size] * seq_len
            idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
            window = data[idx]
            yield window[:, :-1], window[:, 1:]

    def fixed_batches(self, count: int, batch_size: int, seq_len: int, seed: int = 1234) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed evaluation set: the same windows every time for the same arguments."""
        it = self.random_batches(batch_size, seq_len, seed)
        return [next(it) for _ in range(count)]


def carve_private(source: Path, public: Path, private: Path, every: int = 10) -> tuple[list[Path], list[Path]]:
    """Split a corpus folder by file into a public folder (what workers train on) and a private
    one (the coordinator's PoC holdout, `--holdout-dir`), as symlinks: every `every`-th file,
    counted by play/document stem so two editions of one text stay on the same side."""
    files = text_files(source)
    stems = sorted({f.stem.removesuffix("_f").removesuffix("_gut") for f in files})
    secret = set(stems[every // 2::every])
    public, private = Path(public), Path(private)
    sides: tuple[list[Path], list[Path]] = ([], [])
    for f in files:
        is_private = f.stem.removesuffix("_f").removesuffix("_gut") in secret
        target = (private if is_private else public) / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(f.resolve())
        sides[is_private].append(target)
    return sides
