"""The speed steps of static PTQ, around the algorithm in :mod:`slimq.runtime.speed`: rebuild a candidate
with more layers float, run the guard on the target's runtime, time the result on every installed runtime
("runs fastest on"), and put what was measured into the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
import onnx_ir as ir

from slimq.core.config import SkipSpec, StaticConfig
from slimq.graph.passes.channels_last import depth_to_space_nhwc, nearest_repeat
from slimq.graph.passes.qdq_hardswish import int8_hardswish
from slimq.graph.passes.residual_sum import residual_sum
from slimq.graph.plan import QuantPlan
from slimq.io.spec import Feeds
from slimq.report.schema import FloatOp, Report
from slimq.runtime.backends import openvino_available
from slimq.runtime.macs import count_macs
from slimq.runtime.select import RUNTIME_NAMES, installed_backends, interleaved_ms, missing_note
from slimq.runtime.speed import (
    MIN_MACS,
    MIN_TIMED_MS,
    Fidelity,
    QDQRewrite,
    Rewrite,
    SpeedPlacement,
    Timer,
    backend_timer,
    place_for_speed,
    speed_groups,
    timing_window,
)
from slimq.static.calibrate import Calibration
from slimq.static.steps import apply_plan, plan_static

TARGET_RUNTIME = {"x86": "ort", "openvino": "openvino"}  # the runtime each target is deployed with


def _proto_rewrite(rewrite: Callable[[ir.Model], int]) -> Rewrite:
    def apply(model: onnx.ModelProto) -> onnx.ModelProto | None:
        irm = ir.from_proto(model)
        return ir.to_proto(irm) if rewrite(irm) else None
    return apply


# QDQ rewrites the guard tries per runtime, each kept only where the whole model measures faster (OpenVINO
# fuses float HardSwish into its int8 convolutions itself; onnxruntime's fused SkipLayerNormalization can be
# slower than the Add and LayerNormalization it replaces, its uint8 NHWC nearest Resize and
# DepthToSpace slower than the same copies written as channels-last reshapes)
QDQ_REWRITES: dict[str, tuple[QDQRewrite, ...]] = {
    "ort": (QDQRewrite("int8 HardSwish", _proto_rewrite(int8_hardswish), exact=False),
            QDQRewrite("residual Add as Sum (no SkipLayerNormalization fusion)", _proto_rewrite(residual_sum)),
            QDQRewrite("nearest Resize as channels-last Expand", _proto_rewrite(nearest_repeat)),
            QDQRewrite("DepthToSpace as channels-last Transpose", _proto_rewrite(depth_to_space_nhwc)))}


@dataclass
class Built:
    """An INT8 model with the plan and bias-correction count that made it."""

    model: onnx.ModelProto
    plan: QuantPlan
    corrected: int


Builder = Callable[[frozenset[str]], Built]


@dataclass
class SpeedOutcome:
    built: Built
    placement: SpeedPlacement | None = None
    runtimes: dict[str, Any] = field(default_factory=dict)


def rebuild(fp32: onnx.ModelProto, full: QuantPlan, calib: Calibration, cfg: StaticConfig,
            floats: frozenset[str]) -> Built:
    """The INT8 model with `floats` (node names) also kept float, ranges from the one calibration pass."""
    skip = cfg.skip
    cfg = replace(cfg, skip=SkipSpec(skip.names + tuple(sorted(floats)), skip.op_types, skip.patterns))
    irm = ir.from_proto(fp32)
    plan = plan_static(irm.graph, cfg, allow_empty=True)
    ranges = {r: calib.ranges[r] if r in calib.ranges else calib.ranges[full.activations.get(r, r)]
              for r in plan.roots}
    plan = plan.with_ranges(ranges)
    model, corrected = apply_plan(irm, plan, calib, cfg)
    return Built(model, plan, corrected)


def _guard_skip(cfg: StaticConfig) -> str:
    runtime = TARGET_RUNTIME.get(cfg.target)
    if runtime is None:
        return f"target {cfg.target} deploys to a runtime that is not on this machine"
    if runtime == "openvino" and not openvino_available():
        return "target openvino, but OpenVINO is not installed here"
    return ""


def fidelity_on(fp32: onnx.ModelProto, feeds: Sequence[Feeds]) -> Fidelity:
    """A model's worst output SQNR (dB) against `fp32` on `feeds` (FP32 outputs computed once)."""
    from slimq.report.agreement import Reference

    reference = Reference(fp32, feeds)
    return lambda model: min(s.sqnr_db for s in reference.compare(model))


