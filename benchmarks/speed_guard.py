"""INT8 never slower than FP32: PP-OCR mobile v2 cls and PP-OCRv4 det on onnxruntime, 1 thread, batch 1.

For each model: FP32 (the file from the rapidocr-onnxruntime wheel), slimq INT8 with the speed guard
off (plain static PTQ) and on (the default, :mod:`slimq.runtime.speed`), timed side by side in interleaved
rounds in process CPU time (see slimq.runtime.select.interleaved_ms: on a shared 2-core machine wall times
were 2.5x inflated and noisy), and checked against FP32: cls by top-1 agreement on rendered text lines (half
of them upside down, the classifier's job), det by box F1 against FP32's own boxes and against the rendered
ground truth, plus probability-map IoU.

Usage: python benchmarks/speed_guard.py [--models cls det] [--calib 128] [--json out.json]

Measured (AMD EPYC Zen 4 with AVX512-VNNI, 2 cores shared with other jobs; onnxruntime 1.32.0):

    python benchmarks/speed_guard.py
    cls  FP32 0.357 ms | guard off 0.795 ms (0.45x) | guard on 0.357 ms (1.00x: every layer kept float,
         no int8 configuration beat FP32), top-1 agreement 100.0 % (guard on) vs 99.5 % (off)
    det  FP32 107.5 ms | guard off 65.0 ms (1.65x) | guard on 62.1 ms (1.73x: int8 HardSwish kept),
         box F1 vs FP32 100 % both, prob-map IoU vs FP32 0.981 (on) / 0.980 (off)

Tables of these runs: docs/models_in.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx

from slimq.core.config import StaticConfig
from slimq.runtime.select import interleaved_ms
from slimq.runtime.session import Predictor
from slimq.static.method import quantize_static
from slimq.tasks import DetEvaluator, collect_outputs, mean_prob_map_iou, rapidocr_model_path
from slimq.tasks.ocr_det import match_boxes
from slimq.tasks.ocr_rec import load_model_proto, read_rec_dictionary, rec_preprocess
from slimq.tasks.render import build_charset, find_cjk_fonts, render_lines

CLS_SHAPE = (48, 192)


def cls_lines(n: int, seed: int) -> np.ndarray:
    """Rendered text lines at the classifier's 48x192 input, every second one rotated by 180 degrees."""
    faces = find_cjk_fonts()
    chars = read_rec_dictionary(load_model_proto(rapidocr_model_path("rec")))
    lines = render_lines(n, seed, build_charset(chars[1:-1], faces), faces, max_aspect=CLS_SHAPE[1] / CLS_SHAPE[0])
    x = np.stack([rec_preprocess(img, *CLS_SHAPE) for img, _ in lines])
    x[1::2] = x[1::2, :, ::-1, ::-1]
    return np.ascontiguousarray(x)


def speed(models: dict[str, str | onnx.ModelProto], feed: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    runs = [Predictor(m, threads=1).run for m in models.values()]
    return dict(zip(models, interleaved_ms(runs, feed, rounds=rounds, min_time=1.0, clock="cpu")))


def quantize(path: str, calib: np.ndarray, guard: bool) -> tuple[onnx.ModelProto, dict]:
    t = time.perf_counter()
    r = quantize_static(path, calib, StaticConfig(show_progress=False, speed_guard=guard, compare_runtimes=guard))
    info = {"seconds": round(time.perf_counter() - t, 1), "int8_mac_share": round(r.report.int8_mac_share, 4),
            "notes": list(r.report.notes), "speed": r.report.details.get("speed")}
    return r.model, info


def run_cls(n_calib: int, rounds: int) -> dict:
    path = str(rapidocr_model_path("cls"))
    calib, test = cls_lines(n_calib, 11), cls_lines(200, 0)
    models: dict[str, str | onnx.ModelProto] = {"fp32": path}
    info = {}
    for guard in (False, True):
        key = f"int8 guard {'on' if guard else 'off'}"
        models[key], info[key] = quantize(path, calib, guard)
    ref = Predictor(path, threads="all").run({"x": test})[0].argmax(1)
    agree = {k: float((Predictor(m, threads="all").run({"x": test})[0].argmax(1) == ref).mean() * 100)
             for k, m in models.items()}
    ms = speed(models, {"x": test[:1]}, rounds)
    return {"ms": ms, "speedup": {k: ms["fp32"] / v for k, v in ms.items()}, "top1_agreement": agree, "info": info}


def box_f1(pred: list[np.ndarray], ref: list[np.ndarray]) -> float:
    hits = sum(len(match_boxes(p, r, 0.5)) for p, r in zip(pred, ref))
    n_p, n_r = sum(map(len, pred)), sum(map(len, ref))
    return 200.0 * hits / (n_p + n_r) if n_p + n_r else 100.0


def run_det(n_calib: int, rounds: int) -> dict:
    path = str(rapidocr_model_path("det"))
    ev = DetEvaluator(path, n_pages=8, seed=0)
    calib = np.concatenate([f["x"] for f in ev.calibration_batches(n_calib, 1)])
    models: dict[str, str | onnx.ModelProto] = {"fp32": path}
    info = {}
    for guard in (False, True):
        key = f"int8 guard {'on' if guard else 'off'}"
        models[key], info[key] = quantize(path, calib, guard)
    outs = {k: collect_outputs(Predictor(m, threads="all").run, ev) for k, m in models.items()}
    boxes = {k: ev.boxes(o) for k, o in outs.items()}
    quality = {k: {**ev.score(o), "box_f1_vs_fp32": box_f1(boxes[k], boxes["fp32"]),
                   "prob_map_iou_vs_fp32": mean_prob_map_iou(outs["fp32"], o)} for k, o in outs.items()}
    ms = speed(models, {"x": ev.images[:1]}, rounds)
    return {"ms": ms, "speedup": {k: ms["fp32"] / v for k, v in ms.items()}, "quality": quality, "info": info}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cls", "det"], choices=["cls", "det"])
    ap.add_argument("--calib", type=int, default=0, help="calibration samples (default: cls 128, det 16)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    results = {}
    for name in args.models:
        run = run_cls if name == "cls" else run_det
        results[name] = run(args.calib or (128 if name == "cls" else 16), args.rounds)
        r = results[name]
        print(f"{name}: " + " | ".join(f"{k} {v:.3f} ms ({r['speedup'][k]:.2f}x)" for k, v in r["ms"].items()))
        for k, v in r.get("top1_agreement", {}).items():
            print(f"  {k}: top-1 agreement with FP32 {v:.1f} %")
        for k, v in r.get("quality", {}).items():
            print(f"  {k}: F1 {v['f1']:.1f} %, box F1 vs FP32 {v['box_f1_vs_fp32']:.1f} %, "
                  f"prob-map IoU vs FP32 {v['prob_map_iou_vs_fp32']:.3f}")
        for k, v in r["info"].items():
            print(f"  {k}: {v['seconds']} s, int8 MACs {v['int8_mac_share'] * 100:.1f} %")
            for note in v["notes"]:
                print(f"    {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
