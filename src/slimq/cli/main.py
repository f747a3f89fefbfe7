"""The `slimq` command. Each command module registers its own sub-parser; errors exit 2 without a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from slimq.core.errors import SlimqError

# Modules that define `register(commands, quantize_methods)`; a missing optional one (e.g. QAT without torch) is skipped.
COMMAND_MODULES = ("slimq.cli.static", "slimq.cli.dynamic", "slimq.cli.inspect", "slimq.cli.bench", "slimq.cli.demo",
                   "slimq.cli.debug", "slimq.cli.sensitivity", "slimq.cli.qat")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimq", description="Quantize FP32 ONNX models to INT8 and deploy them.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    quantize = sub.add_parser("quantize", help="quantize a model (static | dynamic)")
    methods = quantize.add_subparsers(dest="method", metavar="METHOD", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("slimq"):
                continue  # that command is not built yet in this checkout
            raise
        module.register(sub, methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"slimq: warning: {msg}\n"
    try:
        return int(args.func(args) or 0)
    except SlimqError as e:
        if args.verbose:
            raise
        print(f"slimq: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("slimq: interrupted; no output was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
