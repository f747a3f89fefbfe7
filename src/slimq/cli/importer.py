"""`slimq import`: convert a Paddle or PyTorch model to FP32 ONNX, checked against its framework."""

from __future__ import annotations

import argparse

FRAMEWORKS = ("paddle", "pytorch")


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a Paddle inference model or a PyTorch .pt2 to FP32 ONNX",
                       description="Convert (paddle2onnx for Paddle, the dynamo exporter for PyTorch), then run the "
                                   "ONNX beside the original framework on --data (or a synthesised / the program's "
                                   "example input) and refuse a conversion that changed the numbers.")
    p.add_argument("framework", choices=FRAMEWORKS)
    p.add_argument("model", help="Paddle: the inference model folder (inference.pdmodel + .pdiparams); "
                                 "PyTorch: a .pt2 saved with torch.export.save")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--data", help="samples to check the conversion on (.npy/.npz file or folder)")
    p.add_argument("--check-samples", type=int, default=16, help="samples the check runs (default 16)")
    p.add_argument("--paddle-python", help="python of a venv with paddlepaddle + paddle2onnx "
                                           "(default: $SLIMQ_PADDLE_PYTHON, else this interpreter)")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from slimq.core.errors import ConfigError
    from slimq.io.model import check_output_path, save_model
    from slimq.io.source import framework_of, load_source

    if args.check_samples < 1:
        raise ConfigError(f"--check-samples must be >= 1, got {args.check_samples}.")
    found = framework_of(args.model)
    if found != args.framework:
        raise ConfigError(f"{args.model} is not a {args.framework} model (it looks like {found}); for Paddle pass "
                          "the folder with inference.pdmodel + inference.pdiparams, for PyTorch a .pt2 file.")
    out = check_output_path(args.model, args.output)
    options = {"check_samples": args.check_samples}
    if args.framework == "paddle" and args.paddle_python:
        options["paddle_python"] = args.paddle_python
    source = load_source(args.model, args.data, **options)
    save_model(source.model, out)
    if source.conversion is not None:
        print(source.conversion.line())
    print(f"wrote {out}")
    return 0
