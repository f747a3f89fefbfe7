"""AdaRound vs round-to-nearest at W4A8 on the shipped Fashion-MNIST CNNs: top-1 drop vs FP32, side by side.

W4A8 through slimq's static PTQ: ``StaticConfig(weight_bits=4)`` stores every Conv/Gemm weight as
4-bit symmetric integers per output channel ([-7, 7], in int8 initializers: onnxruntime runs them
with its int8 kernels, so these are real integer models), activations uint8 per tensor as
calibrated (x86 rules, hist), bias correction on (the default). ``weight_rounding="nearest"``
rounds each weight to nearest; ``weight_rounding="adaround"`` learns the rounding on the
calibration images (slimq.static.adaround, sequential: each layer fitted to the rounded earlier
ones) within ``adaround_time_budget`` seconds; bias correction skips the layers whose rounding was
learned (AdaRound fits their output mean itself, see slimq.static.rounding) and corrects the rest.
W8A8 (default settings) is printed for reference.

Calibration: the first 256 images of a fixed permutation of the train split (as
static_fmnist_algos.py). Evaluation: the full 10k test split. Goal: AdaRound's drop at most half of RTN's.

Result (2-CPU machine, onnxruntime 1.32, `python benchmarks/adaround_fmnist.py`):

Measured 2026-12-01, AMD EPYC 2 vCPU (Zen 4, VNNI), shared machine (load 2-4):

| model | FP32 top-1 | W8A8 | W4A8 RTN | drop | W4A8 AdaRound | drop | quantize time (AdaRound) |
|---|---|---|---|---|---|---|---|
| fmnist_resnet | 92.25 | 92.28 | 87.10 | +5.15 | 92.26 | -0.01 | 43 s |
| fmnist_mobilenet | 91.76 | 91.74 | 91.19 | +0.57 | 91.59 | +0.17 | 64 s |
goal (AdaRound drop <= half of RTN's): PASS

Usage: python benchmarks/adaround_fmnist.py [--models fmnist_resnet fmnist_mobilenet] [--calib 256]
       [--budget 120] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

from static_fmnist_algos import calibration_images, test_evaluator

from slimq.core.config import StaticConfig
from slimq.runtime.session import Predictor
from slimq.static.method import quantize_static
from slimq.tasks import evaluate
from slimq.zoo import ZOO_MODELS, asset_path


def run_model(name: str, calib, ev, args) -> dict:
    path = str(asset_path(name))
    top1 = lambda m: evaluate(Predictor(m, threads=args.threads).run, ev)["top1"]  # noqa: E731
    base = dict(max_samples=len(calib), holdout=0, show_progress=False)
    row = {"model": name, "fp32": top1(path), "w8a8": top1(quantize_static(path, calib, StaticConfig(**base)).model)}
    for rounding in ("nearest", "adaround"):
        t = time.perf_counter()
        res = quantize_static(path, calib, StaticConfig(**base, weight_bits=4, weight_rounding=rounding,
                                                        adaround_time_budget=args.budget))
        row[rounding], row[f"{rounding}_s"] = top1(res.model), time.perf_counter() - t
        if rounding == "adaround":
            row["note"] = next((n for n in res.report.notes if n.startswith("AdaRound")), "")
            row["layers"] = res.report.details["weight_rounding"]["per_layer"]
    print(f"{name:18s} FP32 {row['fp32']:.2f}  W8A8 {row['w8a8']:.2f}  W4A8 RTN {row['nearest']:.2f} "
          f"(drop {row['fp32'] - row['nearest']:+.2f})  W4A8 AdaRound {row['adaround']:.2f} "
          f"(drop {row['fp32'] - row['adaround']:+.2f})\n  {row['note']}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ZOO_MODELS), choices=ZOO_MODELS)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--budget", type=float, default=120.0, help="AdaRound seconds per model (all layers)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    calib, ev = calibration_images(args.calib), test_evaluator()
    print(f"calibration: {len(calib)} train images; evaluation: {len(ev.labels)} test images; W4A8: int4 [-7, 7] "
          "per-channel weights, uint8 activations (x86 rules), bias correction on")
    rows = [run_model(name, calib, ev, args) for name in args.models]
    print("\n| model | FP32 top-1 | W8A8 | W4A8 RTN | drop | W4A8 AdaRound | drop | quantize time (AdaRound) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['fp32']:.2f} | {r['w8a8']:.2f} | {r['nearest']:.2f} | "
              f"{r['fp32'] - r['nearest']:+.2f} | {r['adaround']:.2f} | {r['fp32'] - r['adaround']:+.2f} | "
              f"{r['adaround_s']:.0f} s |")
    failed = [r["model"] for r in rows if r["fp32"] - r["adaround"] > 0.5 * max(r["fp32"] - r["nearest"], 0.0)]
    print(f"\ngoal (AdaRound drop <= half of RTN's): {'FAIL: ' + ', '.join(failed) if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
