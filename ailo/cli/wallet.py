"""`ailo wallet new|show|register|balance|send|report`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ailo.cli import checks
from ailo.cli.errors import CLIError

if TYPE_CHECKING:  # the commands import their ledger, key and HTTP modules when they run: the parser stays light
    from ailo.ledger.client import LedgerClient
    from ailo.wallet import Wallet

DEFAULT_COORDINATOR = "http://127.0.0.1:8400"


def client_for(url: str) -> LedgerClient:
    """Factory kept separate so tests can point the CLI at an in-process app. The CLI rides out
    a coordinator restart (QUICK back-off, ~30 s) before reporting it unreachable."""
    from ailo.backoff import QUICK
    from ailo.ledger.client import LedgerClient
    return LedgerClient(url, policy=QUICK)


def add_coordinator_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator", type=checks.url, default=os.environ.get("AILO_COORDINATOR",
                                                           DEFAULT_COORDINATOR),
                   help="coordinator URL (default $AILO_COORDINATOR or %(default)s)")


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("wallet", help="AiloCoin wallet: keys, balance, transfers")
    ws = w.add_subparsers(dest="wallet_command", required=True)

    def cmd(name: str, func, help: str, coordinator: bool = True) -> argparse.ArgumentParser:
        p = ws.add_parser(name, help=help)
        p.add_argument("--wallet", type=Path, default=None,
                       help="key file (default $AILO_WALLET or ~/.ailo/wallet.json)")
        if coordinator:
            add_coordinator_arg(p)
        p.set_defaults(func=func)
        return p

    p = cmd("new", cmd_new, "create a key pair (file mode 0600)", coordinator=False)
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    cmd("show", cmd_show, "print address and username", coordinator=False)
    p = cmd("register", cmd_register, "bind a unique username to this wallet")
    p.add_argument("username", type=checks.username)
    p = cmd("balance", cmd_balance, "spendable and pending balance")
    p.add_argument("address", nargs="?", help="any address (default: this wallet's)")
    p = cmd("send", cmd_send, "transfer ALC (fee 0.01 ALC)")
    p.add_argument("to", help="recipient address")
    p.add_argument("amount", help="amount in ALC, e.g. 1.25")
    p = cmd("report", cmd_report, "report a suspicious transfer (R12)")
    p.add_argument("txid")
    p.add_argument("--reason", default="", help="short printable-ASCII reason")


def _path(args: argparse.Namespace) -> Path:
    from ailo.wallet import default_wallet_path
    return args.wallet or default_wallet_path()


def load_wallet(args: argparse.Namespace) -> Wallet:
    from ailo.wallet import Wallet
    path = _path(args)
    if not path.exists():
        raise CLIError(f"no wallet at {path}; create one with `ailo wallet new`")
    try:
        return Wallet.load(path)
    except (PermissionError, ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from None


def _now() -> int:
    return int(time.time() * 1000)


def cmd_new(args: argparse.Namespace) -> int:
    path = _path(args)
    if path.exists() and not args.force:
        raise CLIError(f"{path} already exists (use --force to overwrite)")
    from ailo.wallet import Wallet
    wallet = Wallet.generate()
    wallet.save(path, overwrite=args.force)
    print(json.dumps({"address": wallet.address, "file": str(path)}))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    wallet = load_wallet(args)
    print(json.dumps({"address": wallet.address, "public_key": wallet.public_key.hex(),
                      "username": wallet.username, "file": str(_path(args))}))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from ailo.ledger.tx import register_tx
    wallet = load_wallet(args)
    try:
        wallet = wallet.with_username(args.username)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    tx = register_tx(wallet, args.username, _now())
    result = _http(lambda: client_for(args.coordinator).register(tx.to_json()))
    wallet.save(_path(args), overwrite=True)          # remember the username locally
    print(json.dumps({"username": args.username, "address": wallet.address, **result}))
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    from ailo.ledger.params import format_alc
    address = _address(args.address) if args.address else load_wallet(args).address
    client = client_for(args.coordinator)
    bal = _http(lambda: client.balance(address))
    unpaid = _http(lambda: unpaid_updates(client.http, address))
    print(json.dumps({**bal, "spendable_alc": format_alc(bal["spendable"]),
                      "pending_alc": format_alc(bal["pending"]), "unpaid_updates": unpaid}))
    for u in unpaid:  # people read stderr; scripts read the JSON line
        if u["accepted_in_round"] is None:
            when = f"now: round {u['round']} closed and its rewards are being minted"
        else:
            left = u["round_deadline"] - time.time()
            when = (f"when round {u['round']} closes ({u['accepted_in_round']} of {u['needed_in_round']} updates "
                    f"accepted" + (f", or at its deadline in {left:.0f} s)" if left > 0 else ", any moment now)"))
        print(f"update {u['update_id']} was accepted; its reward is paid {when}", file=sys.stderr)
    return 0


def unpaid_updates(http, address: str) -> list[dict]:
    """This wallet's accepted updates whose round is not paid yet (rewards are minted when a
    round closes, docs/REWARDS.md), with the round's progress. `http`: an httpx.Client on the
    coordinator."""
    from ailo.backoff import QUICK, request
    status = request(http, "GET", "/v1/status", QUICK)
    if status.status_code == 404:  # a ledger-only service: no training rounds to wait for
        return []
    status = status.json()
    rows = request(http, "GET", "/v1/dashboard/updates", QUICK, params={"limit": 1000}).json()["updates"]
    out = []
    for u in rows:
        if u.get("address") == address and u["status"] == "accepted" and u["round"] > status.get("settled_round", 0):
            open_round = u["round"] == status["round"]
            out.append({"update_id": u["id"], "round": u["round"],
                        "accepted_in_round": status["accepted_in_round"] if open_round else None,
                        "needed_in_round": status["needed_in_round"],
                        "round_deadline": status["deadline"] if open_round else time.time()})
    return out


def cmd_send(args: argparse.Namespace) -> int:
    from ailo.ledger.errors import LedgerError
    from ailo.ledger.params import FEE, parse_alc
    from ailo.ledger.tx import transfer_tx
    wallet = load_wallet(args)
    to = _address(args.to)
    try:
        amount = parse_alc(args.amount)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if amount <= 0:
        raise CLIError("amount must be positive")
    if to == wallet.address:
        raise CLIError("cannot send to your own address")
    client = client_for(args.coordinator)
    nonce = _http(lambda: client.balance(wallet.address))["next_nonce"]
    try:
        tx = transfer_tx(wallet, to, amount, nonce, _now())
    except LedgerError as exc:
        raise CLIError(str(exc)) from None
    result = _http(lambda: client.transfer(tx.to_json()))
    print(json.dumps({**result, "amount": amount, "fee": FEE, "to": to}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ailo.ledger.errors import LedgerError
    from ailo.ledger.tx import report_tx
    wallet = load_wallet(args)
    try:
        tx = report_tx(wallet, args.txid.strip().lower(), args.reason, _now())
    except LedgerError as exc:
        raise CLIError(str(exc)) from None
    print(json.dumps(_http(lambda: client_for(args.coordinator).report(tx.to_json()))))
    return 0


def _address(text: str) -> str:
    from ailo.wallet import AddressError, normalize_address
    try:
        return normalize_address(text)
    except AddressError as exc:
        raise CLIError(f"bad address {text!r}: {exc}") from None


def _http(call):
    """Run one coordinator call, turning refusals and network errors into CLIError."""
    import httpx

    from ailo.backoff import Unavailable
    from ailo.ledger.errors import LedgerError
    try:
        return call()
    except LedgerError as exc:
        raise CLIError(f"coordinator refused: {exc}") from None
    except (httpx.HTTPError, Unavailable) as exc:
        raise CLIError(f"cannot reach the coordinator: {exc}") from None
