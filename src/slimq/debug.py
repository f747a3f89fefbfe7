"""Find the guilty layer: per-tensor SQNR of a QDQ model against its FP32 original.

Both models are run with the same inputs and every float tensor that exists in
both graphs is compared. In a QDQ model the original tensor names still carry
the float values computed from dequantized inputs, so the SQNR drop from one
tensor to the next shows where quantization error enters.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import onnx

from .calibrate import ExposedRunner
from .data import load_samples, model_inputs
from .modelio import load_model
from .passes import preprocess


@dataclass(frozen=True)
class LayerError:
    tensor: str
    producer: str  # op type that produces the tensor in the FP32 graph
    sqnr_db: float
    cosine: float


def _float_tensors(model: onnx.ModelProto) -> dict[str, str]:
    return {o: n.op_type for n in model.graph.node for o in n.output if o}


def layer_errors(fp32: onnx.ModelProto, int8: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                 budget_mb: int = 512) -> list[LayerError]:
    """SQNR/cosine of each shared tensor, in graph order of the FP32 model."""
    producers = _float_tensors(fp32)
    shared = [t for t in producers if t in _float_tensors(int8)]
    acc = {t: np.zeros(4) for t in shared}  # signal, noise, dot, test energy
    ref_run = ExposedRunner(fp32, shared, feeds[0], budget_mb * 2**20)
    test_run = ExposedRunner(int8, shared, feeds[0], budget_mb * 2**20)
    for f in feeds:
        ref = dict(ref_run.run(f))
        for name, t in test_run.run(f):
            r, q = ref[name].astype(np.float64).ravel(), t.astype(np.float64).ravel()
            acc[name] += (r @ r, ((r - q) ** 2).sum(), r @ q, q @ q)
        del ref
    out = []
    for t in shared:
        s, n, d, e = acc[t]
        sq = float("inf") if n == 0 else 10 * np.log10(max(s, 1e-30) / n)
        cos = 1.0 if s == 0 and e == 0 else (d / np.sqrt(s * e) if s and e else 0.0)
        out.append(LayerError(t, producers[t], float(sq), float(cos)))
    return out


def format_errors(errors: list[LayerError], worst: int = 15) -> str:
    lines = ["tensors with the lowest SQNR (FP32 vs INT8), where error enters first:"]
    for e in sorted(errors, key=lambda e: e.sqnr_db)[:worst]:
        lines.append(f"  {e.sqnr_db:7.1f} dB  cos {e.cosine:.4f}  {e.tensor} ({e.producer})")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = sub.add_parser("debug", help="per-layer SQNR of an INT8 model against its FP32 original")
    p.add_argument("fp32")
    p.add_argument("int8")
    p.add_argument("--data", required=True, help="inputs: .npy/.npz file or folder")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--worst", type=int, default=15)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    fp32 = preprocess(load_model(args.fp32))
    int8 = load_model(args.int8)
    samples = load_samples(args.data, model_inputs(fp32))
    feeds = [samples.sample(i) for i in range(min(args.samples, len(samples)))]
    print(format_errors(layer_errors(fp32, int8, feeds), args.worst))
    return 0
