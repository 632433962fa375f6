"""`ailo coordinator` and `ailo worker`."""
from __future__ import annotations

import argparse
import errno
import os
import re
import socket
from dataclasses import fields
from pathlib import Path

from typing import TYPE_CHECKING

from ailo.cli import checks, logs
from ailo.cli.errors import CLIError
from ailo.federation.core.local_phase import DEFAULT_MAX_STEPS, DEFAULT_SECONDS
from ailo.federation.core.strategy_names import AGGREGATOR_NAMES, OUTER_OPTIMIZERS
from ailo.presets import PRESETS

if TYPE_CHECKING:  # the parser needs no torch: the coordinator's modules load when it runs
    from ailo.federation.coordinator.config import CoordinatorConfig


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("coordinator", help="run the coordinator (HTTP API, rounds, ledger, rooms)")
    c.add_argument("--state", default="runs/coordinator", help="state directory (SQLite + chunk files)")
    c.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    c.add_argument("--port", type=checks.port, default=8400, help="TCP port to listen on")
    c.add_argument("--preset", default="ailo-tiny", choices=sorted(PRESETS), help="model size trained by the network")
    c.add_argument("--chunks", type=checks.positive_int, default=8, dest="num_chunks",
                   help="hash-verified pieces each model version is split into")
    c.add_argument("--min-updates", type=checks.positive_int, default=3,
                   help="accepted updates that close a round (before --round-seconds)")
    c.add_argument("--max-updates", type=checks.positive_int, default=None,
                   help="updates admitted per round at most (default: no limit)")
    c.add_argument("--round-seconds", type=checks.positive_float, default=300.0,
                   help="a round closes this long after it opens if it has --min-updates accepted updates")
    c.add_argument("--quorum", type=checks.positive_int, default=1, dest="quorum_updates",
                   help="liveness: a round still short of --min-updates at twice --round-seconds closes "
                        "with this many accepted updates (default 1; = --min-updates disables it)")
    c.add_argument("--rounds", type=checks.positive_int, default=None, dest="max_rounds",
                   help="stop after this many rounds (default: run for ever)")
    c.add_argument("--local-steps", type=checks.positive_int, default=None,
                   help="optimizer steps each client takes per round (default 20); given without --local-seconds: "
                        "step-sized rounds")
    c.add_argument("--local-seconds", type=checks.non_negative_float, default=None,
                   help=f"time-sized rounds: every contributor trains this many seconds per round, overlapped "
                        f"with its upload and download (default {DEFAULT_SECONDS:g}, unless --local-steps is "
                        "given; 0 = step-sized)")
    c.add_argument("--max-local-steps", type=checks.positive_int, default=DEFAULT_MAX_STEPS,
                   help="time-sized rounds: most steps one phase may claim (bounds Proof-of-Contribution)")
    c.add_argument("--batch-size", type=checks.positive_int, default=8, help="sequences per local step")
    c.add_argument("--seq-len", type=checks.positive_int, default=None, help="tokens per sequence (default: the preset's context)")
    c.add_argument("--lr", type=checks.positive_float, default=3e-3, help="clients' local learning rate")
    c.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"],
                   help="clients' local optimizer (sgd pairs with the sparse codec: see bench/RESULTS.md)")
    c.add_argument("--lr-decay", type=checks.positive_float, default=1.0, help="client learning rate of round r: lr·decay^(r−1)")
    c.add_argument("--warmup-steps", type=checks.non_negative_int, default=0,
                   help="client lr ramps linearly over each round's first N local steps (AdamW restarts its moments every round)")
    c.add_argument("--server-lr", type=checks.positive_float, default=1.0, help="outer learning rate (FedAvg: 1.0; DiLoCo: 0.7)")
    c.add_argument("--outer", default="sgd", choices=OUTER_OPTIMIZERS,
                   help="outer optimizer on the averaged pseudo-gradient (sgd = FedAvg); state persists across restarts")
    c.add_argument("--outer-momentum", type=checks.probability, default=0.9, help="nesterov: momentum")
    c.add_argument("--codec", default=None, choices=["fp32", "int8", "sparse"],
                   help="update codec named in every task (sparse: top-k + 2-bit with client error feedback; "
                        "default: int8 for time-sized rounds, fp32 for step-sized ones)")
    c.add_argument("--init", default=None, help="start (version 0) from this safetensors state dict")
    c.add_argument("--compact-downloads", action=argparse.BooleanOptionalAction, default=None,
                   help="also serve the model in bf16 and patches from the previous version (int8, or sparse when "
                        "few weights changed; clients train from bf16). Default: on for time-sized rounds")
    c.add_argument("--codec-density", type=checks.probability, default=0.01, help="sparse: share of each tensor's entries sent")
    c.add_argument("--ef-decay", type=checks.probability, default=1.0, help="lossy codecs: client error feedback e ← decay·e + Δ")
    c.add_argument("--data", default=None, dest="data_dir", help="corpus folder for the validation set")
    c.add_argument("--seed", type=int, default=0, help="seed of version 0's weights and the validation set")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where validation, aggregation and evaluation run (auto: CUDA when present)")
    c.add_argument("--max-staleness", type=checks.non_negative_int, default=1,
                   help="an update trained on a version this many rounds old is still taken into the open round, "
                        "judged on its own base (overlapped workers; 0 = only the open round's version)")
    c.add_argument("--max-pending", type=checks.positive_int, default=256,
                   help="updates admitted but not yet validated; beyond this POST /v1/updates answers 429 busy")
    c.add_argument("--holdout-dir", default=None, help="private folder of .txt the Proof-of-Contribution holdout "
                   "is drawn from; never served, must not be inside the public data folder")
    c.add_argument("--holdout-sequences", type=checks.positive_int, default=64, help="holdout windows scored per model version")
    c.add_argument("--aggregator", default="fedavg", choices=sorted(AGGREGATOR_NAMES),
                   help="how accepted updates are combined (robust ones bound a few bad updates' influence)")
    c.add_argument("--open", action="store_true",
                   help="open mode: accept unsigned updates, no Proof-of-Contribution, no rewards")
    c.add_argument("--registrations-per-hour", type=checks.positive_float, default=10.0,
                   help="username registrations allowed per network address and hour")
    c.add_argument("--room-checkpoints", default=None, help="folder of checkpoint folders whose span weights "
                   "browser nodes may fetch (GET /v1/rooms/{id}/weights)")
    c.add_argument("--allow-private-node-urls", action=argparse.BooleanOptionalAction, default=None,
                   help="rooms: accept node URLs on loopback/private/link-local networks (default: only when "
                   "--host is a loopback address, i.e. a local dev coordinator)")
    c.add_argument("--mirror", action="append", default=[], dest="mirrors", metavar="URL",
                   help="chunk mirror base URL serving <URL>/<sha256> (repeatable; see `ailo mirror sync`); "
                   "clients try mirrors first and verify every chunk")
    c.add_argument("--forwarded-allow-ips", default="", metavar="IPS",
                   help="comma-separated proxy addresses whose X-Forwarded-For / X-Forwarded-Proto are trusted "
                        "(the client address rate limits key on); default none: the peer address is the client")
    c.add_argument("--room-requests-per-minute", type=checks.positive_float, default=60.0,
                   help="rooms: generate requests per requester wallet per minute (burst 1/6 of it; 4x per network address)")
    c.add_argument("--db", default=None, metavar="URL",
                   help="postgresql://user@host:port/dbname for rounds and ledger (default: SQLite files in --state); "
                   "keep the password out of the URL: psycopg reads PGPASSWORD or ~/.pgpass")
    c.add_argument("--room-verify", type=checks.probability, default=0.10, metavar="P",
                   help="rooms: probability that a span of a request is audited (re-run on the --room-checkpoints "
                   "copy, else another wallet's replica); a mismatching node is unpaid, 3 strikes evict it")
    c.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="TOML file of these options (e.g. min-updates = 5); flags given here win")
    logs.add_arguments(c)
    c.set_defaults(func=run_coordinator, command_parser=c)

    w = sub.add_parser("worker", help="run a native training worker")
    w.add_argument("--coordinator", required=True, type=checks.url, help="coordinator URL, e.g. http://127.0.0.1:8400")
    w.add_argument("--data", default=None, help="folder of your own .txt files (default: shipped corpus)")
    w.add_argument("--shard", type=checks.non_negative_int, default=0, help="which of --num-shards parts of --data this worker trains on")
    w.add_argument("--num-shards", type=checks.positive_int, default=1, help="split --data into this many disjoint parts")
    w.add_argument("--client-id", default=None, type=checks.client_id, help="name of this worker in logs and the cache folder (default: worker-<pid>)")
    w.add_argument("--cache", default=None, help="chunk cache directory (default: data/worker-cache/<client id>)")
    w.add_argument("--rounds", type=checks.positive_int, default=None, help="stop after this many submitted rounds (default: run for ever)")
    w.add_argument("--device", default=None, help="torch device to train on, e.g. cpu, cuda, cuda:1 (default: CUDA when present)")
    w.add_argument("--wallet", default=None, help="wallet key file (created if missing) that signs updates "
                   "and receives rewards; without it the worker runs unsigned (open-mode coordinators only)")
    w.add_argument("--username", default=None, type=checks.username, help="username to register (default: the client id)")
    w.add_argument("--quiet", action="store_true", help="no progress bars or round lines")
    w.add_argument("--json-log", action="store_true", help="print one JSON line per submitted update "
                   "(seconds.train, seconds.wall, bytes up/down, verdict): utilization = train / wall")
    w.add_argument("--no-overlap", action="store_false", dest="overlap",
                   help="time-sized rounds: wait for each verdict and version instead of training on")
    w.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="memory the worker may use for training, e.g. 10GiB or 12GB (default: what the device "
                   "has free: CUDA free memory, else available RAM); the worker plans micro-batches, "
                   "checkpointing and lean optimizer states to fit, and refuses a task that cannot; a coordinator "
                   "answers a budget below a full training state with a slice of the model (issue 26)")
    w.add_argument("--attack", choices=["sign-flip", "scale"], default=None, help=argparse.SUPPRESS)
    w.set_defaults(func=run_worker)


