"""Load one span of a checkpoint folder, reading only that span's tensors.

A folder holds `config.json` and one or more `*.safetensors` files (with
`model.safetensors.index.json` mapping tensor → file when sharded). `safe_open` reads a
file's header and then exactly the bytes of each requested tensor, so a node serving layers
8–15 of a 70B model never touches the other layers' bytes. Every name read is recorded in
`CheckpointReader.read_names` and published by the node, which is how tests verify it.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ailo.inference.blocks import SpanModel
from ailo.inference.spec import ModelSpec
from ailo.inference.families import family, read_spec

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(FileNotFoundError):
    pass


class CheckpointReader:
    """Name → tensor over the safetensors files of a folder, recording what was read."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        self._stack = ExitStack()
        self._handles: dict[str, object] = {}
        self.read_names: list[str] = []
        self.read_bytes = 0
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"no *.safetensors in {self.dir}")
            self.weight_map = {}
            for f in files:  # headers only: keys() never reads tensor data
                for name in self._open(f.name).keys():
                    self.weight_map[name] = f.name

    def _open(self, filename: str):
        if filename not in self._handles:
            self._handles[filename] = self._stack.enter_context(safe_open(self.dir / filename, framework="pt"))
        return self._handles[filename]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise CheckpointError(f"tensor {name!r} not in checkpoint {self.dir}")
        t = self._open(self.weight_map[name]).get_tensor(name)
        if name not in self.read_names:
            self.read_names.append(name)
            self.read_bytes += t.numel() * t.element_size()
        return t

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()


def checkpoint_names(spec: ModelSpec, model: SpanModel, has_lm_head: bool) -> dict[str, str]:
    """Module state-dict key → checkpoint tensor name, for the span's modules only."""
    name = family(spec).checkpoint_name
    names: dict[str, str] = {}
    for key in model.state_dict():
        part, _, rest = key.partition(".")
        layer = 0
        if part == "units":
            idx, _, rest = rest.partition(".")
            layer = (model.start + int(idx)) // 2
        elif part not in ("embed", "head"):
            raise AssertionError(key)
        names[key] = name(spec, part, rest, layer, has_lm_head)
    return names


@dataclass
class LoadedSpan:
    model: SpanModel
    tensor_names: list[str]
    tensor_bytes: int


def load_span(model_dir: str | Path, start: int, end: int, *, dtype: str | torch.dtype | None = None,
              device: str | torch.device = "cpu", spec: ModelSpec | None = None) -> LoadedSpan:
    """Build units [start, end) with weights from the folder; nothing outside the span is read."""
    spec = spec or read_spec(model_dir)
    if isinstance(dtype, str) or dtype is None:
        dtype = TORCH_DTYPES[spec.dtype if dtype in (None, "auto") else dtype]
    with torch.device("meta"):
        model = SpanModel(spec, start, end)
    reader = CheckpointReader(model_dir)
    try:
        names = checkpoint_names(spec, model, has_lm_head="lm_head.weight" in reader)
        # copy=True: safetensors hands out tensors backed by the file's mmap; owning the memory
        # keeps weights out of the page cache (no eviction, no refaults, huge pages possible)
        state = {key: reader.get(name).to(device=device, dtype=dtype, copy=True) for key, name in names.items()}
    finally:
        reader.close()
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    return LoadedSpan(model, list(reader.read_names), reader.read_bytes)


def save_ailo_checkpoint(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write an `ailo.model.GPT` as a servable folder (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.cfg.to_dict(), model_type="ailo",
               dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    return d
