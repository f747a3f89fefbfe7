"""`slimq sensitivity`: which layers and tensors cost accuracy when quantized, measured one by one."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from slimq.cli.budget import add_budget_flags, budget_from_args
from slimq.core.budget import Budget
from slimq.core.config import TARGETS, StaticConfig
from slimq.core.observers import ALGORITHMS


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="per-layer/per-tensor damage and recovery of static INT8 vs FP32",
                       description="Quantize each unit (a layer, a tensor with its readers, or a layer with its "
                                   "output's readers) alone, and keep each alone float, measuring the budget's "
                                   "measure (default: worst output cosine to FP32 on held-back samples). The "
                                   "result is cached; `slimq quantize static` with the same budget reuses it.")
    p.add_argument("model", help="FP32 ONNX model")
    p.add_argument("--calib", required=True, help="calibration data: image folder, .npy/.npz file or folder")
    p.add_argument("--algo", default="hist", help=f"calibration algorithm: {', '.join(ALGORITHMS)} (default hist)")
    p.add_argument("--target", default="x86", help=f"deployment target: {', '.join(TARGETS)} (default x86)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor instead of per-channel weights")
    p.add_argument("--max-samples", type=int, default=256, help="calibration samples (default 256)")
    p.add_argument("--no-damage", action="store_true", help="only the recovery of each unit (half the time)")
    p.add_argument("--top", type=int, default=25, help="rows to print (default 25)")
    p.add_argument("--json", help="write every unit's numbers to this JSON file")
    add_budget_flags(p)
    p.set_defaults(func=run_sensitivity)


def run_sensitivity(args: argparse.Namespace) -> int:
    from slimq.graph.passes import preprocess
    from slimq.io.atomic import write_text
    from slimq.io.model import check_output_path, load_model
    from slimq.io.samples import load_samples
    from slimq.io.spec import model_inputs
    from slimq.report.measure import resolve_metric
    from slimq.static.rewrites import prequantize
    from slimq.static.sensitivity import analyse, cache_key, format_table, save_cached
    from slimq.static.steps import split_samples, static_rules
    from slimq.static.tuner import Setting, Tuner

    if args.json:
        check_output_path(args.model, args.json, suffix=".json", flag="--json", companions=())
    budget = budget_from_args(args, None) or Budget(min_cosine=0.99)
    cfg = StaticConfig(algo=args.algo, target=args.target, per_channel=not args.per_tensor,
                       max_samples=args.max_samples, budget=budget)
    fp32 = preprocess(load_model(args.model))
    samples = load_samples(args.calib, model_inputs(fp32))
    split = split_samples(len(samples), cfg)
    metric = resolve_metric(budget, None, args.eval_data, args.model, fp32)
    rw = prequantize(fp32, samples, split.calib, cfg, static_rules(cfg))  # as `quantize static` does
    fp32 = rw.model
    tuner = Tuner(fp32, replace(cfg, budget=None), samples, split, budget, metric, time_latency=False,
                  algo_for=rw.algo_for)
    setting = Setting.of(cfg)
    units = analyse(tuner, setting, damage=not args.no_damage, time_budget=budget.time_budget)
    save_cached(cache_key(fp32, samples, split, budget.describe()), units)
    print(f"sensitivity of {len(units)} units ({budget.describe()}; deficit: < 0 meets it)")
    print(format_table(units, args.top))
    if args.json:
        write_text(args.json, json.dumps({"budget": budget.describe(), "units": [u.to_dict() for u in units]},
                                         indent=2))
        print(f"wrote {args.json}")
    return 0