def coordinator_config(args: argparse.Namespace) -> CoordinatorConfig:
    from ailo.federation.coordinator.config import CoordinatorConfig
    names = {f.name for f in fields(CoordinatorConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("local_seconds") is None:  # defaults: time-sized, unless a step count was asked for
        values["local_seconds"] = 0.0 if values.get("local_steps") is not None else DEFAULT_SECONDS
    if values.get("local_steps") is None:
        values["local_steps"] = 20
    timed = values["local_seconds"] > 0  # home-link defaults: ≈ 1 byte per weight each way, then patches
    if values.get("codec") is None:
        values["codec"] = "int8" if timed else "fp32"
    if values.get("compact_downloads") is None:
        values["compact_downloads"] = timed
    if "mirrors" in values:
        from ailo.mirrors import valid_mirror_url
        try:
            values["mirrors"] = tuple(valid_mirror_url(m) for m in values["mirrors"])
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    return CoordinatorConfig(**values)


def run_coordinator(args: argparse.Namespace) -> int:
    import uvicorn

    from ailo.server.services import build_app

    from ailo.federation.core.codecs import CodecSpec
    try:
        CodecSpec(args.codec or "fp32", args.codec_density, args.ef_decay)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise CLIError("--device cuda: PyTorch sees no CUDA device (use --device auto or cpu)")
    if args.max_pending < 1:
        raise CLIError("--max-pending must be at least 1")
    if args.warmup_steps < 0:
        raise CLIError("--warmup-steps must be 0 or more")
    if args.min_updates < 1:
        raise CLIError("--min-updates must be at least 1")
    if args.max_updates is not None and args.max_updates < args.min_updates:
        raise CLIError(f"--max-updates ({args.max_updates}) must be at least --min-updates ({args.min_updates})")
    from ailo.federation.core.validate import ValidationConfig
    from ailo.server.services import ServiceConfig

    if args.holdout_dir and not Path(args.holdout_dir).is_dir():
        raise CLIError(f"--holdout-dir {args.holdout_dir}: not a folder")
    if args.holdout_sequences < 2:
        raise CLIError("--holdout-sequences must be at least 2 (the loss check needs a standard error)")
    allow_private = args.allow_private_node_urls
    if allow_private is None:
        allow_private = args.host in ("127.0.0.1", "localhost", "::1")
    svc = ServiceConfig(proof_of_contribution=not args.open,
                        validation=ValidationConfig(registrations_per_hour=args.registrations_per_hour),
                        room_checkpoints=Path(args.room_checkpoints) if args.room_checkpoints else None,
                        allow_private_node_urls=allow_private, db_url=args.db,
                        room_requests_per_minute=args.room_requests_per_minute, room_verify_p=args.room_verify,
                        holdout_dir=args.holdout_dir, holdout_sequences=args.holdout_sequences)
    from ailo.storage.factory import StoreConfigError, is_postgres
    sock = listen(args.host, args.port)
    logs.configure(args.log_level, args.log_format, args.access_log)
    try:
        app = build_app(coordinator_config(args), Path(args.state), svc)
    except StoreConfigError as exc:
        raise CLIError(str(exc)) from None
    except (ValueError, FileNotFoundError) as exc:  # e.g. a holdout folder inside the public corpus
        raise CLIError(str(exc)) from None
    except Exception as exc:
        if is_postgres(args.db) and type(exc).__module__.startswith("psycopg"):
            shown = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", args.db)  # never echo a password
            raise CLIError(f"cannot use the database {shown}: {exc}") from None
        raise
    print(f"coordinator on http://{args.host}:{args.port}  (OpenAPI: /docs; operator token for "
          f"`ailo room create`: {Path(args.state) / 'operator-token'})", flush=True)
    proxies = args.forwarded_allow_ips.strip()  # uvicorn's own default trusts 127.0.0.1: not ours
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=args.access_log,
                                           log_level=args.log_level, proxy_headers=bool(proxies),
                                           forwarded_allow_ips=proxies or None))
    server.run(sockets=[sock])
    return 0


