"""The open round's aggregate, kept in O(model) memory however many updates (K) arrive.

A `StreamingAggregator` (FedAvg) folds each update into one fp32 running sum the moment it is
accepted; the decoded update is dropped right after, so peak memory is the base model, the
accumulator and one update in flight. A restart rebuilds the sum from the stored accepted
updates of the open round, one at a time.

Any other `Aggregator` (coordinate-wise robust ones that need every update at once) is run
slice by slice: for each tensor, row ranges of at most `slice_elems` elements are read from
every stored update file (safetensors, memory-mapped) and aggregated, so peak memory is
K × one slice rather than K × the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import safe_open

from ailo.federation.core.aggregate import Aggregator, StateDict, StreamingAggregator, WeightedDelta
from ailo.federation.core.codecs import CodecSpec
from ailo.federation.core.update_format import decode_update, encode_update

Decoder = Callable[[Path], Mapping[str, torch.Tensor]]  # stored update file → checked tensors


@dataclass
class RoundAccumulator:
    aggregator: Aggregator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    slice_elems: int = 1 << 22
    round_id: int | None = None
    folded: list[int] = field(default_factory=list)      # update ids in the running state
    _state: dict | None = None

    @property
    def streaming(self) -> bool:
        return isinstance(self.aggregator, StreamingAggregator)

    def reset(self, round_id: int) -> None:
        self.round_id, self.folded, self._state = round_id, [], None

    def fold(self, update_id: int, base: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor],
             n_samples: float, scale: float = 1.0) -> None:
        """Add one accepted update (no-op for non-streaming aggregators: they read from disk).
        `scale` is its Proof-of-Contribution clip factor: it counts as scale·Δ."""
        if update_id in self.folded:
            return
        if self.streaming:
            if self._state is None:
                self._state = self.aggregator.start(base)
            self.aggregator.fold(self._state, WeightedDelta(delta, n_samples, scale))
        self.folded.append(update_id)

    def rebuild(self, round_id: int, base: Mapping[str, torch.Tensor], accepted: list[tuple],
                decode: Decoder) -> None:
        """After a restart: fold the stored accepted updates (id, file, n_k[, clip factor]), one at a time."""
        self.reset(round_id)
        for update_id, path, n, *scale in accepted:
            self.fold(update_id, base, decode(path) if self.streaming else {}, n, *scale)

    def result(self, base: Mapping[str, torch.Tensor], accepted: list[tuple[int, Path, int]],
               server_lr: float) -> StateDict:
        """The new model's state. `accepted` must be the updates folded so far, in any order:
        the pipeline judges in arrival order, which concurrent uploads make differ from id
        order (a sum's order changes only its fp32 rounding)."""
        if sorted(u for u, *_ in accepted) != sorted(self.folded):
            raise RuntimeError(f"accumulator holds updates {self.folded}, the round accepted "
                               f"{[u for u, *_ in accepted]}")
        if self.streaming:
            state, self._state = self._state, None
            return self.aggregator.finish(state, base, server_lr)
        return self._sliced(base, accepted, server_lr)

    def _sliced(self, base: Mapping[str, torch.Tensor], accepted: list[tuple[int, Path, int]],
                server_lr: float) -> StateDict:
        files = [safe_open(str(path), framework="pt") for _, path, *_ in accepted]
        counts = [n for _, _, n, *_ in accepted]
        scales = [rest[0] if rest else 1.0 for _, _, _, *rest in accepted]
        out: StateDict = {}
        for name, b in base.items():
            has = [name in f.keys() for f in files]  # slice updates carry some tensors only
            if not any(has):
                out[name] = b  # nobody trained it: it stays
                continue
            f_, c_, s_ = ([x for x, h in zip(seq, has) if h] for seq in (files, counts, scales))
            rows = b.shape[0] if b.dim() else 1
            per_row = max(1, b.numel() // max(1, rows))
            step = max(1, self.slice_elems // per_row)
            pieces = []
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                ups = [WeightedDelta({name: f.get_slice(name)[start:stop].to(self.device)}, n, s)
                       for f, n, s in zip(f_, c_, s_)] if b.dim() else \
                      [WeightedDelta({name: f.get_tensor(name).to(self.device)}, n, s)
                       for f, n, s in zip(f_, c_, s_)]
                part = b[start:stop] if b.dim() else b
                pieces.append(self.aggregator.aggregate({name: part}, ups, server_lr)[name])
            out[name] = torch.cat(pieces) if b.dim() else pieces[0]
        return out


def fp32_copies(files: list[tuple], manifest, codec: CodecSpec, write_blob: Callable[[Path, bytes], None],
                names_of: Mapping[Path, list[str] | None] | None = None) -> list[tuple]:
    """Packed-codec updates decoded one at a time into fp32 files for sliced aggregation;
    `names_of`: a slice update's tensors by file (issue 26), None for a full one."""
    out = []
    for update_id, path, n, *scale in files:
        target = path.with_name(f"{path.name}.fp32")
        if not target.exists():
            names = (names_of or {}).get(path)
            write_blob(target, encode_update(decode_update(path.read_bytes(), manifest, codec, names=names)))
        out.append((update_id, target, n, *scale))
    return out
