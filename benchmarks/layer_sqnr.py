"""Read-only diagnostics: where in a QDQ model the error comes from.

``layer_sqnr`` runs the preprocessed FP32 model and the QDQ model side by side
(both with onnxruntime's basic optimizations, so the QDQ model is *simulated*:
float kernels on quantize-dequantized values) and compares every float tensor
the two graphs share by name. The SQNR is cumulative (all quantization up to
that tensor); a large drop from one tensor to the next marks a guilty layer.

``float_mac_nodes`` lists the conv/matmul nodes that stay float in
onnxruntime's optimized graph (level "extended"), with their MACs.

Usage: python benchmarks/layer_sqnr.py FP32.onnx INT8.onnx [--rec|--npy FEEDS.npy] [--top 25]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import onnx

from slimq.graph.passes import preprocess
from slimq.io.model import load_model
from slimq.runtime.exposed import ExposedRunner
from slimq.runtime.macs import count_macs
from slimq.runtime.session import optimized_graph

Feeds = dict[str, np.ndarray]


@dataclass
class TensorError:
    tensor: str
    op_type: str
    position: int  # index of the producing node in the FP32 graph
    ref_sq: float = 0.0
    noise_sq: float = 0.0

    @property
    def sqnr_db(self) -> float:
        return math.inf if self.noise_sq == 0 else 10 * math.log10(max(self.ref_sq, 1e-30) / self.noise_sq)


def _float_outputs(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    inferred = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    out = []
    for i, n in enumerate(model.graph.node):
        for o in n.output:
            if o and inferred.get(o, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT:
                out.append((o, n.op_type, i))
    return out


def layer_sqnr(fp32: onnx.ModelProto, qdq: onnx.ModelProto, feeds: list[Feeds],
               budget_mb: int = 512) -> list[TensorError]:
    """Cumulative SQNR of every tensor present in both graphs, in FP32 topological order.

    ``fp32`` must be the preprocessed model (``slimq.graph.passes.preprocess``) the QDQ model was built from."""
    qdq_names = {o for n in qdq.graph.node for o in n.output}
    shared = [(t, op, i) for t, op, i in _float_outputs(fp32) if t in qdq_names]
    names = [t for t, _, _ in shared]
    errs = {t: TensorError(t, op, i) for t, op, i in shared}
    ref_run = ExposedRunner(fp32, names, feeds[0], budget_mb * 2**20)
    test_run = ExposedRunner(qdq, names, feeds[0], budget_mb * 2**20)
    for f in feeds:
        ref = dict(ref_run.run(f))
        for name, t in test_run.run(f):
            r = ref[name]
            if r.shape != t.shape or not np.issubdtype(r.dtype, np.floating):
                continue
            r64, t64 = r.astype(np.float64).ravel(), t.astype(np.float64).ravel()
            errs[name].ref_sq += float(r64 @ r64)
            errs[name].noise_sq += float(((r64 - t64) ** 2).sum())
    return sorted(errs.values(), key=lambda e: e.position)


def float_mac_nodes(qdq: onnx.ModelProto, feeds: Feeds) -> list[str]:
    """Conv/MatMul-type nodes left float by onnxruntime's QDQ fusions, with MACs."""
    count = count_macs(optimized_graph(qdq, "extended"), feeds)
    print(f"int8 MAC share {count.int8_share * 100:.2f} % (int8 {count.int8_macs / 1e6:.1f} M, "
          f"float {count.float_macs / 1e6:.1f} M MACs); int8 ops {dict(count.int8_ops)}, "
          f"float ops {dict(count.float_ops)}")
    return count.float_nodes


def print_table(errors: list[TensorError], top: int = 25) -> None:
    """All tensors with their SQNR, and the largest drops from one tensor to the next."""
    prev = math.inf
    drops = []
    for e in errors:
        drops.append((min(prev, 99.0) - min(e.sqnr_db, 99.0), e))
        prev = e.sqnr_db
    print(f"{'tensor':48s} {'op':18s} SQNR dB")
    for e in errors:
        print(f"{e.tensor[:48]:48s} {e.op_type:18s} {e.sqnr_db:6.1f}")
    print(f"\nlargest SQNR drops (top {top}):")
    for d, e in sorted(drops, key=lambda x: -x[0])[:top]:
        print(f"  {d:5.1f} dB at {e.tensor} ({e.op_type}), now {e.sqnr_db:.1f} dB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32")
    ap.add_argument("int8")
    ap.add_argument("--rec", action="store_true", help="feeds: 16 rendered PP-OCR rec lines")
    ap.add_argument("--npy", help="feeds: an .npy array (first axis = samples)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    fp32 = preprocess(load_model(args.fp32))
    qdq = onnx.load(args.int8)
    name = fp32.graph.input[0].name
    if args.rec:
        from slimq.tasks import RecEvaluator

        feeds = RecEvaluator(n_lines=8, seed=7).calibration_batches(2, 8)
    else:
        arr = np.load(args.npy).astype(np.float32)
        feeds = [{name: arr[i:i + 8]} for i in range(0, min(len(arr), 64), 8)]
    print_table(layer_sqnr(fp32, qdq, feeds), args.top)
    for n in float_mac_nodes(qdq, {k: v[:1] for k, v in feeds[0].items()}):
        print("  float MAC node:", n)


if __name__ == "__main__":
    main()
