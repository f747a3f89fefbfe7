"""Label-free fidelity check for dynamic PTQ, kernel timing, and the layer-by-layer fallback.

The check runs FP32 and the quantized model on a handful of inputs (given, or
synthesised from the model's input spec: random token ids within the vocabulary
of the embedding table they index, attention masks of ones, standard-normal
floats) and compares every output by cosine and SQNR. When agreement collapses,
:func:`search_fallback` ranks the quantized nodes by the damage each does alone
and demotes the worst ones (dynamic -> weight-only -> float) until it recovers.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh

from slimq.core.errors import CalibrationDataError
from slimq.dynamic.graph import Choice, Decision, node_name
from slimq.io.spec import Feeds, InputSpec, index_ranges, model_inputs
from slimq.report.agreement import Reference, worst_cosine
from slimq.runtime.exposed import expose
from slimq.runtime.session import Predictor, predictor

log = logging.getLogger("slimq")


MAX_SYNTH_BYTES = 1 << 30  # all synthesised check inputs together


def _synth_shape(spec: InputSpec, dim: int) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else dim) for i, d in enumerate(spec.shape))


def _check_synth_size(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], n: int, limit: int) -> None:
    """Refuse to synthesise inputs whose declared dims would take more than `limit` bytes, naming the dim."""
    sizes = {s.name: int(np.prod(shapes[s.name], dtype=np.float64)) * np.dtype(s.dtype).itemsize for s in specs}
    total = n * sum(sizes.values())
    if total <= limit:
        return
    big = max(specs, key=lambda s: sizes[s.name])
    shape = shapes[big.name]
    axis = int(np.argmax(shape))
    raise CalibrationDataError(
        f'Input "{big.name}" declares shape {list(big.shape)} (dim {axis} = {shape[axis]}): {n} synthesised check '
        f"inputs would take {total / 2**30:.1f} GiB, too large (limit {limit / 2**30:.0f} GiB). Pass --check-data "
        "with real inputs of the sizes you run.")


def synthesize_feeds(model: onnx.ModelProto, n: int, seed: int = 0, dim: int = 64,
                     max_bytes: int = MAX_SYNTH_BYTES) -> list[Feeds]:
    """`n` check inputs from the model's input spec (dynamic batch -> 1, other dynamic dims -> `dim`)."""
    rng = np.random.default_rng(seed)
    specs = model_inputs(model)
    shapes = {s.name: _synth_shape(s, dim) for s in specs}
    _check_synth_size(specs, shapes, n, max_bytes)
    feeds = []
    for _ in range(n):
        f: Feeds = {}
        for spec in specs:
            shape = shapes[spec.name]
            if np.issubdtype(spec.dtype, np.floating):
                f[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.index_rows is not None:
                f[spec.name] = rng.integers(0, max(1, spec.index_rows), shape).astype(spec.dtype)
            else:  # attention masks and other flags: ones
                f[spec.name] = np.ones(shape, spec.dtype)
        feeds.append(f)
    return feeds


# -- kernel timing ------------------------------------------------------------------------------

def activation_rows(model: onnx.ModelProto, tensors: Sequence[str], feeds: Feeds) -> dict[str, int]:
    """Rows M (product of all but the last dim) of each activation tensor on `feeds`."""
    if not tensors:
        return {}
    outs = predictor(expose(model, list(tensors)), level="basic").run(feeds)
    return {t: int(np.prod(o.shape[:-1])) for t, o in zip(tensors, outs)}


def _matmul_model(m: int, k: int, n: int, dynamic: bool, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [m, k])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    if not dynamic:
        inits = [nh.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
        nodes = [oh.make_node("MatMul", ["x", "w"], ["y"])]
    else:
        inits = [nh.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w"),
                 nh.from_array(np.full(n, 0.01, np.float32), "s"), nh.from_array(np.zeros(n, np.int8), "z")]
        nodes = [oh.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                 oh.make_node("MatMulInteger", ["xq", "w", "xz", "z"], ["acc"]),
                 oh.make_node("Cast", ["acc"], ["accf"], to=onnx.TensorProto.FLOAT),
                 oh.make_node("Mul", ["xs", "s"], ["ss"]), oh.make_node("Mul", ["accf", "ss"], ["y"])]
    graph = oh.make_graph(nodes, "kernel", [x], [y], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


@dataclass(frozen=True)
class KernelTiming:
    """Median single-thread time of one MatMul shape, float vs dynamic int8, in microseconds."""

    m: int
    k: int
    n: int
    float_us: float
    dynamic_us: float

    @property
    def speedup(self) -> float:
        return self.float_us / max(self.dynamic_us, 1e-9)


def time_matmul(m: int, k: int, n: int, budget_s: float = 0.3) -> KernelTiming:
    """Interleaved, warmed-up timing of FP32 MatMul vs DynamicQuantizeLinear+MatMulInteger in onnxruntime."""
    runs = {d: Predictor(_matmul_model(m, k, n, d), threads=1) for d in (False, True)}
    x = {"x": np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)}
    times: dict[bool, list[float]] = {False: [], True: []}
    start = time.perf_counter()
    for i in range(400):
        for d, p in runs.items():
            t = time.perf_counter()
            p.run(x)
            times[d].append(time.perf_counter() - t)
        if i >= 10 and time.perf_counter() - start > budget_s:
            break
    med = {d: float(np.median(v[3:])) * 1e6 for d, v in times.items()}
    return KernelTiming(m, k, n, med[False], med[True])


# -- fallback search ----------------------------------------------------------------------------



@dataclass(frozen=True)
class Demotion:
    node: str
    op_type: str
    before: Choice
    after: Choice
    damage: float  # 1 - worst output cosine with only this node quantized

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "from": self.before.value, "to": self.after.value,
                "damage": round(self.damage, 6)}


Builder = Callable[[Sequence[Decision]], onnx.ModelProto]


def _demote(d: Decision, weight_only_fmt: Callable[[Decision], Decision]) -> Decision:
    if d.choice is Choice.DYNAMIC:
        return replace(weight_only_fmt(d), reason="demoted by the fidelity fallback: " + d.reason)
    return replace(d, choice=Choice.FLOAT, fmt=None, reason="demoted to float by the fidelity fallback")


def _damage(check: Reference, build: Builder, decisions: list[Decision], tolerance: float) -> list[tuple[int, float]]:
    """Damage (1 - worst cosine) of each quantized node alone, everything else float; most damaging first.

    Group testing: a set of nodes is quantized together; a set that does less than `tolerance` damage is
    harmless and its members share that damage; a more damaging set is halved and each half tested, down to
    single nodes. A few culprits among n nodes cost O(log n) model builds instead of n.
    """
    floats = [replace(d, choice=Choice.FLOAT) for d in decisions]

    def probe(idx: list[int]) -> float:
        ds = list(floats)
        for i in idx:
            ds[i] = decisions[i]
        return 1.0 - worst_cosine(check(build(ds)))

    out: dict[int, float] = {}
    todo = [i for i, d in enumerate(decisions) if d.choice is not Choice.FLOAT]
    stack = [(todo, probe(todo))] if todo else []
    while stack:
        idx, dmg = stack.pop()
        if len(idx) == 1 or dmg < tolerance:
            out.update({i: dmg / len(idx) for i in idx})
            continue
        half = len(idx) // 2
        stack += [(part, probe(part)) for part in (idx[:half], idx[half:])]
    return sorted(out.items(), key=lambda t: -t[1])


def search_fallback(check: Reference, rank_check: Reference, build: Builder, decisions: list[Decision],
                    min_cosine: float, weight_only_fmt: Callable[[Decision], Decision],
                    value: Callable[[onnx.ModelProto], float] | None = None, threshold: float | None = None
                    ) -> tuple[list[Decision], list[Demotion]]:
    """Demote the most damaging nodes one step (dynamic -> weight-only -> float) until cosine >= `min_cosine`.

    Each round ranks the quantized nodes by the damage each does alone (measured with `rank_check`, a few
    samples), then finds the fewest top-ranked nodes whose demotion recovers the worst output cosine (measured
    with `check`): doubling, then bisection. A round that cannot recover demotes all of them and the next
    round ranks again (at most two rounds: the ladder has two steps). Returns new decisions and the demotions.
    ``value``/``threshold``: what a candidate must reach instead (an accuracy budget: minus its deficit, >= 0);
    the ranking stays label-free (cosine damage, tolerance from `min_cosine`).
    """
    current, demoted = list(decisions), []
    tolerance = 0.1 * (1.0 - min_cosine)
    score = value if value is not None else (lambda m: worst_cosine(check(m)))
    need = min_cosine if threshold is None else threshold
    for _ in range(2):
        ranked = _damage(rank_check, build, current, tolerance)
        if not ranked:
            break

        trial = functools.partial(_trial, score, build, current, weight_only_fmt)
        k = _smallest_k(trial, ranked, need)
        chosen = ranked[:k]
        ds, cos = trial(chosen)
        if cos < need:  # one step down is not enough: move only the culprits on to the next round
            chosen = [r for r in ranked if r[1] >= tolerance] or ranked
            ds, cos = trial(chosen)
        demoted += [Demotion(current[i].node, current[i].candidate.op_type, current[i].choice, ds[i].choice, dmg)
                    for i, dmg in chosen]
        current = ds
        log.info("slimq: fallback demoted %d node(s) one step; measure now %.4f (needs %.4f)", len(chosen), cos, need)
        if cos >= need:
            break
    return current, demoted


def _trial(score: Callable[[onnx.ModelProto], float], build: Builder, current: list[Decision], weight_only_fmt,
           chosen: list[tuple[int, float]]) -> tuple[list[Decision], float]:
    """`current` with the chosen nodes demoted one step, and its score (worst output cosine by default)."""
    ds = list(current)
    for i, _ in chosen:
        ds[i] = _demote(ds[i], weight_only_fmt)
    return ds, score(build(ds))


_Trial = Callable[[list[tuple[int, float]]], tuple[list[Decision], float]]


def _smallest_k(trial: _Trial, ranked: list[tuple[int, float]], min_cosine: float) -> int:
    """Smallest k in [1, n] whose trial of ranked[:k] reaches min_cosine (n = len(ranked) if none does): doubling,
    then bisection."""
    lo, hi, n = 0, 1, len(ranked)
    while hi < n and trial(ranked[:hi])[1] < min_cosine:
        lo, hi = hi, min(n, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(ranked[:mid])[1] >= min_cosine:
            hi = mid
        else:
            lo = mid
    return hi


__all__ = ["Demotion", "KernelTiming", "activation_rows", "index_ranges", "node_name",
           "search_fallback", "synthesize_feeds", "time_matmul", "worst_cosine"]
