#!/usr/bin/env python
"""FP32 vs slimq INT8 on onnxruntime and on OpenVINO, interleaved in one process.

For each case (models.py), the FP32 model and slimq's static-PTQ INT8 model run on both
backends, interleaved, at each thread count; the task metric is computed on both backends.
Also reported: the int8 share of MACs in OpenVINO's execution graph (which convolutions and
matmuls OpenVINO really runs in u8/i8).

    .venv/bin/python benchmarks/bench_openvino.py --only resnet50,mobilenetv2 --threads 1,2
    .venv/bin/python benchmarks/bench_openvino.py --quick --only mobilenetv2   # smoke run

The slimq INT8 model is taken from the cache (``<cache>/quantized/<case>.slimq.onnx``, as
written by run_all.py) when present; ``--requantize`` quantizes it again. Markdown goes to
stdout, or to --out (with a .json next to it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import CASES, BenchModel, build_case, default_cache  # noqa: E402

from slimq.bench.profile import write_text  # noqa: E402
from slimq.bench.results import (
    BenchResult,
    TimingConfig,
    write_json,  # noqa: E402
)
from slimq.bench.runner import benchmark  # noqa: E402
from slimq.bench.tables import format_table, results_markdown  # noqa: E402
from slimq.runtime.backends import check_backend, openvino_mac_count  # noqa: E402

BACKENDS = ("ort", "openvino")
DEFAULT_CASES = ("resnet50", "mobilenetv2", "ppocrv4_rec", "ppocrv4_det")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slimq_model(case: BenchModel, work: Path, requantize: bool, target: str = "x86") -> Path:
    """The cached slimq INT8 model of a case for `target`, quantized (static PTQ) when missing or asked."""
    path = work / f"{case.name}.slimq{'' if target == 'x86' else '.' + target}.onnx"
    if requantize or not path.is_file():
        from run_all import quantize_slimq

        say(f"{case.name}: slimq static PTQ (--target {target})")
        path, seconds, _ = quantize_slimq(case, work, target)
        say(f"  {seconds:.1f} s")
    return path


def _ratio(b: BenchResult, model: str, backend: str, t: int, ref: tuple[str, str]) -> str:
    """Throughput ratio, and in brackets the ratio of median latencies (less sensitive to other load)."""
    q, r = b.speed_of(model, t, backend), b.speed_of(ref[0], t, ref[1])
    return f"{q.samples_per_s / r.samples_per_s:.2f}x ({r.p50_ms / q.p50_ms:.2f}x)"


def summary_rows(b: BenchResult, name: str, ov_shares: dict[str, float]) -> list[list[str]]:
    """Per thread count and INT8 variant: the three ratios the comparison is about, FP32 latencies, quality."""
    rows = []
    key = b.evaluator["primary_metric"] if b.evaluator else None
    acc = (lambda m, be: f"{b.accuracy[b.label(m, be)][key]:.2f}") if key else (lambda m, be: "—")  # noqa: E731
    for t in b.settings["threads"]:
        for q in ov_shares:
            rows.append([name, str(t), q, f"{b.speed_of('FP32', t, 'ort').p50_ms:.2f}",
                         f"{b.speed_of('FP32', t, 'openvino').p50_ms:.2f}",
                         _ratio(b, q, "ort", t, ("FP32", "ort")), _ratio(b, q, "openvino", t, ("FP32", "openvino")),
                         _ratio(b, q, "openvino", t, ("FP32", "ort")), f"{ov_shares[q] * 100:.1f} %",
                         f"{key}: {acc('FP32', 'ort')} / {acc(q, 'ort')} / {acc(q, 'openvino')}" if key else "—"])
    return rows


SUMMARY_HEADERS = ["model", "threads", "INT8 model", "FP32 ORT p50 ms", "FP32 OV p50 ms", "INT8-ORT / FP32-ORT",
                   "INT8-OV / FP32-OV", "INT8-OV / FP32-ORT", "int8 MACs in OV",
                   "quality FP32-ORT / INT8-ORT / INT8-OV"]
PLACED = "slimq INT8, --target openvino"


def run_case(name: str, args: argparse.Namespace, timing: TimingConfig) -> tuple[BenchResult, dict[str, float]]:
    say(f"{name}: preparing model and data")
    case = build_case(name, args.cache, args.quick)
    int8 = {"slimq INT8": slimq_model(case, args.cache / "quantized", args.requantize)}
    if args.ov_target:
        int8[PLACED] = slimq_model(case, args.cache / "quantized", args.requantize, "openvino")
    feed = {k: v[:1] for k, v in next(iter(case.evaluator.inputs())).items()}
    shares = {q: openvino_mac_count(path, feed).int8_share for q, path in int8.items()}
    say(f"{name}: int8 share of MACs in OpenVINO's graph {shares}; evaluating and timing")
    bench = benchmark([case.fp32, *int8.values()], threads=args.threads, evaluator=case.evaluator, timing=timing,
                      names=["FP32", *int8], backends=BACKENDS, title=name, progress=lambda m: say("  " + m.strip()))
    return bench, shares


def report(results: list[tuple[str, BenchResult, float]], meta: dict) -> str:
    la = lambda v: " / ".join(f"{x:.2f}" for x in v)  # noqa: E731
    rows = [row for name, b, share in results for row in summary_rows(b, name, share)]
    lines = ["# FP32 vs slimq INT8 on onnxruntime and OpenVINO", "",
             f"Command: `.venv/bin/python benchmarks/bench_openvino.py {' '.join(meta['argv'])}`", "",
             f"- Load average (1/5/15 min) at start {la(meta['load_start'])}, at end {la(meta['load_end'])} "
             f"on {os.cpu_count()} cores; the run took {meta['seconds'] / 60:.1f} min",
             "- OpenVINO: CPU plugin, INFERENCE_PRECISION_HINT=f32, PERFORMANCE_HINT=LATENCY, no core pinning; "
             "the QDQ ONNX file is read as is. Batch 1; all four versions interleaved in one process.",
             "- Ratios: samples/s ratio (mean over all timed runs), and in brackets the ratio of median "
             "latencies, which other processes on the machine disturb less.",
             "- int8 MACs in OV: share of convolution/matmul MACs that OpenVINO's execution graph runs in u8/i8.",
             f"- {PLACED}: Q/DQ only on the inputs of int8 ops, elementwise ops in float (OpenVINO fuses "
             "them into its int8 convolutions; it replaced the benchmarks/ov_placement.py prototype).", "",
             format_table(SUMMARY_HEADERS, rows), ""]
    for name, b, _ in results:
        lines += [f"## {name}", "", results_markdown([b]).replace("### ", "#### "), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=default_cache(), help="model cache (default ~/.cache/slimq/bench)")
    p.add_argument("--only", default=",".join(DEFAULT_CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--threads", default="1,all", help="comma-separated thread counts (default 1,all)")
    p.add_argument("--quick", action="store_true", help="small data and short timing (smoke run)")
    p.add_argument("--requantize", action="store_true", help="quantize the INT8 models again")
    p.add_argument("--no-openvino-target", "--no-ov-placement", dest="ov_target", action="store_false",
                   help="skip the slimq model quantized with --target openvino (Q/DQ on int8-op inputs only)")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per model and timing round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write the markdown here (and JSON next to it)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_backend("openvino")
    args.threads = [t.strip() for t in args.threads.split(",") if t.strip()]
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    bad = [n for n in names if n not in CASES]
    if bad:
        raise SystemExit(f"unknown case {bad[0]}; choose from {', '.join(CASES)}")
    (args.cache / "quantized").mkdir(parents=True, exist_ok=True)
    timing = (TimingConfig(warmup=2, min_iters=5, min_time=0.2, rounds=1) if args.quick
              else TimingConfig(warmup=5, min_iters=10, min_time=args.min_time, rounds=args.rounds))
    start, load_start = time.time(), os.getloadavg()
    results = []
    for n in names:
        bench, share = run_case(n, args, timing)
        results.append((n, bench, share))
    md = report(results, {"argv": sys.argv[1:] if argv is None else argv, "load_start": load_start,
                          "load_end": os.getloadavg(), "seconds": time.time() - start})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, md + "\n")
        write_json([b for _, b, _ in results], args.out.with_suffix(".json"))
        say(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
