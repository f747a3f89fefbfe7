"""GPTQ (Frantar et al. 2023) for weight-only MatMul/Gemm weights: int8/int4, per-channel or group-wise.

Round-to-nearest treats every weight alone. GPTQ quantizes a layer's weight one input column at a
time and spreads each column's rounding error over the columns not yet quantized, weighted by the
inverse Hessian ``H = X^T X`` of the layer's inputs, so that the layer output ``X W`` changes as
little as possible on the calibration data. The scales are RTN's (symmetric abs-max per output
channel, or per block of ``block`` input rows along the reduction axis): the result has exactly the
layout of :func:`slimq.dynamic.graph.quantize_blocked` / ``qmath.quantize_weight`` and drops into
the weight-only rewrite unchanged (DequantizeLinear-21 with ``block_size``); only the integers differ.

Implementation: the paper's lazy-batch Cholesky form (blocks of ``block_cols`` columns), optional
``act_order`` (columns with the largest Hessian diagonal first; with fixed scales this needs no
index map), damping ``damp * mean(diag H)``. Inputs are those of the FP32 model (every layer sees
FP32 inputs, not the already-quantized model's). numpy only; no torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from slimq.core import qmath
from slimq.core.errors import ConfigError
from slimq.core.ops import Mac, MacKind, op_info
from slimq.dynamic.graph import (
    Candidate,
    Choice,
    Decision,
    WeightCache,
    WeightFormat,
    find_candidates,
    initializer_array,
    quantize_blocked,
)
from slimq.graph.names import node_name, value_name
from slimq.io.samples import load_samples
from slimq.io.spec import model_inputs
from slimq.runtime.capture import stream_tensors


@dataclass(frozen=True)
class GPTQConfig:
    """Settings of GPTQ (defaults: the paper's)."""

    damp: float = 0.01  # added to the Hessian diagonal, relative to its mean
    block_cols: int = 128  # lazy-batch width (a speed knob: results do not depend on it)
    act_order: bool = True
    batch_size: int = 8
    max_samples: int = 128
    memory_budget_mb: int = 1024

    def __post_init__(self) -> None:
        if not 0.0 < self.damp < 1.0:
            raise ConfigError(f"GPTQConfig.damp must be in (0, 1), got {self.damp}; the usual value is 0.01.")
        for name in ("block_cols", "batch_size", "max_samples", "memory_budget_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GPTQConfig.{name} must be >= 1, got {getattr(self, name)}.")


def _rtn(w: np.ndarray, fmt: WeightFormat) -> tuple[np.ndarray, np.ndarray]:
    if fmt.block:
        return quantize_blocked(w, fmt.qtype, fmt.axis, fmt.block)
    qt = qmath.quantize_weight(w, fmt.qtype, fmt.axis)
    return qt.data, qt.scale


def _column_scales(scale: np.ndarray, fmt: WeightFormat, k: int) -> np.ndarray:
    """(N, K) scale of every weight, with rows = output channels and columns = inputs."""
    if not fmt.block:
        return np.repeat(np.asarray(scale, np.float64).reshape(-1, 1), k, axis=1)
    s = scale.T if fmt.axis == 0 else scale  # blocks run along fmt.axis: (N, K / block)
    return np.repeat(s.astype(np.float64), fmt.block, axis=1)[:, :k]


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U) after damping."""
    h = h + damp * np.mean(np.diag(h)) * np.eye(len(h))
    lower = np.linalg.cholesky(h)
    inv_l = np.linalg.solve(lower, np.eye(len(h)))
    return np.linalg.cholesky(inv_l.T @ inv_l).T


def _gptq_core(w: np.ndarray, s: np.ndarray, u: np.ndarray, qtype: qmath.QType, block_cols: int) -> np.ndarray:
    """Integers for w (N, K) with per-weight scales s (N, K), given U (upper Cholesky of H^-1)."""
    w, k = w.copy(), w.shape[1]
    q = np.zeros_like(w)
    for i1 in range(0, k, block_cols):
        i2 = min(i1 + block_cols, k)
        w1, err = w[:, i1:i2].copy(), np.zeros((w.shape[0], i2 - i1))
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            qc = np.clip(np.rint(col / s[:, i1 + i]), qtype.qmin, qtype.qmax)
            q[:, i1 + i] = qc
            e = (col - qc * s[:, i1 + i]) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return q


@dataclass(frozen=True)
class _Factor:
    """What GPTQ needs of one Hessian: its dead inputs, the column order, and U (upper Cholesky of H^-1)."""

    dead: np.ndarray
    order: np.ndarray
    u: np.ndarray


def _factor(hessian: np.ndarray, config: GPTQConfig) -> _Factor:
    h = np.asarray(hessian, np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable") if config.act_order else np.arange(len(h))
    return _Factor(dead, order, _inverse_cholesky(h[np.ix_(order, order)], config.damp))


def _quantize(w: np.ndarray, hessian: np.ndarray, fmt: WeightFormat, channel_axis: int, config: GPTQConfig,
              factor: _Factor | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(integers, scales, RTN error, GPTQ error); errors: relative output error on the inputs behind `hessian`.
    `factor`: the Hessian's factorisation, when several weights share it (Q, K and V read one tensor)."""
    if w.ndim != 2 or hessian.shape != (w.shape[1 - channel_axis],) * 2:
        raise ConfigError(f"GPTQ needs a 2-D weight and a K x K Hessian; got weight {w.shape}, Hessian "
                          f"{hessian.shape}, channel axis {channel_axis}.")
    f = factor if factor is not None else _factor(hessian, config)
    q_rtn, scale = _rtn(w, fmt)
    w0 = np.asarray(w, np.float64) if channel_axis == 0 else np.asarray(w, np.float64).T  # (N, K)
    s = _column_scales(scale, fmt, w0.shape[1])
    wt = w0.copy()
    wt[:, f.dead] = 0.0
    q = np.empty_like(wt)
    q[:, f.order] = _gptq_core(wt[:, f.order], s[:, f.order], f.u, fmt.qtype, config.block_cols)
    q_rtn_t = np.asarray(q_rtn, np.float64) if channel_axis == 0 else np.asarray(q_rtn, np.float64).T
    err_rtn, err = output_error(w0, q_rtn_t * s, hessian), output_error(w0, q * s, hessian)
    q = q if channel_axis == 0 else q.T
    return q.astype(q_rtn.dtype), scale, err_rtn, err


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """||X (W_hat - W)^T||^2 / ||X W^T||^2 for weights (N, K) and H = X^T X: the layer's relative output error."""
    d = np.asarray(w_hat, np.float64) - w
    ref = float(((w @ hessian) * w).sum())
    return float(((d @ hessian) * d).sum()) / ref if ref > 0 else 0.0


