"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights of the MatMuls that read them.

A few channels of a transformer's LayerNorm output are 10-100x larger than the rest, so one
per-tensor activation scale leaves the other channels with a handful of integer steps. For a
linear layer ``Y = X W`` and per-channel ``s > 0``, ``Y = (X / s) (s W)`` exactly; with
``s_j = max|X_j|^a / max|W_j|^(1-a)`` the activation is flattened and the weight (quantized per
output channel, so a scaled input row costs little) takes the difference.

A *site* is one activation tensor X with every MatMul/Gemm that reads it with a constant 2-D
weight; those readers share one ``s``. ``1 / s`` goes where it is exact:

* ``layernorm``: X is a LayerNormalization output (last axis): gamma and beta are divided by ``s``.
* ``linear``: X is the output of a MatMul/Gemm with a constant weight (optionally + a constant
  bias Add): that weight's output columns (and the bias) are divided by ``s``.
* ``mul``: nothing produces X that could absorb it (a GELU output, a graph input, a Reshape):
  an explicit ``Mul(X, 1 / s)`` goes in front of the site's linear layers.

When X also has other readers (a post-LN transformer's residual Add reads the LayerNorm output;
GELU reads the FFN's first linear output), the absorbed tensor reaches them through a
compensating ``Mul(X', s)``. Sites that need any new Mul are smoothed only when the caller allows
it. Compensating on the other branch, not in front of the MatMuls, matters for static INT8: the
tensor the MatMuls read is then the smooth one where it is quantized (a QDQ pair on X serves all
its readers, so a Mul behind it would come too late). In slimq's x86 plan a Mul by a constant
stays float.

Per-channel activation statistics come from the caller (calibration); :func:`choose_alpha`
picks ``a`` per site by simulating int8 X and W on sample rows. The pass mutates the onnx-ir
model in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from slimq.core import qmath
from slimq.core.errors import ConfigError
from slimq.core.ops import ONNX_DOMAINS
from slimq.graph.builder import GraphBuilder
from slimq.graph.passes.base import RewritePass
from slimq.graph.values import const_array, const_of

ABSORBERS = ("layernorm", "linear", "mul")


@dataclass(frozen=True)
class Reader:
    """A linear layer of a site: `node` reads X at input 0; its weight rows (axis `in_axis`) match X's channels."""

    node: ir.Node
    in_axis: int  # 0: MatMul / Gemm transB=0 weight (K, N); 1: Gemm transB=1 weight (N, K)

    def weight(self) -> np.ndarray:
        return const_of(self.node.inputs[1])

    def weight_rows(self) -> np.ndarray:
        """(K, N) view of the weight: row j multiplies channel j of X."""
        w = self.weight()
        return w if self.in_axis == 0 else w.T


@dataclass(frozen=True)
class Site:
    activation: str
    value: ir.Value  # X itself
    readers: tuple[Reader, ...]
    absorber: str  # one of ABSORBERS
    producer: ir.Node | None  # the LayerNormalization or linear node that absorbs 1/s
    others: tuple[tuple[ir.Node, int], ...] = ()  # other uses of X: they get X through Mul(X', s)

    @property
    def needs_mul(self) -> bool:
        return self.absorber == "mul" or bool(self.others)

    def weights(self) -> list[np.ndarray]:
        return [r.weight_rows() for r in self.readers]


def _attr_int(n: ir.Node, name: str, default: int) -> int:
    return n.attributes[name].as_int() if name in n.attributes else default


def _attr_float(n: ir.Node, name: str, default: float) -> float:
    return n.attributes[name].as_float() if name in n.attributes else default


def _reader(n: ir.Node, idx: int) -> Reader | None:
    """The node as a linear reader of its input `idx`, or None."""
    if n.domain not in ONNX_DOMAINS or idx != 0 or len(n.inputs) < 2:
        return None
    w = const_array(n.inputs[1])
    if w is None or w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        return None
    if n.op_type == "MatMul":
        return Reader(n, 0)
    if n.op_type == "Gemm" and not _attr_int(n, "transA", 0) and _attr_float(n, "alpha", 1.0) != 0.0:
        return Reader(n, 1 if _attr_int(n, "transB", 0) else 0)
    return None


def _layernorm_absorbs(p: ir.Node, k: int) -> bool:
    if p.op_type != "LayerNormalization" or p.domain not in ONNX_DOMAINS or _attr_int(p, "axis", -1) != -1:
        return False
    gamma = const_array(p.inputs[1]) if len(p.inputs) > 1 else None
    beta = const_array(p.inputs[2]) if len(p.inputs) > 2 and p.inputs[2] is not None else np.zeros(k)
    return gamma is not None and beta is not None and gamma.size == k and beta.size == k and len(p.outputs) == 1


def _linear_producer(x: ir.Value, k: int) -> ir.Node | None:
    """The MatMul/Gemm (optionally followed by a constant bias Add) that produces `x`, if it can absorb 1/s."""
    p = x.producer()
    if p is not None and p.op_type == "Add" and p.domain in ONNX_DOMAINS and len(p.inputs) == 2:
        consts = [i for i, v in enumerate(p.inputs) if const_array(v) is not None]
        mm = p.inputs[1 - consts[0]] if len(consts) == 1 else None
        if mm is None or const_of(p.inputs[consts[0]]).size != k or len(mm.uses()) != 1 or mm.is_graph_output():
            return None
        p = mm.producer()
    reader = _reader(p, 0) if p is not None and len(p.outputs) == 1 else None
    return p if reader is not None and reader.weight_rows().shape[1] == k else None


def _absorber(x: ir.Value, k: int) -> tuple[str, ir.Node | None]:
    p = x.producer()
    if x.is_graph_output() or p is None:
        return "mul", None
    if _layernorm_absorbs(p, k):
        return "layernorm", p
    if (lin := _linear_producer(x, k)) is not None:
        return "linear", lin
    return "mul", None


def find_sites(model: ir.Model) -> list[Site]:
    """Every activation tensor read by MatMul/Gemm layers with constant 2-D weights, with how 1/s would be applied."""
    values = list(model.graph.inputs) + [o for n in model.graph for o in n.outputs]
    sites = []
    for x in values:
        readers = [r for u in x.uses() if (r := _reader(u.node, u.idx)) is not None]
        if not readers:
            continue
        k = readers[0].weight_rows().shape[0]
        if any(r.weight_rows().shape[0] != k for r in readers):
            continue
        absorber, producer = _absorber(x, k)
        site_nodes = {id(r.node) for r in readers}
        others = tuple((u.node, u.idx) for u in x.uses() if id(u.node) not in site_nodes)
        sites.append(Site(x.name or "", x, tuple(readers), absorber, producer, others if absorber != "mul" else ()))
    return sites


def smoothing_scales(x_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float,
                     limit: float = 1e5) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha) over all readers' (K, N) weights; 1 where either is 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"SmoothQuant alpha must be in [0, 1], got {alpha}; the paper uses 0.5 (0.75-0.85 for "
                          "models with strong outliers).")
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
    x_max = np.asarray(x_absmax, np.float64)
    ok = (x_max > 0) & (w_max > 0)
    s = np.where(ok, np.where(ok, x_max, 1.0) ** alpha / np.where(ok, w_max, 1.0) ** (1 - alpha), 1.0)
    return np.clip(s, 1.0 / limit, limit)


