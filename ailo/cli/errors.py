"""User-facing CLI errors (a module of its own so `python -m ailo.cli.main` and the command
modules share one class)."""


class CLIError(Exception):
    """Printed as `ailo: error: ...` with exit status 2."""
