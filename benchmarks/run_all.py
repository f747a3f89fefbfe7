#!/usr/bin/env python
"""Run the whole benchmark suite and write docs/benchmarks.md (+ docs/profiles/*.md).

Every model is quantized by slimq (static PTQ, default settings) and by onnxruntime's
quantizer (default and best settings) on the same calibration data, then all versions
are evaluated and timed together, interleaved, in this one process on one runtime.

    .venv/bin/python benchmarks/run_all.py            # full run (~20 min on 2 cores; --backends ort: ~11 min)
    .venv/bin/python benchmarks/run_all.py --quick --only resnet50 --out /tmp/b.md

With OpenVINO installed (the `bench` extra), every model also runs on OpenVINO, interleaved
with the onnxruntime runs (``--backends ort`` for onnxruntime only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import CASES, BenchModel, build_case, default_cache  # noqa: E402
from peers import PEERS, PeerResult, quantize_peer  # noqa: E402

from slimq import __version__  # noqa: E402
from slimq.bench.profile import Profile, profile_markdown, profile_model, write_text  # noqa: E402
from slimq.bench.results import (
    BenchResult,
    TimingConfig,
    write_json,  # noqa: E402
)
from slimq.bench.runner import benchmark  # noqa: E402
from slimq.bench.tables import format_table, results_markdown  # noqa: E402
from slimq.core.config import StaticConfig  # noqa: E402
from slimq.core.errors import SlimqError  # noqa: E402
from slimq.runtime.backends import (  # noqa: E402
    BACKENDS,
    openvino_available,
    openvino_mac_count,
    parse_backends,
)
from slimq.static.method import quantize_static  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OV_MODEL = "slimq openvino-target INT8"
OV_METHOD = ["OpenVINO: every model also runs on OpenVINO's CPU plugin (the same QDQ ONNX files, read as is; "
             "INFERENCE_PRECISION_HINT=f32, PERFORMANCE_HINT=LATENCY, no core pinning), interleaved with the "
             "onnxruntime runs. Rows are labelled \"model (backend)\"; \"speed-up\" is against FP32 on "
             "onnxruntime, \"vs FP32 same backend\" against FP32 on the same runtime. The OpenVINO summary columns use "
             f"\"{OV_MODEL}\": slimq `--target openvino` (Q/DQ only on the inputs of int8 ops, elementwise ops in "
             "float, which OpenVINO fuses into its int8 convolutions).", ""]
COMMAND = ".venv/bin/python benchmarks/run_all.py"
# Measurements made by their own scripts (each document names its commands): copied into benchmarks.md
# under "Other measurements" so that every comparison row is in one place.
OWN_SCRIPT_DOCS = ("accuracy_control.md", "transformers.md", "advanced_ptq.md", "models_in.md", "qat.md")
OTHER_HEADING = "## Other measurements (own scripts)"


@dataclass
class CaseResult:
    case: BenchModel
    bench: BenchResult
    slimq_seconds: float
    slimq_report: dict
    peers: list[PeerResult]
    profiles: dict[str, Profile] = field(default_factory=dict)
    ov_int8_share: float | None = None  # int8 share of MACs in OpenVINO's graph of the slimq model


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quantize_slimq(case: BenchModel, work: Path, target: str = "x86") -> tuple[Path, float, dict]:
    out = work / f"{case.name}.slimq{'' if target == 'x86' else '.' + target}.onnx"
    t0 = time.perf_counter()
    result = quantize_static(case.fp32, case.calib, StaticConfig(show_progress=False, target=target), output=out)
    r = result.report
    summary = {"int8_mac_share": r.int8_mac_share, "warnings": r.warnings, "float_ops": len(r.float_ops),
               "agreement": r.agreement}
    return out, time.perf_counter() - t0, summary


def profile_feed(case: BenchModel) -> dict:
    first = next(iter(case.evaluator.inputs()))
    return {k: v[:1] for k, v in first.items()}


def profile_case(case: BenchModel, models: dict[str, Path], fp32_ms: float) -> dict[str, Profile]:
    runs = max(5, min(40, int(1.5 / max(fp32_ms / 1e3, 1e-4))))
    feed = profile_feed(case)
    return {label: profile_model(path, feed, threads=1, runs=runs) for label, path in models.items()}


def run_case(name: str, cache: Path, work: Path, timing: TimingConfig, quick: bool, profiles_dir: Path,
             backends: tuple[str, ...] = ("ort",)) -> CaseResult:
    say(f"{name}: preparing model and data")
    case = build_case(name, cache, quick)
    say(f"{name}: slimq static PTQ")
    slimq_path, slimq_s, report = quantize_slimq(case, work)
    peers = []
    for kind in PEERS:
        say(f"{name}: onnxruntime quantizer, {kind}")
        peers.append(quantize_peer(kind, case.fp32, work, case.calib))
        if peers[-1].error:
            say(f"  failed: {peers[-1].error}")
    paths = [case.fp32, slimq_path] + [p.path for p in peers if p.path]
    names = ["FP32", "slimq INT8"] + [f"{p.name} INT8" for p in peers if p.path]
    if "openvino" in backends:
        say(f"{name}: slimq static PTQ, openvino target")
        paths.append(quantize_slimq(case, work, "openvino")[0])
        names.append(OV_MODEL)
    say(f"{name}: evaluating and timing {len(paths)} models")
    bench = benchmark(paths, threads=(1, "all"), evaluator=case.evaluator, timing=timing, names=names,
                      progress=lambda m: say("  " + m.strip()), title=name, backends=backends)
    say(f"{name}: profiling")
    best = next((p.path for p in peers if p.name == "ort-best" and p.path), None)
    prof_models = {"FP32": case.fp32, "slimq INT8": slimq_path, **({"ort-best INT8": best} if best else {})}
    profiles = profile_case(case, prof_models, bench.speed_of("FP32", 1).p50_ms)
    write_text(profiles_dir / f"{name}.md", profile_markdown(f"{name} (1 thread, batch 1)", profiles) + "\n")
    share = openvino_mac_count(paths[-1], profile_feed(case)).int8_share if "openvino" in backends else None
    return CaseResult(case, bench, slimq_s, report, peers, profiles, share)


def _speed(b: BenchResult, model: str, threads: int, backend: str | None = None, same_backend: bool = False) -> str:
    try:
        s = b.speed_of(model, threads, backend)
    except KeyError:
        return "failed"
    return f"{s.backend_ratio if same_backend else s.ratio:.2f}x"


def _quality(b: BenchResult, model: str, backend: str | None = None) -> str:
    label = b.label(model, backend)
    if not b.accuracy or label not in b.accuracy:
        return "—"
    key = b.evaluator["primary_metric"]
    return f"{b.accuracy[label][key]:.2f}"


def _ov_cells(b: BenchResult) -> list[str]:
    """slimq's openvino-target INT8 on OpenVINO at 1 thread: vs FP32 on OpenVINO, vs FP32 on onnxruntime;
    its quality."""
    return [f'{_speed(b, OV_MODEL, 1, "openvino", same_backend=True)} / {_speed(b, OV_MODEL, 1, "openvino")}',
            _quality(b, OV_MODEL, "openvino")]


def summary_table(results: list[CaseResult]) -> str:
    rows = []
    ov = "openvino" in results[0].bench.backends
    for r in results:
        b = r.bench
        all_t = max(b.settings["threads"])
        key = b.evaluator["primary_metric"] if b.evaluator else "?"
        rows.append([r.case.name, "random" if r.case.name in ("resnet50", "mobilenetv2") else "trained",
                     f"{b.speed_of('FP32', 1).p50_ms:.2f}", _speed(b, "slimq INT8", 1), _speed(b, "slimq INT8", all_t),
                     _speed(b, "ort-default INT8", 1), _speed(b, "ort-best INT8", 1),
                     *(_ov_cells(b) if ov else []), r.case.target or "—",
                     f"{key}: {_quality(b, 'FP32')} → {_quality(b, 'slimq INT8')} (ORT best "
                     f"{_quality(b, 'ort-best INT8')})"])
    all_t = max(results[0].bench.settings["threads"])
    ov_headers = ["slimq --target openvino on OpenVINO 1 thr: vs FP32 on OpenVINO / on ORT",
                  "slimq --target openvino on OpenVINO quality"]
    headers = ["model", "weights", "FP32 p50 ms (1 thr)", "slimq 1 thr", f"slimq {all_t} thr", "ORT default 1 thr",
               "ORT best 1 thr", *(ov_headers if ov else []), "target (1 thr)", "quality: FP32 → slimq INT8"]
    return format_table(headers, rows)


def machine_lines(bench: BenchResult, meta: dict) -> list[str]:
    cpu = bench.machine["cpu"]
    flags = ", ".join(f"{k} {'yes' if cpu[k] else 'no'}" for k in ("avx2", "avx512", "vnni", "amx", "arm_dot"))
    la = lambda v: " / ".join(f"{x:.2f}" for x in v)  # noqa: E731
    ov = f", openvino {bench.machine['openvino']}" if bench.machine.get("openvino") else ""
    return [f"- CPU: {cpu['model']}, {cpu['cores']} cores; int8 flags (slimq.runtime.session.cpu_info): {flags}",
            f"- onnxruntime {bench.machine['onnxruntime']}{ov}, slimq {__version__}, Python {sys.version.split()[0]}",
            f"- Date: {bench.machine['date']}; the run took {meta['seconds'] / 60:.1f} min"
            + (" (--quick: small data, short timing)" if meta["quick"] else ""),
            f"- Load average (1/5/15 min) at start {la(meta['load_start'])}, at end {la(meta['load_end'])} "
            f"on {cpu['cores']} cores (1.0 per core = busy; higher values mean other processes shared the CPU)"]


def case_section(r: CaseResult, profiles_dir: Path, out: Path) -> list[str]:
    lines = [f"## {r.case.name}", "", *[f"- {n}" for n in r.case.notes],
             f"- slimq static PTQ (hist, x86 u8s8 per-channel): {r.slimq_seconds:.1f} s; int8 share of MACs in "
             f"onnxruntime's graph {r.slimq_report['int8_mac_share'] * 100:.1f} %"]
    lines += [f"  - warning: {w}" for w in r.slimq_report["warnings"]]
    if r.ov_int8_share is not None:
        lines.append("- int8 share of MACs in OpenVINO's execution graph of the slimq model: "
                     f"{r.ov_int8_share * 100:.1f} %")
    for p in r.peers:
        status = f"failed: {p.error}" if p.error else f"{p.seconds:.1f} s"
        lines.append(f"- onnxruntime quantizer {p.name}: {status}" + (f" ({'; '.join(p.notes)})" if p.notes else ""))
    rel = os.path.relpath(profiles_dir / f"{r.case.name}.md", out.parent)
    lines += ["", results_markdown([r.bench]).replace("### ", "#### "), "", f"Profile (1 thread): [{rel}]({rel})", ""]
    return lines


def write_report(results: list[CaseResult], out: Path, profiles_dir: Path, meta: dict) -> Path:
    b0 = results[0].bench
    lines = ["# slimq benchmarks", "", f"Regenerate with `{COMMAND}` (add `--help` for options).", "",
             *machine_lines(b0, meta), "",
             "Method: each model is quantized by slimq (`quantize_static`, default settings) and by "
             "`onnxruntime.quantization.quantize_static` with its default settings and with its best settings for "
             "this CPU, on the same calibration data. All versions run on the same onnxruntime in one process. "
             "Speed is measured at batch 1, at 1 thread and all threads, interleaved (round-robin over "
             f"{b0.settings['rounds']} rounds of >= {b0.settings['min_time']} s per model, after "
             f"{b0.settings['warmup']} warm-up runs); speed-up = samples/s divided by FP32's at the same thread "
             "count. ResNet-50 and MobileNetV2 have random weights.", "",
             *(OV_METHOD if "openvino" in b0.backends else []),
             "## Summary (batch 1)", "", summary_table(results), ""]
    if meta["skipped"]:
        lines += [f"- Skipped {name}: {why}" for name, why in meta["skipped"].items()] + [""]
    for r in results:
        lines += case_section(r, profiles_dir, out)
    return write_text(out, "\n".join(lines + other_measurements(out.parent)))


def other_measurements(docs: Path) -> list[str]:
    """The documents of OWN_SCRIPT_DOCS that exist, headings demoted one level, under OTHER_HEADING."""
    lines = [OTHER_HEADING, "", "Not regenerated by this script: each part names the command that measured it.", ""]
    for name in OWN_SCRIPT_DOCS:
        if (docs / name).exists():
            lines += demote_headings((docs / name).read_text(encoding="utf-8").rstrip().splitlines())
            lines += ["", f"(from [{name}]({name}))", ""]
    return lines


def demote_headings(lines: list[str]) -> list[str]:
    out, fenced = [], False
    for ln in lines:
        fenced ^= ln.startswith("```")
        out.append("#" + ln if ln.startswith("#") and not fenced else ln)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=default_cache(), help="model cache (default ~/.cache/slimq/bench)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--profiles", type=Path, help="profile folder (default: profiles/ next to --out)")
    p.add_argument("--only", help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--quick", action="store_true", help="small data and short timing (smoke run)")
    p.add_argument("--other-only", action="store_true",
                   help=f"only refresh '{OTHER_HEADING}' from the documents it copies (no benchmark runs)")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per model and timing round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backends", default=",".join(BACKENDS) if openvino_available() else "ort",
                   help="comma-separated runtimes: ort, openvino (default: both when OpenVINO is installed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.other_only:
        text = args.out.read_text(encoding="utf-8")
        head = text[:text.index(OTHER_HEADING)] if OTHER_HEADING in text else text
        write_text(args.out, head.rstrip() + "\n\n" + "\n".join(other_measurements(args.out.parent)) + "\n")
        return 0
    names = [n.strip() for n in args.only.split(",")] if args.only else list(CASES)
    for n in names:
        if n not in CASES:
            raise SystemExit(f"unknown case {n}; choose from {', '.join(CASES)}")
    backends = parse_backends(args.backends)
    if backends[0] != "ort":
        raise SystemExit("--backends must start with ort (the FP32-on-onnxruntime reference)")
    profiles_dir = args.profiles or args.out.parent / "profiles"
    work = args.cache / "quantized"
    for d in (profiles_dir, work, args.out.parent):
        d.mkdir(parents=True, exist_ok=True)
    timing = (TimingConfig(warmup=2, min_iters=5, min_time=0.2, rounds=1) if args.quick
              else TimingConfig(warmup=5, min_iters=10, min_time=args.min_time, rounds=args.rounds))
    start, load_start = time.time(), os.getloadavg()
    results, skipped = [], {}
    for n in names:
        try:
            results.append(run_case(n, args.cache, work, timing, args.quick, profiles_dir, backends))
        except SlimqError as e:  # e.g. a missing model asset: report it, run the other cases
            say(f"{n}: skipped: {e}")
            skipped[n] = str(e)
    if not results:
        raise SystemExit("no case could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    write_json([r.bench for r in results], args.out.with_suffix(".json"))
    write_report(results, args.out, profiles_dir, {"seconds": time.time() - start, "load_start": load_start,
                                                   "load_end": os.getloadavg(), "quick": args.quick,
                                                   "skipped": skipped})
    say(f"wrote {args.out}, {args.out.with_suffix('.json')} and {profiles_dir}/ in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
