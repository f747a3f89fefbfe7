"""Learned weight rounding for static PTQ (``StaticConfig.weight_rounding="adaround"``).

After calibration, :func:`learn_rounding` runs AdaRound (:mod:`slimq.static.adaround`) on the plan's
Conv/Gemm/MatMul weights with exactly the inserter's quantizer: the entry's integer type and
axis, symmetric abs-max scales. The learned integers then go to Q/DQ insertion
(:func:`slimq.graph.qdq.insert_qdq`, ``weights=``). Bias correction skips the layers whose rounding
was learned: AdaRound already fits each layer's output, its mean included, to the FP32 output, with
the earlier layers' rounding in its inputs, so the correction (computed on FP32 inputs) would undo
part of that compensation. Measured on the Fashion-MNIST MobileNet at W4A8 with 1000 iterations per
layer: top-1 91.78 skipping them, 91.40 correcting them from the learned integers (FP32 91.76,
round-to-nearest 91.22). Layers where AdaRound kept round-to-nearest are corrected as usual.
Weights AdaRound cannot handle (shared by two nodes, layouts it does not support, asymmetric
entries) keep round-to-nearest; the report lists what was learned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from slimq.core import qmath
from slimq.core.config import StaticConfig
from slimq.graph.plan import QuantPlan, WeightEntry
from slimq.io.samples import SampleSet
from slimq.static.calibrate import Calibration


@dataclass(frozen=True)
class WeightRounding:
    """Learned integer weights by weight tensor (in the inserter's format), and what they gained."""

    weights: dict[str, qmath.QuantizedTensor]
    layers: tuple[dict[str, Any], ...]  # node, tensor, mse_rtn, mse, iterations, learned
    seconds: float
    budget_s: float
    samples: int

    def summary(self) -> dict[str, Any]:
        ratios = [r["mse"] / r["mse_rtn"] for r in self.layers if r["mse_rtn"] > 0]
        return {"method": "adaround", "layers": len(self.layers), "learned": sum(r["learned"] for r in self.layers),
                "kept_nearest": sum(not r["learned"] for r in self.layers), "seconds": round(self.seconds, 1),
                "time_budget_s": self.budget_s, "calibration_samples": self.samples,
                "mean_mse_vs_nearest": round(float(np.mean(ratios)), 4) if ratios else 1.0,
                "per_layer": list(self.layers)}

    def note(self) -> str:
        s = self.summary()
        return (f"AdaRound: {s['layers']} layers in {s['seconds']:.0f} s (budget {s['time_budget_s']:.0f} s), "
                f"{s['learned']} learned, {s['kept_nearest']} kept round-to-nearest; layer output MSE "
                f"{(1 - s['mean_mse_vs_nearest']) * 100:.0f} % lower than round-to-nearest on average")


def _eligible(plan: QuantPlan, layer_nodes: dict[str, Any]) -> dict[str, WeightEntry]:
    """node -> the weight entry AdaRound can learn: symmetric, its layer found, its tensor read by one entry,
    and the entry's axis that of the layer's output channels (or per-tensor)."""
    readers: dict[str, int] = {}
    for e in plan.weights:
        readers[e.tensor] = readers.get(e.tensor, 0) + 1
    out = {}
    for e in plan.weights:
        lay = layer_nodes.get(e.node)
        if lay is None or not e.symmetric or readers[e.tensor] != 1 or lay.tensor != e.tensor:
            continue
        if e.axis is None or e.axis % lay.weight.ndim == lay.axis:
            out[e.node] = e
    return out


def learn_rounding(fp32: onnx.ModelProto, plan: QuantPlan, samples: SampleSet, idx: Sequence[int],
                   cfg: StaticConfig) -> WeightRounding | None:
    """AdaRound integers for the plan's weights on the calibration samples `idx` (None: no layer qualifies)."""
    from slimq.static.adaround import AdaRoundConfig, adaround_batches, find_layers  # imports torch

    start = time.perf_counter()
    entries = _eligible(plan, {lay.node: lay for lay in find_layers(fp32, plan.quantized_nodes)})
    if not entries:
        return None
    qtypes = {e.qtype for e in entries.values()}
    if len(qtypes) != 1:  # one AdaRound run has one integer range; the scales (per channel or not) come per layer
        raise ValueError(f"weight entries mix integer types ({sorted(q.name for q in qtypes)}); AdaRound needs one")
    acfg = AdaRoundConfig(qtype=qtypes.pop(), time_budget_s=cfg.adaround_time_budget,
                          memory_budget_mb=cfg.memory_budget_mb)
    scales = {n: qmath.quantize_weight(_const(fp32, e.tensor), e.qtype, e.axis).scale for n, e in entries.items()}
    batches = list(samples.batches(idx, cfg.batch_size))
    rounded = adaround_batches(fp32, batches, acfg, entries, scales)
    weights, layers = {}, []
    for node, r in rounded.items():
        zp = np.zeros(np.shape(r.scale), r.q.dtype)
        weights[r.tensor] = qmath.QuantizedTensor(r.q, r.scale, zp, entries[node].axis, entries[node].qtype)
        layers.append({"node": node, "tensor": r.tensor, "mse_rtn": float(r.mse_rtn), "mse": float(r.mse),
                       "iterations": r.iterations, "learned": bool(r.adaround)})
    return WeightRounding(weights, tuple(layers), time.perf_counter() - start, cfg.adaround_time_budget, len(idx))


def _const(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return onnx.numpy_helper.to_array(t)
    raise KeyError(f"weight {name} is not an initializer of the model")


def with_rounding(calib: Calibration, fp32: onnx.ModelProto, plan: QuantPlan, samples: SampleSet,
                  idx: Sequence[int], cfg: StaticConfig) -> Calibration:
    """`calib` with the learned weight rounding the config asks for (unchanged for round-to-nearest)."""
    if cfg.weight_rounding != "adaround":
        return calib
    return replace(calib, rounding=learn_rounding(fp32, plan, samples, idx, cfg))


def rounded_weights(calib: Calibration, cfg: StaticConfig) -> dict[str, qmath.QuantizedTensor]:
    """The learned integers to insert (none for round-to-nearest)."""
    r = calib.rounding
    return dict(r.weights) if r is not None and cfg.weight_rounding == "adaround" else {}


def without_learned_biases(plan: QuantPlan, calib: Calibration, cfg: StaticConfig) -> QuantPlan:
    """The plan bias correction works on: without the biases of layers whose rounding AdaRound learned."""
    r = calib.rounding
    if r is None or cfg.weight_rounding != "adaround":
        return plan
    learned = {lay["tensor"] for lay in r.layers if lay["learned"]}
    return replace(plan, biases=tuple(b for b in plan.biases if b.weight not in learned))


def rounding_notes(calib: Calibration) -> tuple[dict[str, Any], list[str]]:
    """(report details entry, note lines) of the learned rounding, if any."""
    r = calib.rounding
    return ({"weight_rounding": r.summary()}, [r.note()]) if r is not None else ({}, [])
