#!/usr/bin/env python
"""Where do onnxruntime's integer kernels leave the float QDQ semantics of a QDQ ONNX model?

    python scripts/qdq_divergence.py model.qdq.onnx [--inputs x.npz | --batch 4] [--threads 1] [--all]

Runs the model twice in onnxruntime: as a float QDQ reference (``ORT_DISABLE_ALL``: QuantizeLinear and
DequantizeLinear run as float ops, Conv/Gemm/Add in float) and as onnxruntime optimizes it (QLinearConv,
QLinearAdd, QGemm, ... integer kernels). The optimized graph is saved (``optimized_model_filepath``), every
quantized tensor in it is added as a graph output and the saved file is run with optimizations disabled,
so its intermediate integer tensors are visible; each is matched to the reference's QuantizeLinear output
with the same output scale (NHWC tensors of ``channels_last`` kernels are transposed back).

Two tables, in topological order, in integer steps of each tensor's grid:

* ``global``: the optimized run vs the reference end to end (differences accumulate from upstream);
* ``local``: every fused op run alone on the *reference's* inputs (a one-node model), so each row is
  the error that op itself adds. The first rows with differences of >= 2 steps are the culprits.

Inputs: an ``.npz`` whose keys are the model's input names (else the first array goes to the first
input), or ``--batch`` random normal samples (``--seed``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

# Position of the output scale among a quantized op's inputs (the zero point follows it).
OUTPUT_SCALE_INPUT = {"QuantizeLinear": 1, "QLinearConv": 6, "QLinearMatMul": 6, "QLinearAdd": 6,
                      "QLinearMul": 6, "QGemm": 7, "QLinearSigmoid": 3, "QLinearLeakyRelu": 3,
                      "QLinearAveragePool": 3, "QLinearGlobalAveragePool": 3, "QLinearSoftmax": 3,
                      "QLinearConcat": 0, "QLinearReduceMean": 3}
NPTYPE = {onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}


@dataclass(frozen=True)
class Row:
    """Differences of one quantized tensor, in steps of its grid."""

    name: str
    op: str
    max_steps: int
    share_1: float
    share_2: float
    size: int
    gain: float | None = None


def session(model: onnx.ModelProto, optimize: bool, threads: int,
            optimized_path: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_all(model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray], threads: int,
            optimize: bool = False) -> dict[str, np.ndarray]:
    """The values of ``names`` (added as graph outputs) for ``feeds``."""
    m = copy.deepcopy(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return dict(zip(names, session(m, optimize, threads).run(names, feeds)))


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def quantized_outputs(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(tensor, output scale name, op type) of every activation-producing quantized node, in graph order."""
    consts = initializers(model)
    rows = []
    for node in model.graph.node:
        idx = OUTPUT_SCALE_INPUT.get(node.op_type)
        if idx is None or len(node.input) <= idx or node.input[0] in consts:
            continue
        rows.append((node.output[0], node.input[idx], f"{node.domain + ':' if node.domain else ''}{node.op_type}"))
    return rows


def _const(consts: dict[str, onnx.TensorProto], node: onnx.NodeProto, i: int) -> np.ndarray | None:
    if len(node.input) <= i or node.input[i] not in consts:
        return None
    return numpy_helper.to_array(consts[node.input[i]]).astype(np.float64)


