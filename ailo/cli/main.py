"""`ailo` entry point. Each command group lives in its own module exposing
`register(subparsers)`; a module missing from this list is simply not offered."""
from __future__ import annotations

import argparse
import importlib
import os
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
    "api",          # ailo api (OpenAI-compatible)
    "release",      # ailo export, ailo generate
    "mirror",       # ailo mirror sync|nginx-conf
]


from ailo.cli.errors import CLIError  # noqa: E402  (re-exported for command modules)


class HelpFormatter(argparse.HelpFormatter):
    """Every option shows its default (argparse's own ArgumentDefaultsHelpFormatter skips options
    without help text and prints `None`/`False`)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, [], (), argparse.SUPPRESS)
        if action.option_strings and shown and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """The parser class of `ailo` and of every subcommand (subparsers inherit it)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line, not the whole usage block: the command's --help has the rest."""
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class VersionAction(argparse.Action):
    """`--version`, looked up when asked for: argparse's own action takes the string when the
    parser is built, and reading the installed metadata (importlib.metadata) then costs every
    command a tenth of a second or more on a loaded box."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the version and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"ailo {version()}")
        parser.exit()


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("ailo")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ailo", description="Ailo Network: federated training and distributed "
                    "inference on donated compute")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
        if getattr(args, "config", None) is not None:  # file values become defaults; flags still win
            from ailo.cli import config
            config.apply(args.command_parser, args.config)
            args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"ailo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an unforeseen environment: one line, the traceback on request
        if os.environ.get("AILO_DEBUG"):
            raise
        print(f"ailo: error: {type(exc).__name__}: {exc} (set AILO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