def listen(host: str, port: int) -> socket.socket:
    """Bind the port before anything is written: a busy port is a one-line error, not a state folder
    left behind and a traceback after the banner."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except socket.gaierror as exc:
        raise CLIError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    except OSError as exc:
        hint = " (another coordinator running? choose another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None


def run_worker(args: argparse.Namespace) -> int:
    from ailo.federation.client.worker import CoordinatorUnavailable, Refused, Worker

    from ailo.federation.client.memory_plan import parse_size
    client_id = args.client_id or f"worker-{os.getpid()}"
    try:
        budget = parse_size(args.memory_budget) if args.memory_budget is not None else None
    except ValueError as exc:
        raise CLIError(f"--memory-budget: {exc}") from None
    cache = Path(args.cache) if args.cache else Path("data/worker-cache") / client_id
    wallet = None
    if args.wallet:
        from ailo.wallet import Wallet
        path = Path(args.wallet)
        try:
            wallet = Wallet.load(path) if path.exists() else Wallet.generate().with_username(args.username or client_id)
        except (PermissionError, ValueError) as exc:
            raise CLIError(f"wallet {path}: {exc}") from None
        if args.username and wallet.username and args.username != wallet.username:
            raise CLIError(f"wallet {path} belongs to username {wallet.username!r}, not {args.username!r}: drop "
                           f"--username, or give a new --wallet file to register {args.username!r}")
        if not path.exists():
            wallet.save(path)
    try:
        worker = Worker(args.coordinator, client_id, Path(args.data) if args.data else None, args.shard,
                        args.num_shards, cache, args.device, progress=not args.quiet, wallet=wallet,
                        attack=args.attack, json_log=args.json_log, memory_budget=budget, overlap=args.overlap)
        worker.run(args.rounds)
    except (CoordinatorUnavailable, Refused) as exc:
        raise CLIError(str(exc)) from None
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    return 0
