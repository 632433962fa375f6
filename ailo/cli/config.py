"""`--config FILE`: a TOML file of a command's options (`min-updates = 5` or `min_updates = 5`).

The file's values become the parser's defaults and the command line is parsed again, so a flag
given on the command line always wins. Every value goes through the option's own type and
choices check, so a typo in the file is the same one-line error as on the command line."""
from __future__ import annotations

import argparse
import difflib
import tomllib
from pathlib import Path
from typing import Any

from ailo.cli.errors import CLIError


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    named: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config"):
            continue
        for opt in action.option_strings:
            if opt.startswith("--") and not opt.startswith("--no-"):
                named[opt[2:]] = action
                named[opt[2:].replace("-", "_")] = action
        named.setdefault(action.dest, action)
    return named


def _convert(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    def one(v: Any) -> Any:
        if isinstance(v, (dict, list)):
            raise CLIError(f"{path}: {key} must be a single value")
        out = action.type(str(v)) if action.type is not None else v
        if action.choices is not None and out not in action.choices:
            raise CLIError(f"{path}: {key} = {v!r} is not one of {', '.join(map(str, action.choices))}")
        return out

    try:
        if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise CLIError(f"{path}: {key} must be true or false")
            return value
        if isinstance(action, argparse._AppendAction):
            return [one(v) for v in (value if isinstance(value, list) else [value])]
        return one(value)
    except argparse.ArgumentTypeError as exc:
        raise CLIError(f"{path}: {key}: {exc}") from None
    except (TypeError, ValueError):
        raise CLIError(f"{path}: {key} = {value!r} is not a valid value") from None


def apply(parser: argparse.ArgumentParser, path: Path) -> None:
    """Set the file's values as `parser`'s defaults (raises CLIError naming any bad key)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CLIError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"--config {path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CLIError(f"--config {path}: not valid TOML ({exc})") from None
    options = _options(parser)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        action = options.get(key)
        if action is None:
            near = difflib.get_close_matches(key, [k for k in options if "_" not in k], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise CLIError(f"--config {path}: unknown option {key!r}{hint}")
        if action.dest in defaults:
            raise CLIError(f"--config {path}: {key} is given twice")
        defaults[action.dest] = _convert(action, key, value, path)
    parser.set_defaults(**defaults)
