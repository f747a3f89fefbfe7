"""`slimq inspect`, `slimq optimize` and `slimq cpu`."""

from __future__ import annotations

import argparse
import json
from collections import Counter


def run_inspect(args: argparse.Namespace) -> int:
    import onnx_ir as ir

    from slimq.core.config import target_rules
    from slimq.graph.passes import preprocess
    from slimq.graph.plan import build_plan
    from slimq.io.source import load_source

    model = preprocess(load_source(args.model).model)
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
    from slimq.io.model import check_output_path, load_model
    from slimq.runtime.session import save_optimized

    out = check_output_path(args.model, args.output)
    load_model(args.model)  # clear errors for missing/corrupt files before onnxruntime sees them
    print(f"wrote {save_optimized(args.model, out)}")
    return 0


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    i = sub.add_parser("inspect", help="list a model's ops and the quantizable share")
    i.add_argument("model", help="an .onnx file, a PyTorch .pt2 (torch.export.save) or a Paddle inference model folder")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_inspect)

    o = sub.add_parser("optimize", help="save onnxruntime's optimized graph of a model for fast loading")
    o.add_argument("model")
    o.add_argument("-o", "--output", required=True)
    o.set_defaults(func=run_optimize)

    c = sub.add_parser("cpu", help="the class of this CPU (VNNI, AMX) and what it means for each runtime")
    c.add_argument("--json", action="store_true", help="print the facts as JSON")
    c.set_defaults(func=run_cpu)


def run_cpu(args: argparse.Namespace) -> int:
    from slimq.runtime.cpu import cpu_info

    info = cpu_info()
    print(json.dumps(info.to_dict(), indent=2) if args.json else info.format())
    return 0
