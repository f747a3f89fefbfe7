"""Accuracy control on PP-OCRv4 rec with an adverse calibration draw (issue 11).

Calibration: 32 rendered lines (+16 held back for the label-free check), from a seed disjoint from
everything else. Three runs, each checked on --test-lines held-out lines (seed 0, never seen):
  plain      static PTQ with default settings (the adverse draw's baseline);
  max-drop   --max-drop 0.3 --metric cer --eval ocr-rec:120 (120 search lines, seed 1000);
  cosine     label-free --min-cosine C (default 0.995) on the 16 held-back calibration lines.
Prints CER vs FP32, the int8 MAC share, the 1-thread speed-up against FP32 (interleaved timing),
and the search time. Pass: CER <= FP32 + 0.3 pt, >= 85 % int8 MACs, >= 1.5x faster.

Usage: python benchmarks/accuracy_control_ppocr.py [--test-lines 200] [--calib-seed 7] [--min-cosine 0.995]
       [--time-budget 600] [--runs plain max-drop cosine]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import slimq
from slimq.core.budget import Budget
from slimq.runtime.cpu import cpu_info
from slimq.runtime.select import interleaved_ms as timed_rounds
from slimq.runtime.session import Predictor
from slimq.tasks import RecEvaluator, evaluate, rapidocr_model_path

CALIB, HOLD = 32, 16


def interleaved_ms(fp32: str, int8, feeds: dict, rounds: int = 5, per: int = 10) -> tuple[float, float]:
    """Median 1-thread latency of FP32 and INT8, alternating blocks of `per` runs."""
    runs = [Predictor(m, threads=1).run for m in (fp32, int8)]
    f_ms, q_ms = timed_rounds(runs, feeds, rounds=rounds, min_time=0.0, min_runs=per)
    return f_ms, q_ms


def calibration(seed: int) -> list[dict]:
    ev = RecEvaluator(n_lines=CALIB + HOLD, seed=seed, batch_size=1)
    return list(ev.inputs())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test-lines", type=int, default=200)
    ap.add_argument("--calib-seed", type=int, default=7)
    ap.add_argument("--min-cosine", type=float, default=0.995)
    ap.add_argument("--time-budget", type=float, default=600)
    ap.add_argument("--runs", nargs="+", default=["plain", "max-drop", "cosine"])
    ap.add_argument("--out", type=Path, help="folder to write the INT8 models and reports into")
    args = ap.parse_args()
    print(cpu_info())
    path = str(rapidocr_model_path("rec"))
    test = RecEvaluator(n_lines=args.test_lines, seed=0, batch_size=8)
    fp32 = evaluate(Predictor(path, threads="all").run, test)["cer"]
    print(f"FP32 CER {fp32:.2f} % on {args.test_lines} held-out lines", flush=True)
    calib = calibration(args.calib_seed)
    budgets = {"plain": None,
               "max-drop": Budget(max_drop=0.3, metric="cer", time_budget=args.time_budget),
               "cosine": Budget(min_cosine=args.min_cosine, time_budget=args.time_budget)}
    feeds = next(iter(test.inputs()))
    feeds = {k: v[:1] for k, v in feeds.items()}
    for name in args.runs:
        cfg = slimq.StaticConfig(max_samples=CALIB, holdout=HOLD, budget=budgets[name], show_progress=False)
        out = args.out / f"rec.{name}.onnx" if args.out else None
        t = time.perf_counter()
        res = slimq.quantize(path, cfg, calib, out, **({"eval_data": "ocr-rec:120"} if name == "max-drop" else {}))
        secs = time.perf_counter() - t
        cer = evaluate(Predictor(res.model, threads="all").run, test)["cer"]
        f_ms, q_ms = interleaved_ms(path, res.model, feeds)
        share = res.report.int8_mac_share
        ok = cer - fp32 <= 0.3 and share >= 0.85 and f_ms / q_ms >= 1.5
        floats = res.report.details.get("search", {}).get("float_layers", [])
        print(f"{name:9s} CER {cer:.2f} % ({cer - fp32:+.2f} pt)  int8 MACs {share * 100:.1f} %  "
              f"{f_ms / q_ms:.2f}x ({f_ms:.1f} vs {q_ms:.1f} ms)  float layers {len(floats)}  "
              f"search {secs:.0f} s  {'PASS' if ok else 'fail'}", flush=True)


if __name__ == "__main__":
    main()