def guard_speed(fp32: onnx.ModelProto, first: Built, calib: Calibration, cfg: StaticConfig, feed: Feeds,
                timer: Timer | None = None, builder: Builder | None = None,
                checks: Sequence[Feeds] = ()) -> SpeedOutcome:
    """Run the speed guard (cfg.speed_guard) and the runtime comparison (cfg.compare_runtimes) on `first`.

    builder: how a candidate with more layers float is built (default: :func:`rebuild` from `calib`; the
    accuracy search passes its own, so the guard starts from the candidate the search chose).
    checks: held-out samples on which an inexact QDQ rewrite must keep the SQNR (default: `feed`)."""
    out = SpeedOutcome(first)
    if not (cfg.speed_guard or cfg.compare_runtimes):
        return out
    macs = count_macs(fp32, feed)
    if macs.int8_macs + macs.float_macs < MIN_MACS:
        why = f"a toy model ({macs.int8_macs + macs.float_macs:,} MACs per run < {MIN_MACS:,}): not timed"
        out.placement = SpeedPlacement(TARGET_RUNTIME.get(cfg.target, "ort"), skipped=why)
        return out
    fp32_ms = (timer or backend_timer("ort", feed, min_time=0.05, rounds=1))([fp32])[0]
    if fp32_ms < MIN_TIMED_MS:
        why = f"FP32 runs in {fp32_ms:.3f} ms, too fast to time reliably (< {MIN_TIMED_MS} ms)"
        out.placement = SpeedPlacement(TARGET_RUNTIME.get(cfg.target, "ort"), fp32_ms, skipped=why)
        return out
    if cfg.speed_guard:
        build = builder or (lambda floats: rebuild(fp32, first.plan, calib, cfg, floats))
        timer = timer or backend_timer(TARGET_RUNTIME.get(cfg.target, "ort"), feed, min_time=timing_window(fp32_ms))
        fidelity = fidelity_on(fp32, list(checks) or [feed])
        out.built, out.placement = _place(fp32, first, build, cfg, feed, timer, fidelity)
    if cfg.compare_runtimes:
        out.runtimes = compare_runtimes(fp32, out.built.model, feed)
    return out


def _place(fp32: onnx.ModelProto, first: Built, builder: Builder, cfg: StaticConfig, feed: Feeds,
           timer: Timer | None, fidelity: Fidelity) -> tuple[Built, SpeedPlacement]:
    skipped = _guard_skip(cfg)
    runtime = TARGET_RUNTIME.get(cfg.target, "ort")
    if skipped:
        return first, SpeedPlacement(runtime, skipped=skipped)
    cache: dict[frozenset[str], Built] = {}

    def build(floats: frozenset[str]) -> onnx.ModelProto:
        cache[floats] = cache.get(floats) or builder(floats)
        return cache[floats].model

    groups = speed_groups(first.plan, ir.from_proto(fp32).graph)
    rewrites = QDQ_REWRITES.get(runtime, ())
    model, rec = place_for_speed(fp32, first.model, groups, build, timer or backend_timer(runtime, feed), runtime,
                                 rewrites, fidelity=fidelity)
    if model is None:  # nothing int8 beat FP32: every compute layer float
        everything = frozenset().union(*(nodes for _, nodes in groups))
        build(everything)
        rec.floats = {n: g for g, nodes in groups for n in nodes}
        return cache[everything], rec
    base = cache[frozenset(rec.floats)] if rec.floats else first
    return Built(model, base.plan, base.corrected), rec


