"""`ailo node`, `ailo ask`, `ailo room`: distributed-inference rooms from the command line (R8)."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path

from ailo.cli import checks
from ailo.cli.errors import CLIError

DEFAULT_COORDINATOR = os.environ.get("AILO_COORDINATOR", "http://127.0.0.1:8400")  # `ailo coordinator`'s port
COORDINATOR_HELP = "coordinator URL (default $AILO_COORDINATOR or %(default)s)"
_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?)(i?)b?\s*$", re.I)


def parse_size(text: str) -> int:
    """'2GB' → 2·10⁹, '2GiB' → 2·2³⁰, '123' → 123 bytes."""
    m = _SIZE.match(text)
    if not m:
        raise CLIError(f"cannot read size {text!r} (examples: 2GB, 1.5GiB, 800MB)")
    power = "kmgt".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


def load_wallet(given: str | None, role: str):
    """--wallet, else $AILO_WALLET or ~/.ailo/wallet.json (as `ailo wallet`). Room calls are signed
    by this key: a node's rewards go to its address, a requester pays from it."""
    from ailo.wallet import Wallet, default_wallet_path

    path = Path(given) if given else default_wallet_path()
    if not path.exists():
        raise CLIError(f"no wallet at {path}: {role} needs one. Create and register it with "
                       f"`ailo wallet new --wallet {path}` and `ailo wallet register NAME --wallet {path}`")
    try:
        return Wallet.load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(f"wallet {path}: {exc}") from None


def operator_token(args: argparse.Namespace) -> str:
    """$AILO_OPERATOR_TOKEN, else the token file (--operator-token-file, default <state>/operator-token)."""
    if os.environ.get("AILO_OPERATOR_TOKEN"):
        return os.environ["AILO_OPERATOR_TOKEN"].strip()
    path = Path(args.operator_token_file)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise CLIError(f"operator token {path}: {exc} (only the coordinator's operator may create or delete "
                       "rooms; pass --operator-token-file STATE_DIR/operator-token)") from None


