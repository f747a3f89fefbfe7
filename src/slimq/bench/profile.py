"""Where the time goes: onnxruntime's per-node profile, summarised by op type and by node.

Comparing the FP32 and INT8 profiles of a model shows which ops got faster and which
float islands (float Conv/MatMul, QuantizeLinear/DequantizeLinear pairs, transposes)
remain in the INT8 graph onnxruntime actually runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from slimq.bench.tables import format_table
from slimq.core.ops import is_dequantize
from slimq.io import atomic
from slimq.io.spec import Feeds
from slimq.runtime.session import session_options


@dataclass(frozen=True)
class OpTime:
    op_type: str
    nodes: int
    ms_per_run: float
    share: float  # of the summed kernel time


@dataclass(frozen=True)
class NodeTime:
    name: str
    op_type: str
    ms_per_run: float
    input_types: str  # element types of the node's inputs, e.g. "uint8,float,uint8"
    output_shape: str


@dataclass(frozen=True)
class Profile:
    runs: int
    kernel_ms_per_run: float
    run_ms: float  # median wall time of model_run, including executor overhead
    ops: list[OpTime]
    nodes: list[NodeTime]


def _types(shapes: list[dict]) -> str:
    return ",".join(next(iter(s)) for s in shapes if s)


def _shape(shapes: list[dict]) -> str:
    return "x".join(str(d) for d in next(iter(shapes[0].values()))) if shapes else ""


def summarize(events: list[dict], warmup: int) -> Profile:
    """Aggregate Node kernel events of the runs after the first `warmup`: per node, the median over runs."""
    runs, per_node, meta, run_us = 0, defaultdict(list), {}, []
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
            if runs > warmup:
                run_us.append(e["dur"])
        elif e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and runs >= warmup:
            name = e["name"].removesuffix("_kernel_time")
            per_node[name].append(e["dur"])
            a = e.get("args", {})
            meta[name] = (a.get("op_name", "?"), _types(a.get("input_type_shape", [])),
                          _shape(a.get("output_type_shape", [])))
    med = {n: float(np.median(v)) / 1e3 for n, v in per_node.items()}
    total = sum(med.values()) or 1e-9
    by_op: dict[str, list[float]] = defaultdict(list)
    for name, ms in med.items():
        by_op[meta[name][0]].append(ms)
    ops = sorted((OpTime(op, len(v), sum(v), sum(v) / total) for op, v in by_op.items()), key=lambda o: -o.ms_per_run)
    nodes = sorted((NodeTime(n, meta[n][0], ms, meta[n][1], meta[n][2]) for n, ms in med.items()),
                   key=lambda n: -n.ms_per_run)
    return Profile(len(run_us), total, float(np.median(run_us)) / 1e3 if run_us else 0.0, ops, nodes)


def profile_model(model: str | os.PathLike | onnx.ModelProto, feeds: Feeds, threads: int | str = 1,
                  runs: int = 20, warmup: int = 3) -> Profile:
    """Run the model `warmup + runs` times with onnxruntime profiling on; the trace goes to a temp folder."""
    tmp = tempfile.mkdtemp(prefix="slimq-profile-")
    try:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summarize(events, warmup)


# Integer kernels whose first input may be a float scale (e.g. QLinearConcat's y_scale).
INTEGER_OP_PREFIXES = ("QLinear", "QGemm", "QAttention", "QEmbed", "DynamicQuantize", "MatMulInteger",
                       "ConvInteger")


def float_islands(p: Profile) -> list[NodeTime]:
    """Nodes of a quantized graph that read float activations (float islands, QuantizeLinear) or make them
    (DequantizeLinear), slowest first."""
    return [n for n in p.nodes if not n.op_type.startswith(INTEGER_OP_PREFIXES)
            and (n.input_types.startswith("float") or is_dequantize(n.op_type))]


def _island_lines(p: Profile, top: int) -> list[str]:
    islands = float_islands(p)
    if not islands:
        return ["No float activations: every timed node reads integer data.", ""]
    ms = sum(n.ms_per_run for n in islands)
    by_op: dict[str, list[float]] = defaultdict(list)
    for n in islands:
        by_op[n.op_type].append(n.ms_per_run)
    rows = [[op, str(len(v)), f"{sum(v):.3f}"] for op, v in sorted(by_op.items(), key=lambda kv: -sum(kv[1]))]
    lines = [f"Float islands: {len(islands)} nodes read float activations or dequantize, {ms:.3f} ms/run "
             f"({ms / max(p.kernel_ms_per_run, 1e-9) * 100:.1f} % of kernel time).", "",
             format_table(["op type (float input or DequantizeLinear)", "nodes", "ms/run"], rows), "",
             "Slowest of them:", ""]
    rows = [[n.name, n.op_type, n.input_types, n.output_shape, f"{n.ms_per_run:.3f}"] for n in islands[:top]]
    return lines + [format_table(["node", "op", "input types", "output shape", "ms/run"], rows), ""]


def profile_markdown(title: str, profiles: dict[str, Profile], top: int = 12) -> str:
    """Markdown: per model, the top op types by time; for the others than the first (FP32), float islands too."""
    lines = [f"# Profile: {title}", ""]
    for i, (label, p) in enumerate(profiles.items()):
        lines += [f"## {label}", "", f"{p.runs} profiled runs; median model_run {p.run_ms:.3f} ms, summed per-node "
                  f"median kernel time {p.kernel_ms_per_run:.3f} ms per run.", ""]
        rows = [[o.op_type, str(o.nodes), f"{o.ms_per_run:.3f}", f"{o.share * 100:.1f} %"] for o in p.ops[:top]]
        lines += [format_table(["op type", "nodes", "ms/run", "share"], rows), ""]
        if i > 0:
            lines += _island_lines(p, top)
    return "\n".join(lines)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (slimq.io.atomic: mode from the umask, nothing partial left)."""
    return atomic.write_text(path, text)