def noise_gain(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> float | None:
    """How many output steps one input step becomes: for QLinearConv/QGemm/QLinearMatMul the median over
    output channels of ``s_in * s_w * ||w_q||_2 / s_out`` (every input off by an independent +-1 step),
    for QLinearAdd/Mul ``max(s_a, s_b) / s_out``. None for other ops or a float output."""
    if node.op_type in ("QLinearAdd", "QLinearMul"):
        a, b, out = (_const(consts, node, i) for i in (1, 4, 6))
        return None if a is None or b is None or out is None else float(max(a, b) / out)
    if node.op_type not in ("QLinearConv", "QGemm", "QLinearMatMul"):
        return None
    s_in, w, s_w, s_out = (_const(consts, node, i) for i in (1, 3, 4, 7 if node.op_type == "QGemm" else 6))
    if s_in is None or w is None or s_w is None or s_out is None:
        return None
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    rows = w.reshape(w.shape[0], -1) if node.op_type == "QLinearConv" or trans_b else w.T
    norms = np.sqrt((rows ** 2).sum(axis=1)) * np.broadcast_to(s_w.reshape(-1), rows.shape[:1])
    return float(np.median(s_in * norms / s_out))


def to_layout(ref: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``ref`` in the layout of an optimized tensor of ``shape`` (NCHW as is, or NHWC), None if neither."""
    if ref.shape == shape:
        return ref
    if ref.ndim >= 3:
        perm = (0, *range(2, ref.ndim), 1)
        if ref.transpose(perm).shape == shape:
            return ref.transpose(perm)
    return None


def step_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int64) - b.astype(np.int64))


def make_row(name: str, op: str, got: np.ndarray, ref: np.ndarray, gain: float | None = None) -> Row:
    d = step_diff(got, ref)
    return Row(name, op, int(d.max(initial=0)), float((d >= 1).mean()), float((d >= 2).mean()), int(d.size), gain)


def optimize_model(model: onnx.ModelProto, threads: int, folder: Path) -> onnx.ModelProto:
    """onnxruntime's optimized graph of ``model`` (what its integer execution runs)."""
    path = folder / "optimized.onnx"
    session(model, True, threads, optimized_path=path)
    return onnx.load(str(path))


def reference_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                     threads: int) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Float-QDQ values of every activation QuantizeLinear output, and output-scale name -> those tensors
    (in graph order: exporters and onnxruntime share one initializer among equal scales)."""
    outs = quantized_outputs(model)
    values = run_all(model, [t for t, _, _ in outs], feeds, threads)
    by_scale: dict[str, list[str]] = {}
    for tensor, scale, _ in outs:
        by_scale.setdefault(scale, []).append(tensor)
    return values, by_scale


def _match(candidates: list[str], ref: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray | None:
    """The first unused candidate whose value fits ``shape`` (removed from ``candidates``)."""
    for i, tensor in enumerate(candidates):
        value = to_layout(ref[tensor], shape)
        if value is not None:
            del candidates[i]
            return value
    return None


def optimized_reference(opt: onnx.ModelProto, got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                        by_scale: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Reference value of every optimized tensor that has one: matched quantized outputs, in the
    optimized tensor's layout, and Transposes of those."""
    out: dict[str, np.ndarray] = {}
    pending = {k: list(v) for k, v in by_scale.items()}
    for node in opt.graph.node:
        idx = OUTPUT_SCALE_INPUT.get(node.op_type)
        name = node.output[0]
        if idx is not None and len(node.input) > idx and node.input[idx] in pending and name in got:
            value = _match(pending[node.input[idx]], ref, got[name].shape)
            if value is not None:
                out[name] = value
        elif node.op_type == "Transpose" and node.input[0] in out:
            perm = helper.get_attribute_value(next(a for a in node.attribute if a.name == "perm"))
            out[name] = out[node.input[0]].transpose(perm)
    return out


def one_node_model(opt: onnx.ModelProto, node: onnx.NodeProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A model of ``node`` alone: its constant inputs as initializers, the rest as graph inputs."""
    consts = initializers(opt)
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype), feeds[n].shape)
              for n in dict.fromkeys(node.input) if n and n not in consts]
    graph = helper.make_graph([node], "one_node", inputs, [helper.make_empty_tensor_value_info(node.output[0])],
                              [consts[n] for n in dict.fromkeys(node.input) if n in consts])
    m = helper.make_model(graph, opset_imports=list(opt.opset_import))
    m.ir_version = opt.ir_version
    return m


def local_rows(opt: onnx.ModelProto, opt_ref: dict[str, np.ndarray], threads: int) -> list[Row]:
    """Each quantized optimized op alone, on the reference values of its inputs, vs the reference output."""
    consts = initializers(opt)
    rows = []
    for node in opt.graph.node:
        name = node.output[0]
        if node.op_type not in OUTPUT_SCALE_INPUT or name not in opt_ref:
            continue
        live = [n for n in node.input if n and n not in consts]
        if not all(n in opt_ref for n in live):
            continue
        feeds = {n: opt_ref[n] for n in live}
        got = session(one_node_model(opt, node, feeds), False, threads).run([name], feeds)[0]
        rows.append(make_row(name, f"{node.domain + ':' if node.domain else ''}{node.op_type}", got, opt_ref[name]))
    return rows


def global_rows(opt: onnx.ModelProto, got: dict[str, np.ndarray], opt_ref: dict[str, np.ndarray]) -> list[Row]:
    consts = initializers(opt)
    rows = []
    for node in opt.graph.node:
        tensor = node.output[0]
        if node.op_type in OUTPUT_SCALE_INPUT and tensor in opt_ref and tensor in got:
            op = f"{node.domain + ':' if node.domain else ''}{node.op_type}"
            rows.append(make_row(tensor, op, got[tensor], opt_ref[tensor], noise_gain(node, consts)))
    return rows


def analyse(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int) -> tuple[list[Row], list[Row]]:
    ref, by_scale = reference_values(model, feeds, threads)
    with tempfile.TemporaryDirectory(prefix="qdq-divergence-") as tmp:
        opt = optimize_model(model, threads, Path(tmp))
    names = [t for t, _, _ in quantized_outputs(opt)]
    names += [n.output[0] for n in opt.graph.node if n.op_type == "Transpose"]
    got = run_all(opt, names, feeds, threads)
    opt_ref = optimized_reference(opt, got, ref, by_scale)
    return global_rows(opt, got, opt_ref), local_rows(opt, opt_ref, threads)


def load_feeds(model: onnx.ModelProto, npz: Path | None, batch: int, seed: int) -> dict[str, np.ndarray]:
    consts = set(initializers(model))
    graph_inputs = [i for i in model.graph.input if i.name not in consts]
    if npz is not None:
        data = np.load(npz)
        if all(i.name in data for i in graph_inputs):
            return {i.name: data[i.name] for i in graph_inputs}
        if len(graph_inputs) == 1:
            return {graph_inputs[0].name: data[data.files[0]]}
        sys.exit(f"{npz}: needs arrays named {[i.name for i in graph_inputs]}")
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in graph_inputs:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def format_rows(title: str, rows: list[Row], show_all: bool) -> str:
    lines = [title, f"{'#':>4} {'tensor':<24}{'op':<28}{'max':>5}{'>=1 step':>10}{'>=2 steps':>11}{'gain':>7}"]
    for i, r in enumerate(rows):
        if show_all or r.max_steps >= 2:
            gain = "" if r.gain is None else f"{r.gain:7.2f}"
            lines.append(f"{i:>4} {r.name[:23]:<24}{r.op[:27]:<28}{r.max_steps:>5}{100 * r.share_1:>9.3f}%"
                         f"{100 * r.share_2:>10.4f}%{gain}")
    first = next((r for r in rows if r.max_steps >= 2), None)
    lines.append(f"first tensor with >= 2 steps: {first.name} ({first.op}, max {first.max_steps})" if first
                 else "no tensor differs by >= 2 steps")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--inputs", type=Path, help=".npz of model inputs (default: random normal)")
    p.add_argument("--batch", type=int, default=4, help="batch of random inputs (dynamic dims)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N samples of --inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--all", action="store_true", help="print every tensor, not only those off by >= 2 steps")
    args = p.parse_args(argv)
    model = onnx.load(str(args.model))
    feeds = load_feeds(model, args.inputs, args.batch, args.seed)
    if args.limit:
        feeds = {k: v[:args.limit] for k, v in feeds.items()}
    glob, local = analyse(model, feeds, args.threads)
    print(format_rows("global: optimized (integer) run vs float QDQ reference, in steps", glob, args.all))
    print()
    print(format_rows("local: each fused op alone on the reference's inputs, in steps", local, args.all))
    return 0


if __name__ == "__main__":
    sys.exit(main())
