"""Secret random sketches of updates: a k-dimensional fingerprint of a Δ with any number of
parameters, so that round-level checks (duplicates, copies of the global change) cost O(k)
per pair instead of O(model), and only k floats are stored with each update row.

The sketch is a sign-randomised bucket sum (a CountSketch with fixed buckets): coordinate i
of the flattened tensor lands in bucket i mod k with a random sign ±1. It is linear, so
sketch(a − b) = sketch(a) − sketch(b) and the global change's sketch is the difference of two
model sketches, and ⟨S a, S b⟩ is an unbiased estimate of ⟨a, b⟩ (cosine error ≈ 1/√k).

The signs come from a seed that must stay secret (the coordinator keeps it in its state
dir): with known signs a client could add a tiny perturbation that lives entirely in the
sketch's k-dimensional row space and make a copied update look unrelated.
"""
from __future__ import annotations

import base64
import hashlib
import math
from typing import Mapping

import numpy as np
import torch

SKETCH_DIM = 1024
_CHUNK = 1 << 24  # elements per step: bounded working memory for any tensor size
_M32 = 0xFFFFFFFF


def _seed_for(secret: bytes, name: str) -> int:
    digest = hashlib.blake2b(name.encode(), key=secret[:64], digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _signs(seed: int, start: int, n: int, device: torch.device) -> torch.Tensor:
    """±1 for coordinates start … start+n−1: the low bit of a 32-bit integer hash of
    (seed, index), computed in int64 without overflow, so CPU and CUDA give the same signs and a
    sketch stored by a GPU coordinator is comparable with one made later on a CPU."""
    x = torch.arange(start, start + n, dtype=torch.int64, device=device)
    x = (x * 0x9E3779B1 + seed) & _M32
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x045D9F3B) & _M32
    x = x ^ (x >> 16)
    return (x & 1).to(torch.float64) * 2 - 1


@torch.no_grad()
def sketch(tensors: Mapping[str, torch.Tensor], secret: bytes, dim: int = SKETCH_DIM) -> np.ndarray:
    """float64 vector of length `dim`; the same (secret, names, shapes) give the same projection.
    Computed where the tensors are (the coordinator's GPU: ailo-1b's 821 M coordinates take a
    fraction of a second there, against tens of seconds on the CPU)."""
    device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
    out = torch.zeros(dim, dtype=torch.float64, device=device)
    for name in sorted(tensors):
        flat = tensors[name].detach().reshape(-1)
        seed = _seed_for(secret, name)
        for start in range(0, flat.numel(), _CHUNK):
            piece = flat[start:start + _CHUNK].to(device, torch.float64)
            signed = piece * _signs(seed, start, piece.numel(), device)
            pad = (-signed.numel()) % dim   # only the last piece: _CHUNK is a multiple of dim
            if pad:
                signed = torch.cat([signed, signed.new_zeros(pad)])
            out += signed.view(-1, dim).sum(0)
    return out.cpu().numpy()


SHARPEN_POWERS = (0.0, 0.5)  # sign(G)·|G|^p: zero-compute re-sharpenings of the global change G


@torch.no_grad()
def sharpened(old: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], secret: bytes,
              powers: tuple[float, ...] = SHARPEN_POWERS, dim: int = SKETCH_DIM) -> list[np.ndarray]:
    """Sketches of sign(G)·|G|^p (p = 0: sign(G)) for G = old − new, the last global change: what
    a client can make from G without training that looks like AdamW work. The fresh-work check
    removes them with G (`validate.fresh_cosines`). Deliberately few: with a finer basis (clips at
    4 quantiles of |G| too) honest residuals lost their shared part and a farm of 8 smooth
    G-transforms out-voted them (honest −0.25, docs/REWARDS.md). One tensor at a time."""
    out = [np.zeros(dim) for _ in powers]
    for name in sorted(new):
        g = old[name].to(new[name].device, torch.float32) - new[name].float()
        for i, p in enumerate(powers):
            out[i] += sketch({name: torch.sign(g) * g.abs().pow(p) if p else torch.sign(g)}, secret, dim)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """⟨a, b⟩ / min(‖a‖², ‖b‖²): the share of the smaller vector contained in the larger one.
    Unlike the cosine it stays ≈ 1 when orthogonal noise is added to a copy to dilute it."""
    m = min(float(np.dot(a, a)), float(np.dot(b, b)))
    return float(np.dot(a, b) / m) if m > 0 else 0.0


def encode(vec: np.ndarray) -> str:
    """Compact text form for the update row's JSON `extra` (float32, base64)."""
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()


def decode(text: str) -> np.ndarray:
    vec = np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)
    if not np.all(np.isfinite(vec)):
        raise ValueError("sketch is not finite")
    return vec


def norm(vec: np.ndarray) -> float:
    return math.sqrt(float(np.dot(vec, vec)))
