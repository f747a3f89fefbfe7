"""`slimq bench`: compare FP32 and INT8 models on speed, latency, size and accuracy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimq.bench.data import TASKS
from slimq.core.errors import ConfigError


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark FP32 vs INT8 models: speed, latency, size, accuracy",
                       description="Time the models interleaved (the first one is the reference for speed-ups) "
                                   "and evaluate them when the data has labels or a task is given.")
    p.add_argument("models", nargs="+", help="ONNX models (or PyTorch .pt2 files / Paddle model folders, converted "
                                             "first); the first is the reference (usually FP32)")
    p.add_argument("--data", help="an .npz (one array per input + optional `labels`), .npy, a folder, or "
                                  "`fashion-mnist`; default: random data (or the task's own data)")
    p.add_argument("--task", default="auto", choices=TASKS,
                   help="accuracy metric: classification (top-1/top-5, needs labels), ocr-rec (CER on rendered "
                        "lines), ocr-det (box F1 on rendered pages), none; auto: classification when labels exist")
    p.add_argument("--threads", default="1,all", help="comma-separated thread counts or `all` (default 1,all)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the timed runs (default 1)")
    p.add_argument("--iters", type=int, default=10, help="minimum timed runs per model and round (default 10)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up runs per model (default 5)")
    p.add_argument("--min-time", type=float, default=2.0, help="minimum seconds per model and round (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall: elapsed time (default); cpu: process CPU time, steadier for 1 thread on a busy machine")
    p.add_argument("--backend", default="ort",
                   help="comma-separated runtimes: ort (onnxruntime, default), openvino (pip install "
                        "'slimq[openvino]'), auto (every installed runtime, and a note on which is fastest for "
                        "each model); with several, every model runs on each, interleaved")
    p.add_argument("--limit", type=int, help="evaluate only the first N labelled samples / task items")
    p.add_argument("--names", help="comma-separated display names, one per model")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--png", help="draw a bar chart of samples/s to this PNG file")
    p.set_defaults(func=run_bench)


def _check_outputs(args: argparse.Namespace) -> None:
    """--json/--png are checked before the benchmark runs: never over a model, not a directory, writable."""
    from slimq.io.model import check_output_path

    for flag, path in (("--json", args.json), ("--png", args.png)):
        if path is not None:
            check_output_path(args.models, path, suffix=None, flag=flag, companions=())
    if args.json is not None and args.png is not None and Path(args.json).resolve() == Path(args.png).resolve():
        raise ConfigError(f"--json and --png name the same file {args.json}; give two different paths.")


def run_bench(args: argparse.Namespace) -> int:
    from slimq.bench.auto import expand_auto, fastest_notes
    from slimq.bench.results import TimingConfig
    from slimq.bench.runner import benchmark
    from slimq.bench.tables import plot_results, result_markdown
    from slimq.runtime.backends import parse_backends

    threads = _csv(args.threads)
    if not threads:
        raise ConfigError('--threads needs at least one value, e.g. "1,all".')
    _check_outputs(args)
    names = _csv(args.names) or None
    timing = TimingConfig(args.warmup, args.iters, args.min_time, args.rounds, args.clock)
    backends, auto = expand_auto(_csv(args.backend))
    result = benchmark(args.models, args.data, threads, batch=args.batch, task=args.task, timing=timing,
                       names=names, limit=args.limit, backends=parse_backends(backends),
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    if auto:
        result.notes.extend(fastest_notes(result))
    print(result_markdown(result))
    if args.json:
        print(f"wrote {result.write_json(args.json)}", file=sys.stderr)
    if args.png:
        print(f"wrote {plot_results([result], args.png)}", file=sys.stderr)
    return 0
