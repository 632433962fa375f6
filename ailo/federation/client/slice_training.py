"""Training a slice (issue 26 part B, contributor side): the whole model runs forward, only the
slice's tensors are trained and uploaded.

Memory stays at the slice's training state plus one frozen block at a time:
- frozen weights are read tensor by tensor from the verified chunk files in the disk cache
  (`CachedTensors`: each chunk's sha256 is checked once, streamed, then tensors are read
  through safetensors' memory map and the map is closed), never the whole model;
- blocks before the slice run under no_grad (no gradient flows back into them);
- blocks after the slice run under activation checkpointing whose forward re-reads the block:
  the backward recomputes it from the cache, so no frozen block stays resident;
- the embedding matrix stays resident (the tied head needs it at every step), trained only
  when the slice holds the `embed` unit;
- the tied head and the loss run `HEAD_CHUNK` tokens at a time, recomputed in backward, so the
  [tokens × vocabulary] logits never exist for the whole micro-batch.
Frozen weights keep the chunks' dtype (bf16 for compact downloads) and compute in fp32.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from ailo.chunks import ChunkIntegrityError, ChunkStore, Manifest
from ailo.federation.core.slices import HEAD_CHUNK
from ailo.model import Block, GPTConfig
from ailo.recompute import head_losses
from ailo.training import LocalUpdate, TrainConfig, micro_batched_backward, run_steps, warm_up


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(8 << 20):
            h.update(piece)
    return h.hexdigest()


class CachedTensors:
    """A manifest's tensors read one at a time from its chunk files in `cache_dir`; every
    chunk is fetched (through `store`, verified) when missing and re-verified once when found."""

    def __init__(self, store: ChunkStore, cache_dir: Path):
        self.manifest: Manifest = store.manifest
        self.dir = Path(cache_dir)
        self._sha = {c.index: c.sha256 for c in self.manifest.chunks}
        for info in self.manifest.chunks:
            path = self.dir / info.sha256
            if path.exists() and (path.stat().st_size != info.size or _file_sha256(path) != info.sha256):
                path.unlink()  # damaged cache entry: fetched again below
            if not path.exists():
                store.chunk_bytes(info.index)  # verified, written to the cache, dropped
            if not path.exists():
                raise ChunkIntegrityError(f"chunk {info.index} did not reach the cache {self.dir}")

    def tensor(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        entry = self.manifest.tensors[name]
        pieces = []
        for p in entry.parts:
            with safe_open(str(self.dir / self._sha[p.chunk]), "pt") as f:
                pieces.append(f.get_tensor(p.key))
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        if tuple(out.shape) != entry.shape:
            raise ChunkIntegrityError(f"tensor {name!r}: stored shape {tuple(out.shape)} does not match the manifest")
        return out.to(device)

    def block(self, i: int, device: torch.device | str) -> dict[str, torch.Tensor]:
        prefix = f"blocks.{i}."
        return {k[len(prefix):]: self.tensor(k, device).float() for k in self.manifest.tensors if k.startswith(prefix)}


class SliceModel:
    """The model with the slice's tensors as trainable fp32 parameters and everything else frozen
    and streamed (see the module docstring)."""

    def __init__(self, cfg: GPTConfig, tensors: CachedTensors, names: Iterable[str], device: torch.device):
        self.cfg, self.src, self.device = cfg, tensors, device
        self.params = {n: torch.nn.Parameter(tensors.tensor(n, device).float().clone()) for n in names}
        with torch.device("meta"):
            self.skeleton = Block(cfg)
        trained_blocks = sorted({int(n.split(".")[1]) for n in self.params if n.startswith("blocks.")})
        self.first = trained_blocks[0] if trained_blocks else cfg.n_layer
        self.trained_blocks = set(trained_blocks)
        self.frozen = {n: (self.params[n] if n in self.params else tensors.tensor(n, device).float())
                       for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}

    def _block_params(self, i: int) -> dict[str, torch.Tensor]:
        prefix = f"blocks.{i}."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    def _frozen_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.skeleton, self.src.block(i, self.device), (x,))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        f, t = self.frozen, idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        with torch.set_grad_enabled("wte.weight" in self.params or "wpe.weight" in self.params):
            x = F.embedding(idx, f["wte.weight"]) + F.embedding(pos, f["wpe.weight"])
        for i in range(self.cfg.n_layer):
            if i in self.trained_blocks:
                x = functional_call(self.skeleton, self._block_params(i), (x,))
            elif not x.requires_grad:  # before the slice: nothing to back-propagate into
                with torch.no_grad():
                    x = self._frozen_block(i, x)
            else:  # after the slice: recomputed (and re-read) in the backward pass
                x = checkpoint(self._frozen_block, i, x, use_reentrant=False)
        x = F.layer_norm(x, (self.cfg.n_embd,), f["ln_f.weight"], f["ln_f.bias"], self.cfg.layer_norm_eps)
        return head_losses(x, f["wte.weight"], targets, HEAD_CHUNK).mean()  # [tokens × vocab] a chunk at a time


def train_slice(cfg: GPTConfig, tensors: CachedTensors, names: list[str],
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]], tcfg: TrainConfig,
                device: torch.device, micro_batch: int | None = None) -> LocalUpdate:
    """`train_local` for a slice: same optimizer, warm-up and clipping (over the slice's
    gradient), Δ = start − end of the slice's tensors only. `micro_batch`: gradients are
    accumulated over micro-batches of this many sequences (same maths: the batch's mean loss)."""
    model = SliceModel(cfg, tensors, names, device)
    params = list(model.params.values())
    start = {n: p.detach().clone() for n, p in model.params.items()}
    if tcfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                                       betas=(0.9, 0.95))
    elif tcfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {tcfg.optimizer!r}; use adamw or sgd")

    def step(i: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        warm_up(opt, tcfg, i)
        opt.zero_grad(set_to_none=True)
        loss = micro_batched_backward(x.to(device), y.to(device), micro_batch, model.loss)
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
        return loss

    run = run_steps(batches, tcfg.steps, step, device)
    return run.update({n: (start[n] - p.detach()).to(torch.float32) for n, p in model.params.items()})


def train_slice_task(worker, manifest: Manifest, task: dict, batches, tcfg: TrainConfig, source
                     ) -> tuple[LocalUpdate, int, float]:
    """The worker's slice round: make sure every chunk of `manifest` is in the verified disk
    cache (only missing ones are fetched from `source`, the worker's coordinator chunk source),
    drop any resident full model, train the slice. Returns (update, bytes downloaded, download
    seconds)."""
    from ailo.mirrors import MirroredSource
    from ailo.federation.core.slices import make_slice, micro_batch_for
    from ailo.model import get_preset
    from ailo.training import pick_device

    t0 = time.perf_counter()
    worker.model = None  # a full model held from an earlier full task would not fit the budget
    cache = Path(worker.cache_dir) / "chunks"
    mirrored = MirroredSource(manifest, manifest.mirrors, source) if manifest.mirrors else None
    tensors = CachedTensors(ChunkStore(manifest, mirrored or source, cache), cache)
    worker._prune_cache(manifest)
    downloaded = sum(mirrored.stats.bytes_by_origin.values()) if mirrored is not None else source.bytes_read
    t_download = time.perf_counter() - t0
    names = list(task["slice"]["tensors"])
    missing = sorted(set(names) - set(manifest.tensors))
    if missing:
        raise ValueError(f"slice task names tensors the model does not have: {missing[:5]}")
    cfg = get_preset(manifest.preset)
    shapes = {n: tuple(t.shape) for n, t in manifest.tensors.items()}
    span = task["slice"]
    sl = make_slice(shapes, cfg.n_layer, int(span["start"]), int(span["stop"]))
    device = pick_device(worker.device)
    micro = micro_batch_for(cfg, shapes, sl, tcfg.optimizer, tcfg.batch_size, int(task["seq_len"]), worker.memory_budget,
                            "cuda" if device.type == "cuda" else "cpu")
    upd = train_slice(cfg, tensors, names, batches, tcfg, device, micro)
    return upd, downloaded, t_download
