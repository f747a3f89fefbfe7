"""The `slimq` command: one module per command, registered by slimq.cli.main."""

from slimq.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
