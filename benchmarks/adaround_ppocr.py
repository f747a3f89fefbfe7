"""AdaRound on PP-OCRv4 rec at W8A8: CER with and without it, side by side (issue 12 must-show).

Static PTQ with default settings (x86 rules: u8 activations, s8 per-channel weights, hist
calibration, bias correction), once with ``weight_rounding="nearest"`` and once with
``weight_rounding="adaround"`` (slimq.static.adaround through the integrated static path: the
learned integers go to Q/DQ insertion; bias correction skips the layers AdaRound learned).
Calibration as in benchmarks/accuracy_control_ppocr.py: 48 rendered lines (seed 7, batch 1), of
which 32 calibrate (and train AdaRound) and 16 are held back for the fidelity check. Evaluation:
200 held-out lines (seed 0, batch 8). Goal: CER with AdaRound no worse than without.

Result (2-CPU machine, onnxruntime 1.32, `python benchmarks/adaround_ppocr.py`):

Measured 2026-12-01, AMD EPYC 2 vCPU (Zen 4, VNNI), shared machine (load 2-4):

| PP-OCRv4 rec | CER % | vs FP32 | held-back cosine | quantize time |
|---|---|---|---|---|
| FP32 | 1.72 | | | |
| W8A8 nearest | 2.50 | +0.78 | 0.9934 | 23 s |
| W8A8 adaround | 2.24 | +0.52 | 0.9964 | 276 s |
goal (CER with AdaRound no worse than without): PASS

Usage: python benchmarks/adaround_ppocr.py [--budget 300] [--test-lines 200] [--calib-seed 7]
"""

from __future__ import annotations

import argparse
import time

import slimq
from slimq.runtime.session import Predictor
from slimq.tasks import RecEvaluator, evaluate, rapidocr_model_path

CALIB, HOLD = 32, 16


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=300.0, help="AdaRound seconds (all layers)")
    ap.add_argument("--test-lines", type=int, default=200)
    ap.add_argument("--calib-seed", type=int, default=7)
    args = ap.parse_args()
    path = str(rapidocr_model_path("rec"))
    test = RecEvaluator(n_lines=args.test_lines, seed=0, batch_size=8)
    calib = list(RecEvaluator(n_lines=CALIB + HOLD, seed=args.calib_seed, batch_size=1).inputs())
    fp32 = evaluate(Predictor(path, threads="all").run, test)["cer"]
    print(f"FP32 CER {fp32:.2f} % on {args.test_lines} held-out lines", flush=True)
    rows = []
    for rounding in ("nearest", "adaround"):
        cfg = slimq.StaticConfig(max_samples=CALIB, holdout=HOLD, show_progress=False, weight_rounding=rounding,
                                 adaround_time_budget=args.budget)
        t = time.perf_counter()
        res = slimq.quantize(path, cfg, calib)
        secs = time.perf_counter() - t
        cer = evaluate(Predictor(res.model, threads="all").run, test)["cer"]
        rows.append({"rounding": rounding, "cer": cer, "seconds": secs,
                     "cosine": min(a.cosine for a in res.report.agreement)})
        print(f"W8A8 {rounding:8s} CER {cer:.2f} % ({cer - fp32:+.2f} pt vs FP32), held-back cosine "
              f"{rows[-1]['cosine']:.4f}, {secs:.0f} s", flush=True)
        for note in res.report.notes:
            if note.startswith("AdaRound"):
                print("  " + note, flush=True)
    print("\n| PP-OCRv4 rec | CER % | vs FP32 | held-back cosine | quantize time |\n|---|---|---|---|---|")
    print(f"| FP32 | {fp32:.2f} | | | |")
    for r in rows:
        print(f"| W8A8 {r['rounding']} | {r['cer']:.2f} | {r['cer'] - fp32:+.2f} | {r['cosine']:.4f} | "
              f"{r['seconds']:.0f} s |")
    ok = rows[1]["cer"] <= rows[0]["cer"]
    print(f"\ngoal (CER with AdaRound no worse than without): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
