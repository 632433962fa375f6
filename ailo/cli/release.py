"""`ailo export` (model release) and `ailo generate` (local sampling from an exported folder)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ailo.cli import checks
from ailo.cli.errors import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export a model version as a Hugging Face GPT-2 folder (or a plain copy)")
    e.add_argument("--state", required=True, help="the coordinator's state directory")
    e.add_argument("--db", default=None, help="the coordinator's database URL when it is not the state's "
                   "SQLite file (e.g. postgresql://user@host/db)")
    e.add_argument("--version", type=checks.non_negative_int, default=None, help="model version (default: the latest)")
    e.add_argument("--out", default=None, help="output folder (default: STATE/exports/v<N>-<format>, "
                   "which the coordinator's dashboard links)")
    e.add_argument("--format", choices=["hf", "ailo"], default="hf",
                   help="hf: transformers' GPT-2 folder; ailo: model.safetensors + manifest.json in Ailo names")
    e.add_argument("--force", action="store_true", help="replace an existing output folder")
    e.set_defaults(func=run_export)

    g = sub.add_parser("generate", help="sample text locally from an exported Hugging Face folder")
    g.add_argument("--model", required=True, help="folder written by `ailo export`")
    g.add_argument("prompt", help="text to continue")
    g.add_argument("--max-new-tokens", type=checks.positive_int, default=50, help="tokens to sample")
    g.add_argument("--temperature", type=checks.non_negative_float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=checks.positive_int, default=50, help="sample among the k likeliest tokens")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: random)")
    g.set_defaults(func=run_generate)


def run_export(args: argparse.Namespace) -> int:
    from ailo.export import ExportError, export_version, load_version
    from ailo.storage.factory import StoreConfigError, open_round_store

    state = Path(args.state)
    try:
        store = open_round_store(state, args.db, create=False)
    except StoreConfigError as exc:
        raise CLIError(str(exc)) from None
    try:
        mv = load_version(store, args.version)
        out = Path(args.out) if args.out else state / "exports" / f"v{mv.version}-{args.format}"
        contributors = {u.address or u.client_id for u in store.updates(None, "accepted", limit=10**9)
                        if mv.round_id is not None and u.round_id <= mv.round_id}
        meta = export_version(mv, out, args.format, overwrite=args.force,
                              provenance={"contributors": len(contributors)})
    except ExportError as exc:
        raise CLIError(str(exc)) from None
    finally:
        store.close()
    size = sum(f["size"] for f in meta["files"].values())
    print(f"exported model version {meta['version']} ({meta['preset']}, format {args.format}, "
          f"{size:,} bytes) to {out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise CLIError(f"{model_dir} is not a Hugging Face model folder (no config.json); "
                       "make one with `ailo export --format hf`")
    if args.max_new_tokens < 1:
        raise CLIError("--max-new-tokens must be at least 1")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    n_ctx = model.config.n_positions
    ids = tok(args.prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise CLIError("the prompt is empty")
    new = min(args.max_new_tokens, n_ctx - 1)
    ids = ids[:, -(n_ctx - new):]  # keep the prompt's tail so prompt + answer fit the context
    if args.seed is not None:
        torch.manual_seed(args.seed)
    sample = args.temperature > 0
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=sample,
                             temperature=args.temperature if sample else None,
                             top_k=args.top_k if sample else None, pad_token_id=tok.eos_token_id)
    print(args.prompt + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return 0
