"""Per-unit evidence so Proof-of-Contribution judges a slice update with the same rigour as a
full one (issue 26 part B): every update's sketch and norm are also kept per unit (embed,
blocks.i; `slices.units_of`), so a slice is compared with exactly the same tensors of its
peers (full or sliced) and of the last global change.

The sketch is a sum over tensors (`sketch.py`), so the unit sketches add up to the full sketch
at no extra cost, and a peer's sketch restricted to a slice is the sum of its unit sketches
over the slice's units.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from ailo.federation.core import sketch as sk


def unit_sketches(tensors: Mapping[str, torch.Tensor], secret: bytes,
                  groups: Sequence[Sequence[str]]) -> dict[int, np.ndarray]:
    """unit index → sketch of that unit's tensors, for the units `tensors` holds."""
    out = {}
    for i, names in enumerate(groups):
        part = {n: tensors[n] for n in names if n in tensors}
        if part:
            out[i] = sk.sketch(part, secret)
    return out


def total(units: Mapping[int, np.ndarray]) -> np.ndarray:
    return np.sum(list(units.values()), axis=0) if units else np.zeros(sk.SKETCH_DIM)


def encode_units(units: Mapping[int, np.ndarray]) -> dict[str, str]:
    return {str(i): sk.encode(v) for i, v in units.items()}


def decode_units(stored: Mapping[str, str]) -> dict[int, np.ndarray]:
    return {int(i): sk.decode(v) for i, v in stored.items()}


def restricted(units: Mapping[int, np.ndarray], span: Sequence[int]) -> np.ndarray | None:
    """The sketch of the tensors of units [a, b) only (None when none of them is held)."""
    got = [units[i] for i in range(span[0], span[1]) if i in units]
    return np.sum(got, axis=0) if got else None


def unit_norms(tensors: Mapping[str, torch.Tensor], groups: Sequence[Sequence[str]], work: float) -> list[float | None]:
    """‖Δ_unit‖ / (lr·steps) per unit (None: the update does not carry the unit)."""
    out: list[float | None] = []
    for names in groups:
        held = [tensors[n] for n in names if n in tensors]
        out.append(math.sqrt(sum(float((t.double() ** 2).sum()) for t in held)) / work if held else None)
    return out


def norm_history(rows_unit_norms: Sequence[Sequence[float | None]], span: Sequence[int]) -> list[float]:
    """Norm per work of recent accepted updates restricted to units [a, b), from those that
    trained every one of them (full updates and slices covering the span)."""
    out = []
    for norms in rows_unit_norms:
        part = norms[span[0]:span[1]]
        if len(part) == span[1] - span[0] and all(v is not None for v in part):
            out.append(math.sqrt(sum(v * v for v in part)))
    return out