def _scaled_const(b: GraphBuilder, v: ir.Value | None, factor: np.ndarray, suffix: str) -> ir.Value:
    a = const_of(v)
    return b.initializer(f"{v.name if v is not None else 'const'}_{suffix}",
                         (a.astype(np.float64) * factor).astype(a.dtype))


def _scale_readers(b: GraphBuilder, site: Site, s: np.ndarray) -> None:
    for r in site.readers:
        factor = s.reshape(-1, 1) if r.in_axis == 0 else s.reshape(1, -1)
        r.node.replace_input_with(1, _scaled_const(b, r.node.inputs[1], factor, "smooth"))


def _absorb_layernorm(b: GraphBuilder, ln: ir.Node, inv: np.ndarray) -> None:
    for i in (1, 2):
        if len(ln.inputs) > i and ln.inputs[i] is not None:
            ln.replace_input_with(i, _scaled_const(b, ln.inputs[i], inv, "smooth"))


def _absorb_linear(b: GraphBuilder, p: ir.Node, x: ir.Value, inv: np.ndarray) -> None:
    """Divide the output channels of linear layer `p` (and of its bias: Gemm C, or the Add producing x) by s."""
    r = _reader(p, 0)
    in_axis = r.in_axis if r is not None else 0
    p.replace_input_with(1, _scaled_const(b, p.inputs[1], inv.reshape(1, -1) if in_axis == 0 else inv.reshape(-1, 1),
                                          "smooth"))
    add = x.producer()
    if add is not None and add is not p:  # bias Add after the MatMul
        i = next(i for i, v in enumerate(add.inputs) if const_array(v) is not None)
        add.replace_input_with(i, _scaled_const(b, add.inputs[i], inv.reshape(const_of(add.inputs[i]).shape), "smooth"))
    elif p.op_type == "Gemm" and len(p.inputs) > 2 and p.inputs[2] is not None:
        c = const_of(p.inputs[2])
        p.replace_input_with(2, _scaled_const(b, p.inputs[2], inv.reshape(c.shape) if c.size == inv.size else inv,
                                              "smooth"))


def _insert_mul(b: GraphBuilder, site: Site, inv: np.ndarray) -> None:
    """Mul(X, 1/s) in front of the site's linear layers."""
    c = b.initializer(f"{site.activation}_smooth_scale", inv.astype(np.float32))
    mul = b.node("Mul", [site.value, c], base=f"{site.activation}_smooth", before=site.readers[0].node)
    for r in site.readers:
        r.node.replace_input_with(0, mul.outputs[0])


