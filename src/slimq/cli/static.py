"""`slimq quantize static`, `slimq inspect` and `slimq cpu`."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from slimq.cli.budget import add_budget_flags, budget_from_args
from slimq.core.config import TARGETS, SkipSpec, StaticConfig
from slimq.core.errors import ConfigError
from slimq.core.observers import ALGORITHMS
from slimq.io.images import PreprocessSpec


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(t) for t in _csv(text))
    except ValueError:
        raise ConfigError(f'{flag} expects comma-separated numbers, got "{text}".') from None


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(t) for t in _csv(text))
    except ValueError:
        raise ConfigError(f'{flag} expects comma-separated whole numbers (e.g. 224,224), got "{text}".') from None


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser("static", help="static post-training quantization with calibration data")
    p.add_argument("model", help="FP32 model: .onnx, a PyTorch .pt2 (torch.export.save) or a Paddle inference "
                                  "model folder (converted, then checked against its framework on the samples)")
    p.add_argument("--calib", required=True, help="calibration data: image folder, .npy/.npz file or folder")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (never the input)")
    p.add_argument("--algo", help=f"calibration algorithm: {', '.join(ALGORITHMS)} (default hist)")
    p.add_argument("--target", help=f"deployment target: {', '.join(TARGETS)} (default x86)")
    p.add_argument("--recipe", help="YAML recipe with `static:` and `preprocess:` sections")
    p.add_argument("--skip-nodes", help="comma-separated node names to keep in float")
    p.add_argument("--skip-ops", help="comma-separated op types to keep in float")
    p.add_argument("--skip-regex", help="comma-separated regexes over node names to keep in float")
    p.add_argument("--max-samples", type=int, help="calibration samples to use (default 256)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    p.add_argument("--weight-bits", type=int, choices=(8, 4),
                   help="8 (default) or 4: int4 values [-7, 7] in int8 initializers (W4A8; runs on int8 kernels)")
    p.add_argument("--adaround", action="store_true",
                   help="learn the weight rounding on the calibration data (AdaRound; needs torch) instead of "
                        "rounding to nearest")
    p.add_argument("--adaround-budget", type=float, metavar="SECONDS",
                   help="AdaRound time budget for all layers together (default 120)")
    p.add_argument("--strict", action="store_true", help="fail (write nothing) when the fidelity check fails")
    p.add_argument("--no-speed-guard", action="store_true",
                   help="do not time INT8 against FP32 (by default layers that int8 makes slower stay float)")
    p.add_argument("--no-runtime-compare", action="store_true",
                   help='leave out the report\'s "runs fastest on" line (onnxruntime vs OpenVINO timing)')
    p.add_argument("--size", help="image H,W for image folders")
    p.add_argument("--resize-short", type=int, help="resize the short side then center-crop (images)")
    p.add_argument("--mean", help="per-channel mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="per-channel std")
    p.add_argument("--layout", choices=("NCHW", "NHWC"))
    p.add_argument("--color", choices=("RGB", "BGR", "GRAY"))
    p.add_argument("--cle", action="store_true", help="cross-layer equalization of Conv pairs first (exact; helps "
                                                      "--per-tensor weights)")
    p.add_argument("--no-smoothquant", action="store_true", help="do not move MatMul input outliers into weights")
    add_budget_flags(p)
    p.set_defaults(func=run_static)


def _static_config(args: argparse.Namespace, recipe: dict) -> StaticConfig:
    cfg = StaticConfig.from_dict(recipe)
    overrides = {k: v for k, v in {"algo": args.algo, "target": args.target, "max_samples": args.max_samples,
                                   "batch_size": args.batch_size, "weight_bits": args.weight_bits,
                                   "adaround_time_budget": args.adaround_budget}.items() if v is not None}
    if args.adaround:
        overrides["weight_rounding"] = "adaround"
    elif args.adaround_budget is not None and cfg.weight_rounding != "adaround":
        raise ConfigError("--adaround-budget sets AdaRound's time budget; add --adaround to use AdaRound.")
    if args.per_tensor:
        overrides["per_channel"] = False
    if args.strict:
        overrides["strict"] = True
    if getattr(args, "no_speed_guard", False):
        overrides["speed_guard"] = False
    if getattr(args, "no_runtime_compare", False):
        overrides["compare_runtimes"] = False
    if args.skip_nodes or args.skip_ops or args.skip_regex:
        overrides["skip"] = SkipSpec(_csv(args.skip_nodes) + cfg.skip.names, _csv(args.skip_ops) + cfg.skip.op_types,
                                     _csv(args.skip_regex) + cfg.skip.patterns)
    if args.cle:
        overrides["cle"] = True
    if args.no_smoothquant:
        overrides["smoothquant"] = "off"
    budget = budget_from_args(args, cfg.budget)
    if budget is not None:
        overrides["budget"] = budget
    return replace(cfg, **overrides)


def _preprocess_spec(args: argparse.Namespace, recipe: dict) -> PreprocessSpec | None:
    """The image preprocessing the user asked for (recipe section, then flags), or None when they asked for
    none: arrays must then not be given any (slimq.io.samples refuses preprocessing settings for arrays)."""
    from slimq.io.recipe import preprocess_from_dict

    d = dict(recipe)
    for key, val in {"size": _ints(args.size, "--size"), "resize_short": args.resize_short,
                     "mean": _floats(args.mean, "--mean"), "std": _floats(args.std, "--std"), "layout": args.layout,
                     "color": args.color}.items():
        if val is not None:
            d[key] = val
    return preprocess_from_dict(d) if d else None


def run_static(args: argparse.Namespace) -> int:
    from slimq.io.recipe import load_static_recipe
    from slimq.static.method import quantize_static

    static_d, pre_d = load_static_recipe(args.recipe) if args.recipe else ({}, {})
    cfg = _static_config(args, static_d)
    result = quantize_static(args.model, args.calib, cfg, args.output, _preprocess_spec(args, pre_d),
                             eval_data=args.eval_data)
    print(result.report.format())
    print(f"wrote {args.output} and {Path(args.output).name}.report.json")
    return 3 if result.report.warnings else 0

