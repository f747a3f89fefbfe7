"""Dynamic PTQ of PP-OCRv4 rec: CER on rendered text lines, FP32 vs slimq vs onnxruntime.quantize_dynamic.

Rows: FP32; slimq dynamic-activation (MatMuls int8 at run time, Conv float); slimq weight-only int8 with
the default fidelity check + layer-by-layer fallback, and with ``on_collapse="warn"`` (what it would write
without the fallback); and the peer,
``onnxruntime.quantization.quantize_dynamic`` (QInt8) on the slimq-preprocessed model (on the raw model it
fails: its weights are Constant nodes). The fidelity check uses 8 rendered lines disjoint from the
evaluation lines. Speed: median of interleaved single-thread runs on one line (batch 1, 3x48x320).

    .venv/bin/python benchmarks/bench_dynamic_ppocr.py [--lines 200] [--runs 30]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from slimq.dynamic.method import DynamicConfig, quantize_dynamic
from slimq.runtime.session import Predictor
from slimq.tasks.base import evaluate
from slimq.tasks.ocr_rec import RecEvaluator, rapidocr_model_path


@dataclass
class Row:
    name: str
    model: onnx.ModelProto | str
    note: str = ""
    metrics: dict = field(default_factory=dict)
    median_ms: float = 0.0


def slimq_rows(rec: Path, check: list) -> list[Row]:
    rows = []
    for name, cfg in (("slimq dynamic-activation", DynamicConfig(mode="dynamic-activation")),
                      ("slimq weight-only int8 (fallback)", DynamicConfig()),
                      ("slimq weight-only int8, no fallback", DynamicConfig(on_collapse="warn"))):
        t = time.perf_counter()
        res = quantize_dynamic(rec, cfg, check_data=check)
        worst = min(a["cosine"] for a in res.report.agreement)
        demoted = ", ".join(f"{d.node} {d.before.value}->{d.after.value}" for d in res.demotions)
        note = (f"check cosine {worst:.4f}; {'warned' if res.report.warnings else 'no warning'}"
                f"{'; fell back: ' + demoted if demoted else ''}; {time.perf_counter() - t:.0f} s")
        rows.append(Row(name, res.model, note))
    return rows


def peer_row(rec: Path, tmp: Path) -> Row:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    from slimq.graph.passes import preprocess
    from slimq.io.model import load_model

    pre, out = tmp / "rec_pre.onnx", tmp / "rec_ort.onnx"
    onnx.save(preprocess(load_model(rec)), pre)
    logging.getLogger().setLevel(logging.ERROR)
    try:
        ort_quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)
    except Exception as e:  # the peer's failure is a result, not a crash
        return Row("onnxruntime quantize_dynamic (peer)", str(pre), f"failed: {e}")
    return Row("onnxruntime quantize_dynamic (peer)", str(out), "QInt8, defaults, on the preprocessed model")


def measure(rows: list[Row], ev: RecEvaluator, runs: int) -> None:
    preds = [Predictor(r.model if isinstance(r.model, str) else r.model, threads="all") for r in rows]
    for r, p in zip(rows, preds):
        r.metrics = evaluate(p.run, ev) if not r.note.startswith("failed") else {}
    single = [Predictor(r.model, threads=1) for r in rows]
    x = next(ev.inputs())
    one = {k: v[:1] for k, v in x.items()}
    times = [[] for _ in rows]
    for i in range(runs + 3):
        for t, p in zip(times, single):
            start = time.perf_counter()
            p.run(one)
            if i >= 3:
                t.append(time.perf_counter() - start)
    for r, t in zip(rows, times):
        r.median_ms = float(np.median(t)) * 1e3


def table(rows: list[Row], n_lines: int) -> str:
    fp32 = rows[0]
    lines = [f"PP-OCRv4 rec, {n_lines} rendered lines; speed: 1 thread, batch 1", "",
             "| model | CER % | line acc % | CER vs FP32 | median ms | speed-up |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r.metrics:
            lines.append(f"| {r.name} | - | - | - | - | - |")
            continue
        lines.append(f"| {r.name} | {r.metrics['cer']:.2f} | {r.metrics['line_acc']:.1f} | "
                     f"{r.metrics['cer'] - fp32.metrics['cer']:+.2f} pt | {r.median_ms:.1f} | "
                     f"{fp32.median_ms / r.median_ms:.2f}x |")
    return "\n".join(lines + [""] + [f"- {r.name}: {r.note}" for r in rows if r.note])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    rec = rapidocr_model_path("rec")
    ev = RecEvaluator(rec, n_lines=args.lines)
    check = ev.calibration_batches(1, 8)
    rows = [Row("FP32", str(rec)), *slimq_rows(rec, check)]
    with tempfile.TemporaryDirectory(prefix="slimq-ppocr-") as tmp:
        if not args.no_peer:
            rows.append(peer_row(rec, Path(tmp)))
        measure(rows, ev, args.runs)
    print(table(rows, args.lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
