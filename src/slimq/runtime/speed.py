"""Never slower than FP32: a speed-aware placement step, measured on the runtime the target deploys to.

INT8 is not always faster. On small or depthwise-heavy models at batch 1, onnxruntime's int8 depthwise
kernels, the Q/DQ pairs around float islands (HardSwish, HardSigmoid) and the NHWC layout changes that
its QLinear kernels bring cost more than the int8 MACs save: the PP-OCR mobile v2 direction classifier runs
at 0.43-0.65x of FP32 after plain static PTQ (see benchmarks/speed_guard.py).

The step times the FP32 and the INT8 model side by side (interleaved rounds, 1 thread, batch 1, on a held-
back sample, in process CPU time so other jobs on the machine do not decide). It then tries keeping each op
class float in turn (data movement such as Resize first, then elementwise int8 ops, then depthwise, 1x1 and
spatial convolutions and matmuls: the groups whose kernels differ), and keeps a change only when the whole
model measures at least 3 % faster. Before that it tries QDQ rewrites that give the runtime more int8
kernels (int8 HardSwish as QLinearAdd + QLinearMul, :mod:`slimq.graph.passes.qdq_hardswish`), kept on the
same condition. If no INT8 model it built beats FP32, every layer stays float and the
report says so. What was kept float for speed, and the timings that decided it, go into
the report (``details["speed"]`` and one note line).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import onnx
import onnx_ir as ir

from slimq.core.ops import Role, op_info
from slimq.graph.names import node_name
from slimq.graph.plan import QuantPlan
from slimq.io.spec import Feeds
from slimq.runtime.select import RUNTIME_NAMES, interleaved_ms

log = logging.getLogger("slimq")

MIN_TIMED_MS = 0.02  # FP32 runs faster than this: not timed at all
MIN_MACS = 1_000_000  # toy models (under a million multiply-accumulates per sample): not timed at all
KEEP_GAIN = 0.97  # a change is kept when the model runs in <= 97 % of the time it took before
TIME_BUDGET_S = 120.0  # op classes not tried by then stay int8 (and are listed as not tried)

Timer = Callable[[Sequence[onnx.ModelProto]], list[float]]  # models -> median ms each, timed side by side
Build = Callable[[frozenset[str]], onnx.ModelProto]  # compute nodes kept float -> the INT8 model
Rewrite = Callable[[onnx.ModelProto], "onnx.ModelProto | None"]  # a QDQ model -> a faster candidate (None: no site)
Fidelity = Callable[[onnx.ModelProto], float]  # a model -> its worst output SQNR (dB) against FP32 on held-out data
MAX_REWRITE_LOSS_DB = 0.5  # an inexact rewrite is kept only if it costs at most this much SQNR


@dataclass(frozen=True)
class QDQRewrite:
    """A QDQ-level rewrite the guard may try. ``exact``: the same values; an inexact one (int8 HardSwish's
    gate on a 1/255 grid) must also keep the SQNR against FP32 within MAX_REWRITE_LOSS_DB."""

    name: str
    apply: Rewrite
    exact: bool = True


@dataclass(frozen=True)
class SpeedTrial:
    """One measured change: the op class kept float, and the time before and with it."""

    group: str
    nodes: int
    ms_before: float
    ms_after: float
    kept: bool
    note: str = ""


@dataclass
class SpeedPlacement:
    """What the step measured and decided."""

    runtime: str
    fp32_ms: float | None = None
    int8_ms: float | None = None  # the first INT8 model, before any change
    final_ms: float | None = None
    floats: dict[str, str] = field(default_factory=dict)  # node kept float for speed -> its op class
    trials: list[SpeedTrial] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)  # QDQ rewrites kept because they measured faster
    all_float: bool = False
    skipped: str = ""  # why nothing was measured

    def note(self, what: str = "speed guard") -> str:
        """One line for the report; ``what`` names the step (QAT: "QAT speed plan")."""
        where = RUNTIME_NAMES.get(self.runtime, self.runtime)
        if self.skipped:
            return f"{what}: not run ({self.skipped})"
        first = self.fp32_ms / self.int8_ms if self.fp32_ms and self.int8_ms else 0.0
        final = self.fp32_ms / self.final_ms if self.fp32_ms and self.final_ms else 0.0
        if self.all_float:
            return (f"{what}: no INT8 model tried ran faster than FP32 on {where} (first INT8 {first:.2f}x of "
                    "FP32 at 1 thread): every layer was kept float, so the output computes like the FP32 model")
        extra = f"; kept {', '.join(self.rewrites)} ({first:.2f}x -> {final:.2f}x)" if self.rewrites else ""
        if not self.floats:
            return f"{what}: INT8 runs {final:.2f}x as fast as FP32 on {where} (1 thread, batch 1){extra}"
        groups = sorted({t.group for t in self.trials if t.kept and t.nodes})
        rewrites = f"; kept {', '.join(self.rewrites)}" if self.rewrites else ""
        return (f"{what}: kept {len(self.floats)} layer(s) float for speed ({', '.join(groups)}: int8 was "
                f"slower on {where}){rewrites}; INT8 {first:.2f}x -> {final:.2f}x of FP32 at 1 thread")

    def to_dict(self) -> dict:
        return asdict(self)


def op_class(node: ir.Node) -> str:
    """The kernel family a compute node runs in: convolutions split into depthwise (by kernel size), 1x1 and
    spatial."""
    if node.op_type not in ("Conv", "ConvTranspose") or len(node.inputs) < 2 or node.inputs[1] is None:
        return node.op_type
    shape = node.inputs[1].shape
    group = node.attributes["group"].as_int() if "group" in node.attributes else 1
    dims = [d for d in shape or () if isinstance(d, int)]
    if shape is None or len(dims) != len(shape):
        return node.op_type
    return conv_class(node.op_type, tuple(dims[2:]), group, depthwise=group > 1 and dims[1] == 1)


def conv_class(op_type: str, kernel: tuple[int, ...], group: int, depthwise: bool) -> str:
    """A convolution's op class: depthwise by kernel size, else 1x1 or spatial (kxk), grouped or not."""
    if depthwise:  # by kernel size: runtimes often have a fast 3x3 kernel and a slow generic one
        return f"{op_type} depthwise {'x'.join(map(str, kernel))}"
    return f"{op_type} {'1x1' if all(k == 1 for k in kernel) else 'kxk'}" + (" grouped" if group > 1 else "")