def gptq_quantize(w: np.ndarray, hessian: np.ndarray, fmt: WeightFormat, channel_axis: int,
                  config: GPTQConfig = GPTQConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(integers, scales) of a 2-D weight in the layout RTN gives for `fmt`.

    channel_axis: the output-channel axis of `w` (the other one is the reduction axis, whose
    length is the size of the K x K `hessian`).
    """
    q, scale, _, _ = _quantize(w, hessian, fmt, channel_axis, config)
    return q, scale


def _matmul_mac(op_type: str) -> Mac | None:
    """The op table's MAC facts of a matrix multiply (MatMul, Gemm); None for any other op."""
    mac = op_info(op_type).mac
    return mac if mac is not None and mac.kind is MacKind.MATMUL else None


def _targets(graph: ir.Graph, candidates: Iterable[Candidate]) -> dict[str, list[tuple[Candidate, str]]]:
    """Weight name -> (candidate, activation tensor) of every 2-D MatMul / plain Gemm reading it."""
    nodes = {node_name(n): n for n in graph}
    out: dict[str, list[tuple[Candidate, str]]] = {}
    for c in candidates:
        n, mac = nodes[c.node], _matmul_mac(c.op_type)
        x = n.inputs[0]
        if mac is None or len(c.shape) != 2 or mac.a_transposed(n) or c.input_index != 1 or x is None:
            continue
        out.setdefault(c.weight, []).append((c, value_name(x)))
    return out


def hessians(model: onnx.ModelProto, tensors: list[str], batches: Iterable[dict[str, np.ndarray]],
             budget_mb: int = 1024) -> dict[str, np.ndarray]:
    """X^T X / rows (float64) of each tensor's last axis, accumulated over all batches."""
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for _, name, value in stream_tensors(model, tensors, batches, budget_mb):
        x = value.reshape(-1, value.shape[-1]).astype(np.float64)
        if name not in sums:
            sums[name], rows[name] = np.zeros((x.shape[1], x.shape[1])), 0
        sums[name] += x.T @ x
        rows[name] += len(x)
    return {t: sums[t] / rows[t] for t in sums}


@dataclass(frozen=True)
class GPTQResult:
    """GPTQ integers and scales per weight, and what they gained on the calibration data."""

    weights: dict[str, tuple[np.ndarray, np.ndarray]]  # weight -> (integers, scales); RTN where it was not better
    errors: dict[str, tuple[float, float]]  # weight -> relative layer output error (RTN, returned)
    skipped: tuple[str, ...]  # requested weights GPTQ cannot handle (RTN): not 2-D, transA, two orientations
    samples: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The report entry: counts, time, and the layer output error against round-to-nearest."""
        rtn = [e[0] for e in self.errors.values()]
        got = [e[1] for e in self.errors.values()]
        return {"method": "gptq", "weights": len(self.weights), "kept_rtn": sum(b >= a for a, b in self.errors.values()),
                "skipped": list(self.skipped), "calibration_samples": self.samples, "seconds": round(self.seconds, 2),
                "mean_output_error_rtn": float(np.mean(rtn)) if rtn else 0.0,
                "mean_output_error": float(np.mean(got)) if got else 0.0}

    def note(self) -> str:
        d = self.summary()
        gain = 1 - d["mean_output_error"] / d["mean_output_error_rtn"] if d["mean_output_error_rtn"] else 0.0
        return (f"GPTQ rounding: {d['weights']} MatMul weights in {d['seconds']:.0f} s on {self.samples} "
                f"calibration samples; layer output error {gain * 100:.0f} % lower than round-to-nearest "
                f"(mean relative error {d['mean_output_error_rtn']:.2e} -> {d['mean_output_error']:.2e})"
                + (f"; {d['kept_rtn']} kept round-to-nearest (not better)" if d["kept_rtn"] else "")
                + (f"; {len(self.skipped)} not supported (RTN)" if self.skipped else ""))


def run_gptq(model: onnx.ModelProto, calib_data: object, formats: dict[str, WeightFormat],
             config: GPTQConfig = GPTQConfig()) -> GPTQResult:
    """GPTQ of every MatMul/Gemm weight named in `formats` (weight name -> format).

    `model` is the graph the weight-only rewrite edits (after Gemm -> MatMul); calib_data: anything
    :func:`slimq.io.samples.load_samples` accepts. A weight read by several nodes uses the sum of
    their input Hessians. Weights GPTQ cannot handle (not 2-D, transA, read in two orientations) and
    weights whose GPTQ rounding is not better than RTN's on the calibration inputs keep RTN.
    """
    start = time.perf_counter()
    graph = ir.from_proto(model).graph
    candidates, _ = find_candidates(graph)
    targets = {w: t for w, t in _targets(graph, candidates).items()
               if w in formats and len({c.channel_axis for c, _ in t}) == 1}
    if not targets:
        raise ConfigError("GPTQ found none of the requested weights in a 2-D MatMul/Gemm; names: "
                          f"{sorted(formats)[:5]}.")
    samples = load_samples(calib_data, model_inputs(model))
    n = min(len(samples), config.max_samples)
    acts = sorted({a for t in targets.values() for _, a in t})
    hs = hessians(model, acts, samples.batches(range(n), config.batch_size), config.memory_budget_mb)
    weights, errors, factors = {}, {}, {}
    for name, readers in targets.items():
        w, key = initializer_array(graph, name), tuple(sorted(a for _, a in readers))
        h = sum((hs[a] for a in key[1:]), hs[key[0]])  # the readers' Hessians added up
        if key not in factors:
            factors[key] = _factor(h, config)
        q, s, e_rtn, e = _quantize(w, h, formats[name], readers[0][0].channel_axis, config, factors[key])
        weights[name], errors[name] = ((q, s), (e_rtn, e)) if e < e_rtn else (_rtn(w, formats[name]), (e_rtn, e_rtn))
    skipped = tuple(sorted(set(formats) - set(targets)))
    return GPTQResult(weights, errors, skipped, n, time.perf_counter() - start)


def gptq_weights(model: onnx.ModelProto, calib_data: object, formats: dict[str, WeightFormat],
                 config: GPTQConfig = GPTQConfig()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GPTQ integers and scales of every MatMul/Gemm weight named in `formats` (see :func:`run_gptq`)."""
    return run_gptq(model, calib_data, formats, config).weights


def gptq_formats(decisions: Iterable[Decision]) -> dict[str, WeightFormat]:
    """Weight -> format of the quantized MatMul/Gemm decisions (weight-only or dynamic); a weight stored in two
    formats is left out."""
    seen: dict[str, set[WeightFormat]] = {}
    for d in decisions:
        if d.choice is not Choice.FLOAT and d.fmt is not None and _matmul_mac(d.candidate.op_type) is not None:
            seen.setdefault(d.candidate.weight, set()).add(d.fmt)
    return {w: next(iter(f)) for w, f in seen.items() if len(f) == 1}


class PrecomputedWeights(WeightCache):
    """A WeightCache that serves given (integers, scales) for their formats and RTN for everything else."""

    def __init__(self, weights: dict[str, tuple[np.ndarray, np.ndarray]], formats: dict[str, WeightFormat]):
        super().__init__()
        self.weights, self.formats = weights, formats

    def get(self, name: str, w: np.ndarray, fmt: WeightFormat) -> tuple[np.ndarray, np.ndarray]:
        if name in self.weights and self.formats.get(name) == fmt:
            return self.weights[name]
        return super().get(name, w, fmt)
