"""Static PTQ of the shipped Fashion-MNIST CNNs with every calibration algorithm: FP32 vs INT8 top-1.

Calibration: the first 256 images of a fixed random permutation of the *train*
split. Evaluation: the full 10k *test* split. Requirement checked: with hist, KL
and mse the INT8 top-1 is within 0.5 pt of FP32.

``--with-proposed`` adds the row "KL_fixed": the proposed KL fix of
``benchmarks/proposed_observers.py``, registered in this process only (slimq is not edited).

Usage: python benchmarks/static_fmnist_algos.py [--models fmnist_resnet fmnist_mobilenet]
       [--algos abs_max avg hist KL mse emd] [--calib 256] [--threads 2] [--with-proposed]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from slimq.core.config import StaticConfig
from slimq.core.errors import ModelLoadError
from slimq.io.fashion_mnist import load_fashion_mnist, preprocess
from slimq.runtime.session import Predictor
from slimq.static.method import quantize_static
from slimq.tasks import ClassificationEvaluator, evaluate
from slimq.zoo import ZOO_MODELS, asset_path

ALGOS = ("abs_max", "avg", "hist", "KL", "mse", "emd")
MUST_PASS = ("hist", "KL", "mse")
MAX_DROP_PT = 0.5
CALIB_SEED = 0


def calibration_images(n: int, seed: int = CALIB_SEED) -> np.ndarray:
    """``n`` preprocessed train images, drawn with a fixed seed (never from the test split)."""
    images, _ = load_fashion_mnist("train")
    idx = np.random.default_rng(seed).permutation(len(images))[:n]
    return preprocess(images[idx])


def test_evaluator(limit: int | None = None) -> ClassificationEvaluator:
    images, labels = load_fashion_mnist("test")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ClassificationEvaluator(preprocess(images), labels, batch_size=500, input_name="input")


def run_model(name: str, algos: tuple[str, ...], calib: np.ndarray, ev: ClassificationEvaluator,
              threads: int) -> list[dict]:
    path = asset_path(name)
    fp32 = evaluate(Predictor(path, threads=threads).run, ev)["top1"]
    rows = []
    for algo in algos:
        t = time.perf_counter()
        res = quantize_static(str(path), calib, StaticConfig(algo=algo, max_samples=len(calib), holdout=0,
                                                             show_progress=False))
        secs = time.perf_counter() - t
        int8 = evaluate(Predictor(res.model, threads=threads).run, ev)["top1"]
        rows.append({"model": name, "algo": algo, "fp32": fp32, "int8": int8, "drop": fp32 - int8,
                     "mac_share": res.report.int8_mac_share, "seconds": secs})
        print(f"{name:18s} {algo:8s} FP32 {fp32:6.2f}  INT8 {int8:6.2f}  drop {fp32 - int8:+5.2f} pt  "
              f"int8 MACs {res.report.int8_mac_share * 100:5.1f} %  ({secs:.1f} s)", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ZOO_MODELS), choices=ZOO_MODELS)
    ap.add_argument("--algos", nargs="+", default=list(ALGOS))
    ap.add_argument("--calib", type=int, default=256, help="calibration images from the train split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--with-proposed", action="store_true", help="also run the proposed KL fix (KL_fixed)")
    args = ap.parse_args()
    if args.with_proposed:
        from proposed_observers import register

        args.algos.append(register())
    calib, ev = calibration_images(args.calib), test_evaluator()
    print(f"calibration: {len(calib)} train images (seed {CALIB_SEED}); evaluation: {len(ev.labels)} test images")
    rows = []
    for name in args.models:
        try:
            rows += run_model(name, tuple(args.algos), calib, ev, args.threads)
        except ModelLoadError as e:
            print(f"{name}: skipped ({e})")
    failed = [r for r in rows if r["algo"] in MUST_PASS and r["drop"] > MAX_DROP_PT]
    print("\n| model | algo | FP32 top-1 | INT8 top-1 | drop (pt) | int8 MACs |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['algo']} | {r['fp32']:.2f} | {r['int8']:.2f} | {r['drop']:+.2f} | "
              f"{r['mac_share'] * 100:.1f} % |")
    verdict = "FAIL: " + ", ".join(f"{r['model']}/{r['algo']}" for r in failed) if failed else "PASS"
    print(f"\nrequirement (hist, KL, mse within {MAX_DROP_PT} pt of FP32): {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