def _rank(role: Role, op: str) -> int:
    """Try data movement first, then elementwise int8 ops, then the MAC kernels (the usual winners)."""
    if role is Role.PASSTHROUGH:
        return 0
    return 2 if op_info(op).mac is not None else 1


def speed_groups(plan: QuantPlan, graph: ir.Graph) -> list[tuple[str, frozenset[str]]]:
    """The op classes of the plan's int8 nodes (compute, and data movement that runs on int8 data but does
    not just relabel it), in the order the step tries them: the units it may keep float."""
    groups: dict[str, set[str]] = {}
    rank: dict[str, int] = {}
    for node in graph:
        name = node_name(node)
        op = plan.quantized_nodes.get(name)
        info = op_info(op, node.domain) if op is not None else None
        if info is None or info.role not in (Role.COMPUTE, Role.PASSTHROUGH) or info.keeps_values:
            continue
        key = op_class(node)
        groups.setdefault(key, set()).add(name)
        rank[key] = _rank(info.role, node.op_type)
    return sorted(((k, frozenset(v)) for k, v in groups.items()), key=lambda kv: (rank[kv[0]], -len(kv[1]), kv[0]))


def _rewritten(model: onnx.ModelProto, rewrites: Sequence[Rewrite]) -> onnx.ModelProto:
    for rewrite in rewrites:
        model = rewrite(model) or model
    return model


def _accuracy_cost(rewrite: QDQRewrite, best: onnx.ModelProto, candidate: onnx.ModelProto,
                   fidelity: Fidelity | None) -> str:
    """Why an inexact rewrite costs too much accuracy ("" when it does not, or is exact)."""
    if rewrite.exact:
        return ""
    if fidelity is None:
        return "not exact, and no held-out samples to check it on"
    before, after = fidelity(best), fidelity(candidate)
    if after < before - MAX_REWRITE_LOSS_DB:
        return f"costs accuracy: SQNR against FP32 {before:.2f} -> {after:.2f} dB"
    return ""


