"""AdaRound vs round-to-nearest at W4A8 on the shipped Fashion-MNIST CNNs: top-1 drop vs FP32, side by side.

W4A8: every Conv/Gemm weight 4-bit symmetric per output channel ([-7, 7]), activations 8-bit as
slimq's static PTQ calibrates them (x86 rules, hist). How the models are built (see
``benchmarks/lowbit.py``): quantize_static at W8A8 per-channel (bias correction off, so the biases
are the FP32 ones for both variants), then the 8-bit weight initializers are replaced by the 4-bit
integers (stored in int8) and their scales, and the int32 biases re-quantized with the new scales.
onnxruntime runs the result with its int8 kernels: real integer models, not fake-quantized floats.
RTN rounds each weight to nearest; AdaRound (slimq.static.adaround, sequential: each layer fitted
to the rounded earlier ones) learns the rounding on the calibration images, within a time budget.

Calibration: the first 256 images of a fixed permutation of the train split (as
static_fmnist_algos.py). Evaluation: the full 10k test split. Goal: AdaRound's drop at most half of RTN's.

Usage: python benchmarks/adaround_fmnist.py [--models fmnist_resnet fmnist_mobilenet] [--calib 256]
       [--budget 300] [--iters 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import onnx
from lowbit import rtn_weights, set_weights
from static_fmnist_algos import calibration_images, test_evaluator

from slimq.core import qmath
from slimq.core.config import StaticConfig
from slimq.graph.passes import preprocess
from slimq.runtime.session import Predictor
from slimq.static.adaround import AdaRoundConfig, adaround, find_layers
from slimq.static.method import quantize_static
from slimq.tasks import evaluate
from slimq.zoo import ZOO_MODELS, asset_path

W4 = qmath.INT4.narrow()


def run_model(name: str, calib, ev, args) -> dict:
    fp32 = preprocess(onnx.load(asset_path(name)))
    top1 = lambda m: evaluate(Predictor(m, threads=args.threads).run, ev)["top1"]  # noqa: E731
    w8 = quantize_static(fp32, calib, StaticConfig(max_samples=len(calib), holdout=0, bias_correction=False,
                                                   show_progress=False)).model
    t = time.perf_counter()
    ada = adaround(fp32, calib, AdaRoundConfig(qtype=W4, iters=args.iters, time_budget_s=args.budget,
                                               max_samples=len(calib)))
    secs = time.perf_counter() - t
    row = {"model": name, "fp32": top1(fp32), "w8a8": top1(w8), "seconds": secs,
           "rtn": top1(set_weights(w8, rtn_weights(find_layers(fp32), W4, per_channel=True))),
           "adaround": top1(set_weights(w8, {k: (r.q, r.scale) for k, r in ada.items()})),
           "layers": len(ada), "kept_rtn": sum(not r.adaround for r in ada.values())}
    print(f"{name:18s} FP32 {row['fp32']:.2f}  W8A8 {row['w8a8']:.2f}  W4A8 RTN {row['rtn']:.2f} "
          f"(drop {row['fp32'] - row['rtn']:+.2f})  W4A8 AdaRound {row['adaround']:.2f} "
          f"(drop {row['fp32'] - row['adaround']:+.2f})  [{secs:.0f} s, {len(ada)} layers]", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ZOO_MODELS), choices=ZOO_MODELS)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--budget", type=float, default=300.0, help="AdaRound seconds per model (all layers)")
    ap.add_argument("--iters", type=int, default=1000, help="AdaRound iterations per layer (upper bound)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    calib, ev = calibration_images(args.calib), test_evaluator()
    print(f"calibration: {len(calib)} train images; evaluation: {len(ev.labels)} test images; weights int4 "
          f"[-7, 7] per channel, activations uint8 (x86 rules)")
    rows = [run_model(name, calib, ev, args) for name in args.models]
    print("\n| model | FP32 top-1 | W8A8 | W4A8 RTN | drop | W4A8 AdaRound | drop | AdaRound time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['fp32']:.2f} | {r['w8a8']:.2f} | {r['rtn']:.2f} | {r['fp32'] - r['rtn']:+.2f} | "
              f"{r['adaround']:.2f} | {r['fp32'] - r['adaround']:+.2f} | {r['seconds']:.0f} s |")
    failed = [r["model"] for r in rows if r["fp32"] - r["adaround"] > 0.5 * max(r["fp32"] - r["rtn"], 0.0)]
    print(f"\ngoal (AdaRound drop <= half of RTN's): {'FAIL: ' + ', '.join(failed) if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
