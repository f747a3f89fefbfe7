"""`slimq demo`: quantize the built-in models and print accuracy and speed tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimq.core.errors import ConfigError, unknown_choice
from slimq.demo import DEFAULT_OUT, METHODS, DemoConfig, run_demo
from slimq.zoo import ZOO_MODELS


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="quantize the built-in Fashion-MNIST models and print FP32 vs INT8 tables")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="500 test images and short timing (smoke test)")
    p.add_argument("--models", help=f"comma-separated subset of {', '.join(ZOO_MODELS)}")
    p.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)} (default: all available)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the timed runs (default 1)")
    p.add_argument("--min-time", type=float, default=1.5, help="seconds per model and timing round (default 1.5)")
    p.set_defaults(func=run_demo_cli)


def _csv(text: str | None, default: tuple[str, ...], kind: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip()) if text else default
    for t in items:
        if t not in valid:
            raise unknown_choice(kind, t, valid)
    if not items:
        raise ConfigError(f"Give at least one {kind}.")
    return items


def run_demo_cli(args: argparse.Namespace) -> int:
    cfg = DemoConfig(Path(args.out), _csv(args.models, ZOO_MODELS, "demo model", ZOO_MODELS),
                     _csv(args.methods, METHODS, "demo method", METHODS), args.quick, args.batch,
                     min_time=args.min_time)
    run_demo(cfg)
    return 0