def _try_rewrites(int8: onnx.ModelProto, int8_ms: float, rec: SpeedPlacement, timer: Timer,
                  rewrites: Sequence[QDQRewrite], fidelity: Fidelity | None
                  ) -> tuple[onnx.ModelProto, float, list[Rewrite]]:
    """Apply each rewrite that measures faster (and, if inexact, keeps the SQNR), in order; the model, its
    time and the rewrites kept."""
    best, best_ms = int8, int8_ms
    kept_rewrites: list[Rewrite] = []
    for rewrite in rewrites:
        candidate = rewrite.apply(best)
        if candidate is None:
            continue
        cost = _accuracy_cost(rewrite, best, candidate, fidelity)
        if cost:
            rec.trials.append(SpeedTrial(rewrite.name, 0, best_ms, best_ms, False, f"rewrite not tried: {cost}"))
            log.info("slimq: speed guard: %s not kept: %s", rewrite.name, cost)
            continue
        before, after = timer([best, candidate])
        kept = after <= KEEP_GAIN * before
        rec.trials.append(SpeedTrial(rewrite.name, 0, before, after, kept, "rewrite"))
        if kept:
            best, best_ms = candidate, after
            kept_rewrites.append(rewrite.apply)
            rec.rewrites.append(rewrite.name)
    return best, best_ms, kept_rewrites


def place_for_speed(fp32: onnx.ModelProto, int8: onnx.ModelProto, groups: Sequence[tuple[str, frozenset[str]]],
                    build: Build, timer: Timer, runtime: str, rewrites: Sequence[QDQRewrite] = (),
                    budget_s: float = TIME_BUDGET_S, fidelity: Fidelity | None = None
                    ) -> tuple[onnx.ModelProto | None, SpeedPlacement]:
    """Try the QDQ `rewrites` (more int8), then keep float the op classes that make the model slower; each
    change is kept only when the whole model measures faster. None as the model means "keep FP32".

    Returns the INT8 model to write (the input one when nothing changed) and the record of the step.
    """
    rec = SpeedPlacement(runtime)
    rec.fp32_ms, int8_ms = timer([fp32, int8])
    rec.int8_ms = rec.final_ms = int8_ms
    best, best_ms, kept_rewrites = _try_rewrites(int8, int8_ms, rec, timer, rewrites, fidelity)
    floats = frozenset[str]()
    start = time.perf_counter()
    for name, nodes in groups:
        if time.perf_counter() - start > budget_s:
            rec.trials.append(SpeedTrial(name, len(nodes), best_ms, best_ms, False, "not tried: time budget spent"))
            continue
        candidate = _rewritten(build(floats | nodes), kept_rewrites)
        before, after = timer([best, candidate])
        kept = after <= KEEP_GAIN * before
        rec.trials.append(SpeedTrial(name, len(nodes), before, after, kept))
        log.info("slimq: speed guard: %s float: %.3f -> %.3f ms%s", name, before, after, " (kept)" if kept else "")
        if kept:
            best, best_ms, floats = candidate, after, floats | nodes
            rec.floats.update({n: name for n in nodes})
    fp32_ms, best_ms = timer([fp32, best])
    rec.fp32_ms, rec.final_ms = fp32_ms, best_ms
    if best_ms > fp32_ms:
        rec.all_float, rec.final_ms = True, fp32_ms
        return None, rec
    return best, rec


def timing_window(fp32_ms: float) -> float:
    """Seconds per model and round: about 200 runs of the model, between 0.05 and 0.3 s."""
    return min(0.3, max(0.05, 0.2 * fp32_ms))


def backend_timer(backend: str, feeds: Feeds, threads: int = 1, min_time: float = 0.3, rounds: int = 4) -> Timer:
    """Side-by-side timing of in-memory models on `backend` at `threads`, on `feeds` (CPU time at 1 thread)."""
    from slimq.runtime.session import Predictor

    def timer(models: Sequence[onnx.ModelProto]) -> list[float]:
        runs = [Predictor(m, threads=threads, backend=backend).run for m in models]
        return interleaved_ms(runs, feeds, rounds=rounds, min_time=min_time, warmup=2, min_runs=3,
                              clock="cpu" if threads == 1 else "wall")
    return timer
