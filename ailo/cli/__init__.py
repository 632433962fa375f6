"""Command-line interface: `ailo <command>`; one module per command group."""
