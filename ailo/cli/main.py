"""`ailo` entry point. Each command group lives in its own module exposing
`register(subparsers)`; a module missing from this list is simply not offered."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules under ailo.cli that contribute commands (imported lazily so `ailo --help` is fast
# and a failing optional group cannot break the others).
COMMAND_MODULES = [
    "train",        # ailo train
    "federation",   # ailo coordinator, ailo worker
    "demo",         # ailo demo
    "wallet",       # ailo wallet new|show|balance|send
    "chain",        # ailo chain verify
    "inference",    # ailo node, ailo ask
    "release",      # ailo export, ailo generate
    "mirror",       # ailo mirror sync|nginx-conf
]


from ailo.cli.errors import CLIError  # noqa: E402  (re-exported for command modules)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ailo", description="Ailo Network")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"ailo.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ailo.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"ailo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
