"""Empirical bias correction of weight rounding (Nagel et al., 2019, "Data-Free Quantization").

Rounding weights to int8 shifts each output channel's mean by ``(W_q - W) . E[x]``.
With the per-channel input means from the calibration data, the pass subtracts that
shift from the bias, so the quantized layer is unbiased in expectation. It needs only
the means (no labels, no extra training) and runs before Q/DQ insertion, on the same
quantizer the inserter uses, so the correction matches the stored int8 weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from slimq.core import qmath
from slimq.core.ops import MacKind, op_info
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass, rewrite_count
from slimq.graph.plan import BiasEntry, QuantPlan, WeightEntry
from slimq.graph.values import const_of


@dataclass(frozen=True)
class BiasSite:
    """One layer whose bias can absorb the weight-rounding shift."""

    bias: BiasEntry
    weight: WeightEntry
    node: ir.Node


def _attr(node: ir.Node, name: str, default: float | int) -> float | int:
    if name not in node.attributes:
        return default
    a = node.attributes[name]
    return a.as_float() if isinstance(default, float) else a.as_int()


def bias_sites(model: ir.Model, plan: QuantPlan) -> list[BiasSite]:
    """Layers whose op allows bias correction (Conv; Gemm with alpha = beta = 1, transA = 0) with a
    quantized symmetric weight and a bias."""
    nodes = {node_name(n): n for n in model.graph}
    weights = {(w.node, w.tensor): w for w in plan.weights}
    sites = []
    for b in plan.biases:
        node, w = nodes.get(b.node), weights.get((b.node, b.weight))
        if node is None or w is None or not w.symmetric or not op_info(node.op_type, node.domain).bias_correction:
            continue
        plain = _attr(node, "transA", 0) == 0 and _attr(node, "alpha", 1.0) == 1.0 and _attr(node, "beta", 1.0) == 1.0
        if plain:
            sites.append(BiasSite(b, w, node))
    return sites


def _rounding_error(w: np.ndarray, entry: WeightEntry) -> np.ndarray:
    qt = qmath.quantize_weight(w, entry.qtype, entry.axis)
    return qmath.dequantize(qt.data, qt.scale, qt.zero_point, qt.axis).astype(np.float64) - w.astype(np.float64)


def output_shift(w: np.ndarray, entry: WeightEntry, mean_x: np.ndarray, op_type: str,
                 group: int = 1, trans_b: bool = False) -> np.ndarray:
    """Expected change of each output channel caused by rounding `w`, for inputs with channel means `mean_x`."""
    dw = _rounding_error(w, entry)
    mac = op_info(op_type).mac
    if mac is not None and mac.kind is MacKind.MATMUL:
        return (dw @ mean_x) if trans_b else (mean_x @ dw)
    per_in = dw.reshape(dw.shape[0], dw.shape[1], -1).sum(axis=2)  # (cout, cin / group)
    cin_g = per_in.shape[1]
    return np.einsum("gok,gk->go", per_in.reshape(group, -1, cin_g), mean_x.reshape(group, cin_g)).reshape(-1)


class CorrectBiasesPass(RewritePass):
    """Subtract the weight-rounding shift from each site's bias.

    `means[t]` is the per-channel mean (axis 1) of activation tensor t over the calibration data.
    A bias shared with another node is left alone.
    """

    def __init__(self, plan: QuantPlan, means: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.plan, self.means = plan, means

    def rewrite(self, model: ir.Model) -> int:
        corrected = 0
        for site in bias_sites(model, self.plan):
            x_mean, node = self.means.get(site.bias.activation), site.node
            b_val = node.inputs[site.bias.input_index]
            if x_mean is None or b_val is None or len(list(b_val.uses())) != 1:
                self.not_fired(site.bias.node, "no input mean" if x_mean is None else "bias shared with another node")
                continue
            w = const_of(node.inputs[site.weight.input_index])
            shift = output_shift(w, site.weight, x_mean.astype(np.float64), node.op_type,
                                 int(_attr(node, "group", 1)), bool(_attr(node, "transB", 0)))
            b = const_of(b_val)
            b_val.const_value = ir.tensor((b.astype(np.float64) - shift).astype(b.dtype), name=b_val.name)
            corrected += 1
        return corrected


def correct_biases(model: ir.Model, plan: QuantPlan, means: dict[str, np.ndarray]) -> int:
    """Run :class:`CorrectBiasesPass` in place. Returns the number of biases corrected."""
    return rewrite_count(CorrectBiasesPass(plan, means), model)
