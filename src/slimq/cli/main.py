"""The `slimq` command. Each command module registers its own sub-parser.

Exit codes: 0 done, 2 bad input (a SlimqError: one line that names the problem, no traceback), 3 written
with warnings, 4 refused, 1 an internal error (a bug: one line saying so and where the full traceback was
written; ``--debug`` shows it inline), 128+N interrupted by signal N (SIGINT 130, SIGHUP 129, SIGTERM 143).
SIGTERM and SIGHUP are handled like Ctrl-C: they raise in the main thread, so every staging folder is
removed on the way out; further signals during that cleanup are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import logging
import os
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Iterator

from slimq.core.errors import SlimqError

# Modules that define `register(commands, quantize_methods)`; a missing optional one (e.g. QAT without torch) is skipped.
COMMAND_MODULES = ("slimq.cli.static", "slimq.cli.dynamic", "slimq.cli.inspect", "slimq.cli.bench", "slimq.cli.demo",
                   "slimq.cli.debug", "slimq.cli.sensitivity", "slimq.cli.qat",
                   "slimq.cli.importer")
HANDLED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class Interrupted(KeyboardInterrupt):
    """A handled signal (SIGINT, SIGTERM, SIGHUP), raised in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimq", description="Quantize FP32 ONNX models to INT8 and deploy them.")
    parser.add_argument("-v", "--verbose", "--debug", dest="verbose", action="store_true",
                        help="show debug logging, and tracebacks inline")
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


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise Interrupted in the main thread (once: later ones are ignored while the
    first unwinds and cleans up). The previous handlers come back when the block ends normally."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if fired:
            return  # a second Ctrl-C during cleanup: let the cleanup finish
        fired.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED_SIGNALS}
    try:
        yield
    finally:
        if not fired:  # after an interrupt keep ignoring: the process is about to exit
            for s, h in previous.items():
                signal.signal(s, h)


def internal_error(exc: BaseException) -> str:
    """Write the traceback of an unexpected exception to a file under the temp dir; the one line to print."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        fd, path = tempfile.mkstemp(prefix=f"slimq-traceback-{stamp}-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"slimq {' '.join(sys.argv[1:])}\n\n{text}")
        where = f"the full traceback is in {path}"
    except OSError as e:
        where = f"the traceback could not be saved ({e}); rerun with --debug to see it"
    why = str(exc).splitlines()[0][:200] if str(exc) else ""
    return (f"slimq: internal error (a bug in slimq, not a problem with your input): {type(exc).__name__}"
            f"{': ' + why if why else ''}; {where}. Please report it; --debug shows it here.")


def _interrupted(e: Interrupted | KeyboardInterrupt, published_before: int) -> int:
    from slimq.io.atomic import published

    signum = getattr(e, "signum", signal.SIGINT)
    written = published()[published_before:]
    if written:
        print(f"slimq: interrupted ({signal.Signals(signum).name}) after writing "
              f"{', '.join(str(p) for p in written)}; nothing partial was left.", file=sys.stderr)
    else:
        print("slimq: interrupted; no output was written.", file=sys.stderr)
    return 128 + int(signum)


def _configure(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"slimq: warning: {msg}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure(args)
    from slimq.io.atomic import published

    before = len(published())
    with signals_raise():
        try:
            return int(args.func(args) or 0)
        except SlimqError as e:
            if args.verbose:
                traceback.print_exc()
            print(f"slimq: error: {e}", file=sys.stderr)
            return getattr(e, "exit_code", 2)
        except KeyboardInterrupt as e:
            return _interrupted(e, before)
        except Exception as e:  # noqa: BLE001 - a bug: one line and a traceback file, never a bare traceback
            if args.verbose:
                traceback.print_exc()
                print(f"slimq: internal error (a bug in slimq): {type(e).__name__}: {e}", file=sys.stderr)
            else:
                print(internal_error(e), file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