def _compensate(b: GraphBuilder, site: Site, s: np.ndarray) -> None:
    """Give the other readers of the absorbed X their original values back: Mul(X', s)."""
    c = b.initializer(f"{site.activation}_unsmooth_scale", s.astype(np.float32))
    mul = b.node("Mul", [site.value, c], base=f"{site.activation}_unsmooth", after=site.value.producer())
    b.replace_uses(site.value, mul.outputs[0], readers=site.others)


def apply_smoothing(model: ir.Model, site: Site, s: np.ndarray) -> None:
    """X / s at the site's absorber, s W in its readers (in place). Exact in real arithmetic."""
    x = site.value
    if any(r.node.inputs[0] is not x for r in site.readers):
        raise ConfigError(f'SmoothQuant site "{site.activation}" is stale: find the sites again after editing.')
    b = GraphBuilder(model.graph)
    _scale_readers(b, site, s)
    if site.absorber == "layernorm" and site.producer is not None:
        _absorb_layernorm(b, site.producer, 1.0 / s)
    elif site.absorber == "linear" and site.producer is not None:
        _absorb_linear(b, site.producer, x, 1.0 / s)
    else:
        _insert_mul(b, site, 1.0 / s)
    if site.others:
        _compensate(b, site, s)


class SmoothQuantPass(RewritePass):
    """Smooth every site with statistics (count: sites smoothed; `done`: the sites).

    alpha: one value, or per site (sites missing from the dict are left alone). Sites needing a new
    Mul (see the module docstring) are smoothed only with `allow_mul`.
    """

    def __init__(self, act_absmax: dict[str, np.ndarray], alpha: float | dict[str, float] = 0.5,
                 allow_mul: bool = False) -> None:
        super().__init__()
        self.act_absmax, self.alpha, self.allow_mul = act_absmax, alpha, allow_mul
        self.done: list[Site] = []

    def _alpha(self, site: Site) -> float | None:
        a = self.alpha.get(site.activation) if isinstance(self.alpha, dict) else self.alpha
        if a is None or site.activation not in self.act_absmax:
            self.not_fired(site.activation, "no alpha or no statistics for it")
            return None
        if site.needs_mul and not self.allow_mul:
            self.not_fired(site.activation, f"needs a new Mul ({site.absorber}) and allow_mul is off")
            return None
        return a

    def rewrite(self, model: ir.Model) -> int:
        self.done = []
        for site in find_sites(model):
            if (a := self._alpha(site)) is not None:
                apply_smoothing(model, site, smoothing_scales(self.act_absmax[site.activation], site.weights(), a))
                self.done.append(site)
        if self.done:
            RemoveUnusedNodesPass()(model)
        return len(self.done)


def smoothquant(model: ir.Model, act_absmax: dict[str, np.ndarray], alpha: float | dict[str, float] = 0.5,
                allow_mul: bool = False) -> list[Site]:
    """Run :class:`SmoothQuantPass` in place; returns the sites changed."""
    p = SmoothQuantPass(act_absmax, alpha, allow_mul)
    p(model)
    return p.done


def _fake_activation(x: np.ndarray, qtype: qmath.QType, symmetric: bool) -> np.ndarray:
    s, z = qmath.scale_zero_point(x.min(), x.max(), qtype, symmetric)
    return qmath.fake_quantize(x, s, z, qtype)


def quantized_error(x: np.ndarray, weights: Sequence[np.ndarray], s: np.ndarray,
                    act_qtype: qmath.QType = qmath.UINT8, act_symmetric: bool = False,
                    w_qtype: qmath.QType = qmath.INT8.narrow()) -> float:
    """Sum over readers of ||X W - Q(X / s) Q(s W)||^2 / ||X W||^2 (per-tensor X, per-output-channel W)."""
    xq = _fake_activation((x / s).astype(np.float32), act_qtype, act_symmetric).astype(np.float64)
    err = ref = 0.0
    for w in weights:
        qt = qmath.quantize_weight((w * s.reshape(-1, 1)).astype(np.float32), w_qtype, 1)
        y = x.astype(np.float64) @ w.astype(np.float64)
        err += float(((y - xq @ qmath.dequantize(qt.data, qt.scale, qt.zero_point, 1)) ** 2).sum())
        ref += float((y ** 2).sum())
    return err / max(ref, 1e-30)


def choose_alpha(x_rows: np.ndarray, weights: Sequence[np.ndarray], x_absmax: np.ndarray,
                 alphas: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                 **quant: Any) -> tuple[float | None, dict[float | str, float]]:
    """The alpha with the lowest simulated int8 output error on `x_rows`, or None when no smoothing is best.

    Returns (alpha, {alpha or "none": relative error}). `quant` goes to :func:`quantized_error`.
    """
    errors: dict[float | str, float] = {"none": quantized_error(x_rows, weights, np.ones(x_rows.shape[1]), **quant)}
    for a in alphas:
        errors[a] = quantized_error(x_rows, weights, smoothing_scales(x_absmax, weights, a), **quant)
    best = min(errors, key=lambda k: errors[k])
    return (None if isinstance(best, str) else best), errors
