"""`ailo chain verify`: download (or read) the whole chain and check it locally (R11)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ailo.cli import checks
from ailo.cli.errors import CLIError
from ailo.cli.wallet import DEFAULT_COORDINATOR, _http, client_for


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("chain", help="AiloCoin chain tools")
    cs = c.add_subparsers(dest="chain_command", required=True)
    v = cs.add_parser("verify", help="verify every block, signature and balance locally")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--coordinator", default=None, type=checks.url,
                     help=f"coordinator URL to download from (default $AILO_COORDINATOR "
                          f"or {DEFAULT_COORDINATOR})")
    src.add_argument("--file", type=Path, help="verify a saved chain JSON offline")
    v.add_argument("--expect-coordinator", default=None, metavar="ADDRESS",
                   help="refuse a chain whose genesis names another coordinator")
    v.add_argument("--save", type=Path, help="also write the downloaded chain to this file")
    v.add_argument("--now", type=int, default=None,
                   help="verifier clock in ms since the epoch (default: now)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_verify)


def load_chain_file(path: Path) -> list[Any]:
    """A list of blocks, or an object with "blocks" (GET /v1/chain, --save) or "chain"
    (test vectors)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CLIError(f"no such file: {path}") from None
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("blocks", data.get("chain"))
    if not isinstance(data, list):
        raise CLIError(f"{path}: expected a list of blocks or {{\"blocks\": [...]}}")
    return data


def cmd_verify(args: argparse.Namespace) -> int:
    from ailo.ledger.params import format_alc
    from ailo.ledger.verify import verify_chain
    from ailo.wallet import AddressError, normalize_address

    expected = None
    if args.expect_coordinator:
        try:
            expected = normalize_address(args.expect_coordinator)
        except AddressError as exc:
            raise CLIError(f"--expect-coordinator: {exc}") from None
    if args.file:
        blocks = load_chain_file(args.file)
    else:
        url = args.coordinator or os.environ.get("AILO_COORDINATOR", DEFAULT_COORDINATOR)
        blocks = _http(lambda: client_for(url).fetch_chain())
        if args.save:
            args.save.write_text(json.dumps({"blocks": blocks}, separators=(",", ":")))
    report = verify_chain(blocks, now=args.now, coordinator=expected)
    if args.json:
        print(json.dumps(report.to_json()))
    elif report.ok:
        print(f"OK: height {report.height}, {report.blocks} blocks, {report.tx_count} "
              f"transactions, supply {format_alc(report.supply)} (minted "
              f"{format_alc(report.minted)}, burned {format_alc(report.burned)})")
    else:
        print(f"FAIL: {report.violation} (verified through block {report.height})")
    return 0 if report.ok else 1