def compare_runtimes(fp32: onnx.ModelProto, int8: onnx.ModelProto, feed: Feeds, threads: int = 1) -> dict[str, Any]:
    """FP32 and INT8 milliseconds on every installed runtime, timed side by side, and the fastest for INT8."""
    from slimq.runtime.backends import BackendError
    from slimq.runtime.session import Predictor

    if len(installed_backends()) < 2:
        return {"skipped": missing_note()}
    runs, keys = [], []
    for backend in installed_backends():
        for label, model in (("fp32", fp32), ("int8", int8)):
            try:
                runs.append(Predictor(model, threads=threads, backend=backend).run)
                keys.append((backend, label))
            except BackendError as e:
                return {"skipped": f"{RUNTIME_NAMES[backend]} cannot load the {label} model: {e}"}
    ms: dict[str, dict[str, float]] = {}
    for (backend, label), t in zip(keys, interleaved_ms(runs, feed, rounds=2, min_time=0.2, clock="cpu" if threads == 1 else "wall")):
        ms.setdefault(backend, {})[label] = t
    fastest = min(ms, key=lambda b: ms[b]["int8"])
    return {"threads": threads, "ms": ms, "fastest": fastest}


def runtime_line(d: dict[str, Any]) -> str:
    """"runs fastest on X: INT8 a ms, b x its FP32; Y: ...", or why it was not measured."""
    if not d:
        return ""
    if "skipped" in d:
        return f"runtimes: not compared ({d['skipped']})"
    ms, best = d["ms"], d["fastest"]
    parts = [f"{RUNTIME_NAMES[b]}: INT8 {v['int8']:.3f} ms, {v['fp32'] / v['int8']:.2f}x its FP32"
             for b, v in sorted(ms.items(), key=lambda kv: kv[0] != best)]
    rest = [b for b in ms if b != best]
    lead = "".join(f", {ms[b]['int8'] / ms[best]['int8']:.2f}x faster than {RUNTIME_NAMES[b]} INT8" for b in rest)
    return f"runs fastest on {RUNTIME_NAMES[best]}{lead} ({'; '.join(parts)}; {d['threads']} thread, batch 1)"


def with_speed(report: Report, outcome: SpeedOutcome) -> Report:
    """The report with the speed guard's note, the runtime line, and speed reasons on the layers it floated."""
    rec, notes, details = outcome.placement, list(report.notes), dict(report.details)
    if rec is not None:
        notes.append(rec.note())
        details["speed"] = rec.to_dict()
    line = runtime_line(outcome.runtimes)
    if line:
        notes.append(line)
        details["runtimes"] = outcome.runtimes
    ops = _still_there(report.float_ops, outcome.built.model)
    return replace(report, notes=tuple(notes), details=details,
                   float_ops=_speed_reasons(ops, rec) if rec is not None else ops)


def _still_there(ops: Sequence[FloatOp], model: onnx.ModelProto) -> tuple[FloatOp, ...]:
    """The float ops a QDQ rewrite did not turn into int8 ones (a rewritten node changed its op type)."""
    kinds = {n.name: n.op_type for n in model.graph.node}
    return tuple(f for f in ops if kinds.get(f.node, f.op_type) == f.op_type)


def _speed_reasons(ops: Sequence[FloatOp], rec: SpeedPlacement) -> tuple[FloatOp, ...]:
    where = RUNTIME_NAMES.get(rec.runtime, rec.runtime)
    return tuple(replace(f, reason=f"kept float for speed: int8 {rec.floats[f.node]} measured slower on {where}")
                 if f.node in rec.floats else f for f in ops)
