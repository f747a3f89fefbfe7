"""`slimq quantize static`, `slimq inspect` and `slimq cpu`."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace

from .config import TARGETS, SkipSpec, StaticConfig
from .errors import ConfigError
from .observers import ALGORITHMS


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


def _floats(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(t) for t in _csv(text))
    except ValueError:
        raise ConfigError(f'Expected comma-separated numbers, got "{text}".') from None


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser("static", help="static post-training quantization with calibration data")
    p.add_argument("model", help="FP32 ONNX model")
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
    p.add_argument("--strict", action="store_true", help="fail (write nothing) when the fidelity check fails")
    p.add_argument("--size", help="image H,W for image folders")
    p.add_argument("--resize-short", type=int, help="resize the short side then center-crop (images)")
    p.add_argument("--mean", help="per-channel mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="per-channel std")
    p.add_argument("--layout", choices=("NCHW", "NHWC"))
    p.add_argument("--color", choices=("RGB", "BGR", "GRAY"))
    p.set_defaults(func=run_static)

    i = sub.add_parser("inspect", help="list a model's ops and the quantizable share")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_inspect)

    o = sub.add_parser("optimize", help="save onnxruntime's optimized graph of a model for fast loading")
    o.add_argument("model")
    o.add_argument("-o", "--output", required=True)
    o.set_defaults(func=run_optimize)

    c = sub.add_parser("cpu", help="report int8 capabilities of this CPU (VNNI, AMX) and the expected speed-up")
    c.set_defaults(func=lambda a: print(json.dumps(__import__("slimq.deploy").deploy.cpu_info().to_dict(), indent=2)))


def _static_config(args: argparse.Namespace, recipe: dict) -> StaticConfig:
    cfg = StaticConfig.from_dict(recipe)
    overrides = {k: v for k, v in {"algo": args.algo, "target": args.target, "max_samples": args.max_samples,
                                   "batch_size": args.batch_size}.items() if v is not None}
    if args.per_tensor:
        overrides["per_channel"] = False
    if args.strict:
        overrides["strict"] = True
    if args.skip_nodes or args.skip_ops or args.skip_regex:
        overrides["skip"] = SkipSpec(_csv(args.skip_nodes) + cfg.skip.names, _csv(args.skip_ops) + cfg.skip.op_types,
                                     _csv(args.skip_regex) + cfg.skip.patterns)
    return replace(cfg, **overrides)


def _preprocess_spec(args: argparse.Namespace, recipe: dict):
    from .recipe import preprocess_from_dict

    d = dict(recipe)
    size = _floats(args.size)
    for key, val in {"size": tuple(int(s) for s in size) if size else None, "resize_short": args.resize_short,
                     "mean": _floats(args.mean), "std": _floats(args.std), "layout": args.layout,
                     "color": args.color}.items():
        if val is not None:
            d[key] = val
    return preprocess_from_dict(d)


def run_static(args: argparse.Namespace) -> int:
    from .recipe import load_static_recipe
    from .static import quantize_static

    static_d, pre_d = load_static_recipe(args.recipe) if args.recipe else ({}, {})
    cfg = _static_config(args, static_d)
    result = quantize_static(args.model, args.calib, cfg, args.output, _preprocess_spec(args, pre_d))
    print(result.report.format())
    print(f"wrote {result.path} and {result.path.name}.report.json")
    return 3 if result.report.warnings else 0


def run_inspect(args: argparse.Namespace) -> int:
    import onnx_ir as ir

    from .config import target_rules
    from .modelio import load_model
    from .passes import preprocess
    from .plan import build_plan

    model = preprocess(load_model(args.model))
    graph = ir.from_proto(model).graph
    plan = build_plan(graph, target_rules("x86"))
    ops = Counter(n.op_type for n in graph)
    quantized = Counter(plan.quantized_nodes.values())
    info = {"opset": max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), default=0),
            "nodes": sum(ops.values()), "ops": dict(ops.most_common()),
            "quantizable_nodes": len(plan.quantized_nodes), "quantizable_ops": dict(quantized.most_common()),
            "float_on_data_path": [f.__dict__ for f in plan.float_nodes],
            "inputs": [(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim])
                       for i in model.graph.input]}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model}: opset {info['opset']}, {info['nodes']} nodes, inputs {info['inputs']}")
    for op, n in ops.most_common():
        print(f"  {op:24s} {n:5d}  quantized: {quantized.get(op, 0)}")
    share = len(plan.quantized_nodes) / max(1, len(plan.quantized_nodes) + len(plan.float_nodes))
    print(f"quantizable share of data-path nodes: {share * 100:.1f} %")
    for f in plan.float_nodes[:30]:
        print(f"  float: {f.node} ({f.op_type}): {f.reason}")
    return 0


def run_optimize(args: argparse.Namespace) -> int:
    from .deploy import save_optimized
    from .modelio import check_output_path, load_model

    out = check_output_path(args.model, args.output)
    load_model(args.model)  # clear errors for missing/corrupt files before onnxruntime sees them
    print(f"wrote {save_optimized(args.model, out)}")
    return 0
