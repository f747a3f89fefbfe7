"""`slimq debug`: per-layer SQNR of an INT8 model against its FP32 original."""

from __future__ import annotations

import argparse

from slimq.core.fields import require_int
from slimq.graph.passes import preprocess
from slimq.io.model import load_model
from slimq.io.samples import load_samples
from slimq.io.spec import model_inputs
from slimq.report.agreement import format_errors, tensor_errors


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = sub.add_parser("debug", help="per-layer SQNR of an INT8 model against its FP32 original")
    p.add_argument("fp32")
    p.add_argument("int8")
    p.add_argument("--data", required=True, help="inputs: .npy/.npz file or folder")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--worst", type=int, default=15)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    require_int("--samples", args.samples, 1)
    require_int("--worst", args.worst, 1)
    fp32 = preprocess(load_model(args.fp32))
    int8 = load_model(args.int8)
    samples = load_samples(args.data, model_inputs(fp32))
    feeds = [samples.sample(i) for i in range(min(args.samples, len(samples)))]
    print(format_errors(tensor_errors(fp32, int8, feeds), args.worst))
    return 0
