"""Static PTQ of PP-OCRv4 rec (and det): CER, int8 MAC share, and which algorithms pass.

rec: calibrated on rendered text lines (``RecEvaluator.calibration_batches``, a
seed disjoint from evaluation), evaluated on ``--lines`` rendered lines (Chinese
and Latin). Pass = INT8 CER within 0.3 pt of FP32 and >= 90 % of MACs in int8
kernels. ``--float-logits`` also runs each algorithm with the classifier's bias
Add (the op feeding the final Softmax) left in float.
det (``--det``, informational): prob-map IoU vs FP32, box F1, MAC share.

Conv + affine folding, HardSwish fusion (``slimq.graph.passes``, run by ``preprocess``) and
bias correction (``StaticConfig.bias_correction``) are part of slimq; ``--no-bias-correction``
turns the latter off. ``--cle`` first applies cross-layer equalization of Conv pairs
(``benchmarks/ppocr_rewrite.py``, a prototype) to the preprocessed FP32 rec model.

Usage: python benchmarks/static_ppocr.py [--algos hist mse ...] [--lines 400] [--calib-lines 64]
       [--float-logits] [--cle] [--no-bias-correction] [--skip NODE ...] [--float-stem N] [--with-proposed]
       [--det] [--latency]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import onnx
from ppocr_rewrite import equalize_conv_pairs
from static_resnet_shape import time_side_by_side

from slimq.core.config import SkipSpec, StaticConfig
from slimq.graph.passes import preprocess
from slimq.io.model import load_model, save_model
from slimq.runtime.session import Predictor
from slimq.static.method import QuantResult, quantize_static
from slimq.tasks import (
    DetEvaluator,
    RecEvaluator,
    collect_outputs,
    evaluate,
    mean_prob_map_iou,
    rapidocr_model_path,
)

ALGOS = ("hist", "KL", "mse", "emd", "avg", "abs_max", "min_max")
MAX_CER_DELTA = 0.3
MIN_MAC_SHARE = 0.9
HOLDOUT = 16
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slimq" / "bench"


def equalized_rec() -> str:
    """The preprocessed rec model after cross-layer equalization (prototype), in the bench cache."""
    path = CACHE / "ch_PP-OCRv4_rec_cle.onnx"
    CACHE.mkdir(parents=True, exist_ok=True)
    model, pairs = equalize_conv_pairs(preprocess(load_model(rapidocr_model_path("rec"))))
    save_model(model, path)
    print(f"rec model: cross-layer equalization of {pairs} Conv pairs")
    return str(path)


def logit_nodes(model: onnx.ModelProto) -> tuple[str, ...]:
    """Names of the nodes producing the input of the last Softmax, looking through Flatten/Reshape."""
    producer = {o: n for n in model.graph.node for o in n.output}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if not softmax:
        return ()
    node = producer.get(softmax[-1].input[0])
    while node is not None and node.op_type in ("Flatten", "Reshape", "Transpose"):
        node = producer.get(node.input[0])
    return (node.name,) if node is not None and node.name else ()


def stem_nodes(path: str, n_convs: int) -> tuple[str, ...]:
    """Names of all nodes before the ``n_convs``-th Conv of the preprocessed model (0: none)."""
    if n_convs <= 0:
        return ()
    nodes = list(preprocess(load_model(path)).graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    return tuple(n.name or n.output[0] for n in nodes[: convs[min(n_convs, len(convs) - 1)]])


def quantize_rec(path: str, ev: RecEvaluator, algo: str, calib_lines: int, skip: SkipSpec,
                 target: str = "x86", bias_correction: bool = True) -> QuantResult:
    calib = ev.calibration_batches(-(-(calib_lines + HOLDOUT) // 8), 8)
    cfg = StaticConfig(algo=algo, max_samples=calib_lines, holdout=HOLDOUT, skip=skip, show_progress=False,
                       target=target, bias_correction=bias_correction)
    return quantize_static(path, calib, cfg)


def run_rec(args: argparse.Namespace) -> list[dict]:
    ev = RecEvaluator(n_lines=args.lines, seed=0, batch_size=8)
    original = str(rapidocr_model_path("rec"))
    path = equalized_rec() if args.cle else original
    fp32 = evaluate(Predictor(original, threads=args.threads).run, ev)
    n_chars = sum(len(t.replace(" ", "")) for t in ev.texts)
    if args.cle:
        rw = evaluate(Predictor(path, threads=args.threads).run, ev)
        print(f"rec FP32 after equalization: CER {rw['cer']:.2f} % (deltas below are against the original)")
    print(f"rec FP32: CER {fp32['cer']:.2f} %, line accuracy {fp32['line_acc']:.1f} % "
          f"on {args.lines} lines ({n_chars} characters)", flush=True)
    skip = tuple(args.skip) + stem_nodes(path, args.float_stem)
    label0 = f" float stem ({args.float_stem} convs)" * bool(args.float_stem) + " skip" * bool(args.skip)
    variants = [(label0, SkipSpec(names=skip))]
    if args.float_logits:
        variants.append((" +float logits", SkipSpec(names=skip + logit_nodes(preprocess(load_model(path))))))
    rows = []
    for algo in args.algos:
        for label, skip in variants:
            t = time.perf_counter()
            res = quantize_rec(path, ev, algo, args.calib_lines, skip, args.target, args.bias_correction)
            secs = time.perf_counter() - t
            m = evaluate(Predictor(res.model, threads=args.threads, backend=args.backend).run, ev)
            delta, share = m["cer"] - fp32["cer"], res.report.int8_mac_share
            ok = delta <= MAX_CER_DELTA and share >= MIN_MAC_SHARE
            rows.append({"algo": algo + label, "cer": m["cer"], "line_acc": m["line_acc"], "delta": delta,
                         "share": share, "ok": ok, "fp32": fp32["cer"], "model": res.model})
            print(f"rec {algo + label:24s} CER {m['cer']:6.2f} %  (delta {delta:+.2f} pt)  line acc "
                  f"{m['line_acc']:5.1f} %  int8 MACs {share * 100:5.1f} %  {'PASS' if ok else 'fail'}  "
                  f"({secs:.0f} s)", flush=True)
    return rows


def latency(fp32: str, int8: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int = 20) -> tuple[float, float]:
    """Median ms at 1 thread, batch 1, FP32 and INT8 runs interleaved."""
    (x,) = feeds.values()
    return time_side_by_side(Path(fp32), int8, x, runs, warmup=3)


def run_det(args: argparse.Namespace) -> None:
    path = str(rapidocr_model_path("det"))
    ev = DetEvaluator(path, n_pages=args.det_pages, seed=0)
    ref_out = collect_outputs(Predictor(path, threads=args.threads).run, ev)
    ref = ev.score(ref_out)
    print(f"det FP32: F1 {ref['f1']:.1f} % (P {ref['precision']:.1f}, R {ref['recall']:.1f}) "
          f"on {args.det_pages} pages", flush=True)
    calib = ev.calibration_batches(8 + 2, 1)
    for algo in args.det_algos:
        t = time.perf_counter()
        res = quantize_static(path, calib, StaticConfig(algo=algo, max_samples=8, holdout=2, show_progress=False,
                                                        target=args.target))
        out = collect_outputs(Predictor(res.model, threads=args.threads, backend=args.backend).run, ev)
        m = ev.score(out)
        print(f"det {algo:8s} F1 {m['f1']:.1f} % (P {m['precision']:.1f}, R {m['recall']:.1f}), prob-map IoU vs FP32 "
              f"{mean_prob_map_iou(ref_out, out):.3f}, int8 MACs {res.report.int8_mac_share * 100:.1f} % "
              f"({time.perf_counter() - t:.0f} s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algos", nargs="*", default=list(ALGOS), help="rec algorithms (none: skip rec)")
    ap.add_argument("--lines", type=int, default=400, help="evaluation lines (>= 200)")
    ap.add_argument("--calib-lines", type=int, default=64)
    ap.add_argument("--float-logits", action="store_true")
    ap.add_argument("--cle", action="store_true", help="cross-layer equalization of rec's Conv pairs first (prototype)")
    ap.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                    help="turn off slimq's bias correction (StaticConfig.bias_correction)")
    ap.add_argument("--skip", nargs="+", default=[], help="node names to leave in float")
    ap.add_argument("--float-stem", type=int, default=0, help="leave every node before the N-th Conv in float")
    ap.add_argument("--det", action="store_true")
    ap.add_argument("--det-algos", nargs="+", default=["hist", "mse"])
    ap.add_argument("--det-pages", type=int, default=8)
    ap.add_argument("--latency", action="store_true", help="1-thread latency of rec FP32 vs the best INT8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", default="x86", help="slimq target (x86, openvino, ...)")
    ap.add_argument("--backend", default="ort", help="runtime for the INT8 evaluation (ort, openvino)")
    ap.add_argument("--with-proposed", action="store_true", help="also run the proposed KL fix (KL_fixed)")
    args = ap.parse_args()
    if args.with_proposed:
        from proposed_observers import register

        args.algos.append(register())
    print(f"load average {os.getloadavg()}")
    rows = run_rec(args) if args.algos else []
    if rows:
        print("\n| rec algorithm | CER % | delta (pt) | line acc % | int8 MACs | pass |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['algo']} | {r['cer']:.2f} | {r['delta']:+.2f} | {r['line_acc']:.1f} | "
                  f"{r['share'] * 100:.1f} % | {'yes' if r['ok'] else 'no'} |")
        print(f"(FP32 CER {rows[0]['fp32']:.2f} %)")
    if rows and args.latency:
        best = min(rows, key=lambda r: r["delta"])
        ev = RecEvaluator(n_lines=1, seed=5)
        fp, q = latency(str(rapidocr_model_path("rec")), best["model"], next(ev.inputs()))
        print(f"rec latency, 1 thread, batch 1 (48x320): FP32 (original) {fp:.1f} ms, INT8 ({best['algo']}) {q:.1f} ms, "
              f"speed-up {fp / q:.2f}x; load average {os.getloadavg()}")
    if args.det:
        run_det(args)
    return 0 if any(r["ok"] for r in rows) or not rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