def _detail(response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


def cmd_node(args: argparse.Namespace) -> int:
    import torch

    from ailo.inference.node import JoinRefused, NodeService, RoomAgent, available_memory
    from ailo.server.node_app import build_node_app
    from ailo.inference.serving import ThreadedServer
    from ailo.inference.spec import SpecError

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        service = NodeService(Path(args.model_dir), dtype=args.dtype, device=device, attack=args.attack)
    except SpecError as exc:
        raise CLIError(str(exc)) from None
    memory = parse_size(args.memory) if args.memory else available_memory(device)
    wallet = load_wallet(args.wallet, "a room node")
    server = ThreadedServer(build_node_app(service), args.host, args.port).start()
    url = (args.advertise_url or server.url).rstrip("/")
    print(f"ailo node: serving on {url}", flush=True)
    agent = RoomAgent(service, args.coordinator, args.room, url, memory, wallet,
                      on_event=lambda msg: print(msg, flush=True))
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    try:
        agent.run()
    except JoinRefused as exc:
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    finally:
        agent.leave()
        server.stop()
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    """Signed, paid request (ailo.inference.requester); waits up to --wait seconds for a room
    that is not routable yet. Every try carries a fresh payment and signature."""
    from ailo.inference.requester import RoomRefused, RoomRequester, Unreachable

    wallet = load_wallet(args.wallet, "asking a room")
    body: dict = {"max_new_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
                  "seed": args.seed}
    if args.ids:
        body["input_ids"] = [int(t) for t in args.ids.split(",")]
    elif args.prompt:
        body["prompt"] = args.prompt
    else:
        raise CLIError("give a prompt, or --ids 1,2,3")
    requester = RoomRequester(args.coordinator, wallet)
    waited = f" (gave up after {args.wait:g} s; --wait sets how long to wait)"
    try:
        with requester.ask(args.room, body, args.wait, on_retry=lambda why, delay: print(
                f"ailo: {why}; trying again in {delay:.1f} s", file=sys.stderr, flush=True)) as answer:
            _print_answer(answer.events(), args.verbose)
    except RoomRefused as exc:
        raise CLIError(f"room {args.room}: {exc.detail}" + (waited if exc.retryable else "")) from None
    except Unreachable as exc:
        raise CLIError(str(exc) + (waited if exc.before_send else "")) from None
    finally:
        requester.close()
    return 0


def _print_answer(events, verbose: bool) -> None:
    """Streams the room's events: tokens to stdout, failovers to stderr."""
    printed = ""
    for event in events:
        kind = event["type"]
        if kind == "token":
            piece = event["text"] if event["text"] is not None else f"{event['token']} "
            printed += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        elif kind == "failover":
            print(f"\nailo: {event['span']} moved from node {event['from']} to {event['to']} "
                  f"({event['reason']})", file=sys.stderr)
        elif kind == "error":
            sys.stdout.write("\n")
            back = event.get("refunded") or 0
            raise CLIError(event["error"] + (f" (payment refunded: {back / 1e8:.8f} ALC; the fee is kept)"
                                             if back else ""))
        elif kind == "done":
            text = event.get("text")
            if text and text.startswith(printed):  # a trailing partial character held back
                sys.stdout.write(text[len(printed):])
            sys.stdout.write("\n")
            if verbose:
                print(json.dumps({k: event[k] for k in ("request_id", "finish_reason", "payees",
                                                        "failovers", "stats")}), file=sys.stderr)


def cmd_room(args: argparse.Namespace) -> int:
    if args.action == "plan":
        from ailo.inference.plan import PlanError, get_preset
        try:
            preset = get_preset(args.preset)
            nodes = args.nodes or preset.nodes
            memory = parse_size(args.memory) if args.memory else preset.node_memory
            plan = preset.plan([memory] * nodes)
        except PlanError as exc:
            raise CLIError(str(exc)) from None
        print(json.dumps(plan.to_dict(), indent=1))
        return 0
    import httpx

    base = f"{args.coordinator.rstrip('/')}/v1/rooms"
    try:
        if args.action == "create":
            body: dict = {"id": args.room, "slots": args.slots, "context": args.context, "placement": args.placement}
            if args.checkpoint:
                body["checkpoint"] = args.checkpoint
            if args.preset:
                body["preset"] = args.preset
            elif args.model_dir:
                d = Path(args.model_dir)
                body["model"] = json.loads((d / "config.json").read_text())
                if (d / "tokenizer.json").exists():
                    body["tokenizer"] = (d / "tokenizer.json").read_text()
                if (d / "tokenizer_config.json").exists():  # its chat template, if any (ailo.inference.chat)
                    from ailo.inference.chat import chat_settings
                    body.update(chat_settings(json.loads((d / "tokenizer_config.json").read_text())))
            else:
                raise CLIError("give --model-dir or --preset")
            r = httpx.post(base, json=body, timeout=30, headers={"authorization": f"Bearer {operator_token(args)}"})
        elif args.action == "delete":
            r = httpx.delete(f"{base}/{args.room}", timeout=10,
                             headers={"authorization": f"Bearer {operator_token(args)}"})
        elif args.action == "show":
            r = httpx.get(f"{base}/{args.room}", timeout=10)
        else:
            r = httpx.get(base, timeout=10)
    except httpx.HTTPError as exc:
        raise CLIError(f"coordinator {args.coordinator} unreachable: {exc}") from None
    if r.status_code >= 400:
        raise CLIError(_detail(r))
    print(json.dumps(r.json(), indent=1))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("node", help="join a distributed-inference room and serve a span of its model")
    p.add_argument("--room", required=True, help="room to serve (made by the operator with `ailo room create`)")
    p.add_argument("--model-dir", required=True, help="folder with config.json and *.safetensors")
    p.add_argument("--coordinator", type=checks.url, default=DEFAULT_COORDINATOR, help=COORDINATOR_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address this node listens on")
    p.add_argument("--port", type=int, default=0, help="0 = any free port")
    p.add_argument("--advertise-url", help="URL the coordinator should use (default http://HOST:PORT)")
    p.add_argument("--memory", help="memory offered to the room, e.g. 2GB (default: what is free)")
    p.add_argument("--wallet", help="key file that signs this node's calls and receives its rewards "
                   "(default $AILO_WALLET or ~/.ailo/wallet.json)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weights' dtype (auto: the checkpoint's on CUDA, float32 on CPU)")
    p.add_argument("--device", default="auto", help="torch device (auto: CUDA when present)")
    p.add_argument("--attack", choices=["zeros", "noise", "skip"], default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_node)

    a = subparsers.add_parser("ask", help="send a prompt to a room and stream the answer")
    a.add_argument("prompt", nargs="?")
    a.add_argument("--room", required=True, help="room to ask")
    a.add_argument("--coordinator", type=checks.url, default=DEFAULT_COORDINATOR, help=COORDINATOR_HELP)
    a.add_argument("--ids", help="comma-separated token ids instead of a text prompt")
    a.add_argument("--max-tokens", type=checks.positive_int, default=64, help="tokens to generate")
    a.add_argument("--temperature", type=checks.non_negative_float, default=0.0, help="0 = greedy")
    a.add_argument("--top-p", type=checks.probability, default=1.0, help="nucleus sampling mass")
    a.add_argument("--seed", type=int, help="sampler seed (default: random)")
    a.add_argument("--wallet", help="key file that signs (and pays for) the request "
                   "(default $AILO_WALLET or ~/.ailo/wallet.json)")
    a.add_argument("--wait", type=float, default=30.0,
                   help="seconds to keep trying while the room is forming, has a span without a live node, "
                   "rate-limits the request or the coordinator is unreachable (nothing is charged for "
                   "those; 0: one try; default %(default)s)")
    a.add_argument("-v", "--verbose", action="store_true", help="print request stats to stderr")
    a.set_defaults(func=cmd_ask)

    r = subparsers.add_parser("room", help="create, delete (operator), list, show or plan distributed-inference rooms")
    r.add_argument("action", choices=["create", "delete", "list", "show", "plan"])
    r.add_argument("--operator-token-file", default=os.environ.get("AILO_OPERATOR_TOKEN_FILE",
                                                                   "runs/coordinator/operator-token"),
                   help="create/delete: the coordinator's operator token (default $AILO_OPERATOR_TOKEN, "
                   "else $AILO_OPERATOR_TOKEN_FILE or %(default)s)")
    r.add_argument("--room", help="room name (create, delete)")
    r.add_argument("--coordinator", type=checks.url, default=DEFAULT_COORDINATOR, help=COORDINATOR_HELP)
    r.add_argument("--model-dir", help="checkpoint folder whose layers the room serves (create)")
    r.add_argument("--preset", help="qwen-1.8b, llama-2-7b or llama-2-70b")
    r.add_argument("--slots", type=checks.positive_int, help="nodes the layers are split over (create)")
    r.add_argument("--context", type=checks.positive_int, default=2048, help="longest prompt + answer in tokens")
    r.add_argument("--checkpoint", help="create: checkpoint folder (under the coordinator's --room-checkpoints) "
                   "whose span weights browser nodes fetch")
    r.add_argument("--placement", choices=["spread", "fewest"], default="spread",
                   help="create: spread = one span per slot; fewest = the fewest nodes that hold the model serve "
                   "its spans, the others are replicas (fewer hops over the internet)")
    r.add_argument("--nodes", type=int, help="plan: number of nodes (default: the preset's)")
    r.add_argument("--memory", help="plan: memory per node, e.g. 2GiB")
    r.set_defaults(func=cmd_room)
