"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free Quantization").

Per-tensor weight quantization spends one step size on every output channel of a layer, so
channels with a small range lose most of their precision. For two consecutive convolutions
``y = W2 f(W1 x + b1) + b2`` with a positively homogeneous ``f`` (ReLU, identity), scaling
output channel i of the first layer by ``1 / s_i`` and input channel i of the second by
``s_i`` leaves the function unchanged. :func:`equalize` picks ``s_i = sqrt(r1_i / r2_i)``
(``r`` = the channel's weight range), so both layers end with the range ``sqrt(r1_i * r2_i)``,
and sweeps over chains (expand -> depthwise -> project) until the scales settle. Data-free.

ReLU6 (``Clip(x, 0, 6)``) is not homogeneous: after scaling, channel i clips at ``6 / s_i``,
and ONNX's Clip takes scalar bounds only. What to do is the ``relu6`` argument:

* ``"skip"`` (default): pairs through a bounded Clip are left alone. Exact, no new ops.
* ``"exact"``: the Clip becomes ``Relu -> Min(x, 6 / s)`` with per-channel bounds. Exact in
  FP32, but Min has no int8 kernel: each rewritten pair adds a float Min between two
  quantized convolutions (a DequantizeLinear / Min / QuantizeLinear island in the QDQ model).
* ``"relu"``: the Clip becomes Relu, as in Nagel et al. (MobileNetV2) and AIMET. No new ops,
  but FP32 outputs change wherever a pre-activation exceeded the bound.

:func:`absorb_high_bias` moves the always-present part of a channel (its lower bound ``c``,
measured by the caller on calibration data) from a Conv's bias into the next Conv's bias:
``W2 f(z) + b2 = W2 f(z - c) + (b2 + W2 c)`` for ``f`` = ReLU (``c >= 0``, exact while
``z >= c``) or identity (exact for any ``c``). The next Conv must be unpadded (padded zeros
would otherwise stand for ``-c``). The paper reads ``c`` off BatchNorm statistics; slimq
folds BatchNorm before this pass, so ``c`` comes from data.

Both are :class:`~slimq.graph.passes.base.RewritePass` es (in place; the result's ``count`` is the
number of layer pairs changed); :func:`equalize` and :func:`absorb_high_bias` run them and return it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from slimq.core.errors import ConfigError, unknown_choice
from slimq.core.ops import ONNX_DOMAINS, Role, input_saturation, op_info
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes.base import RewritePass, rewrite_count
from slimq.graph.values import const_array, const_of

RELU6_MODES = ("skip", "exact", "relu")


@dataclass
class ConvPair:
    """Conv `first` -> optional activation `act` -> Conv `second`; `scale` accumulates s over sweeps."""

    first: ir.Node
    act: ir.Node | None
    second: ir.Node
    bounded: bool  # act clips from above: scaling changes its bound
    scale: np.ndarray | None = None


def _sole_reader(v: ir.Value) -> ir.Node | None:
    uses = list(v.uses())
    return uses[0].node if len(uses) == 1 and uses[0].idx == 0 and not v.is_graph_output() else None


def _is_conv(n: ir.Node | None) -> bool:
    if n is None or n.op_type != "Conv" or n.domain not in ONNX_DOMAINS or len(n.inputs) < 2:
        return False
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    return const_array(n.inputs[1]) is not None and (bias is None or const_array(bias) is not None)


def _group(n: ir.Node) -> int:
    return n.attributes["group"].as_int() if "group" in n.attributes else 1


def _act_kind(n: ir.Node) -> str | None:
    """"homogeneous" (ReLU, Clip(0|-inf, inf)), "bounded" (Clip(0, hi)), or None (not scale-equivariant)."""
    if n.domain not in ONNX_DOMAINS or op_info(n.op_type).role is not Role.FUSED_ACTIVATION:
        return None
    bounds = input_saturation(n)
    if bounds is None or bounds[0] not in (0.0, -math.inf) or bounds[1] <= 0.0:
        return None
    if bounds[1] == math.inf:
        return "homogeneous"
    return "bounded" if bounds[0] == 0.0 else None


def _pair_from(first: ir.Node) -> ConvPair | str:
    """The pair starting at Conv `first`, or why there is none."""
    nxt = _sole_reader(first.outputs[0])
    act: ir.Node | None = None
    kind: str | None = "homogeneous"
    if nxt is not None and not _is_conv(nxt):
        act, kind = nxt, _act_kind(nxt)
        nxt = _sole_reader(act.outputs[0]) if kind is not None else None
    if nxt is None or not _is_conv(nxt):
        return "output does not reach exactly one Conv (directly or through one ReLU/Clip(0, hi))"
    w1, w2 = const_of(first.inputs[1]), const_of(nxt.inputs[1])
    if w1.shape[0] != w2.shape[1] * _group(nxt) or w1.ndim != w2.ndim:
        return f"channel counts differ: {w1.shape} -> {w2.shape} (group {_group(nxt)})"
    return ConvPair(first, act, nxt, kind == "bounded")


def find_pairs(model: ir.Model) -> list[ConvPair]:
    """Every Conv -> (ReLU | Clip(0, hi) | nothing) -> Conv chain whose intermediate tensors have one reader."""
    return [p for n in model.graph if _is_conv(n) and isinstance(p := _pair_from(n), ConvPair)]


class _Weights:
    """Float64 working copies of the weights and biases being rescaled, written back once."""

    def __init__(self) -> None:
        self.w: dict[int, np.ndarray] = {}
        self.b: dict[int, np.ndarray] = {}
        self.nodes: dict[int, ir.Node] = {}

    def load(self, conv: ir.Node) -> None:
        if id(conv) not in self.nodes:
            w = const_of(conv.inputs[1]).astype(np.float64)
            b = const_array(conv.inputs[2]) if len(conv.inputs) > 2 else None
            self.nodes[id(conv)], self.w[id(conv)] = conv, w
            self.b[id(conv)] = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)

    def in_channel_index(self, conv: ir.Node) -> np.ndarray:
        """(cout, cin/group) map of weight [o, j] to the input channel it reads."""
        w = self.w[id(conv)]
        cout_g = w.shape[0] // _group(conv)
        return (np.arange(w.shape[0])[:, None] // cout_g) * w.shape[1] + np.arange(w.shape[1])[None, :]

    def in_ranges(self, conv: ir.Node, channels: int) -> np.ndarray:
        w = self.w[id(conv)]
        per = np.abs(w).reshape(*w.shape[:2], -1).max(axis=2)
        out = np.zeros(channels)
        np.maximum.at(out, self.in_channel_index(conv).ravel(), per.ravel())
        return out

    def scale_in(self, conv: ir.Node, s: np.ndarray) -> None:
        w = self.w[id(conv)]
        self.w[id(conv)] = w * s[self.in_channel_index(conv)].reshape(*w.shape[:2], *[1] * (w.ndim - 2))

    def scale_out(self, conv: ir.Node, s: np.ndarray) -> None:
        w = self.w[id(conv)]
        self.w[id(conv)] = w / s.reshape(-1, *[1] * (w.ndim - 1))
        self.b[id(conv)] = self.b[id(conv)] / s

    def store(self, b: GraphBuilder, suffix: str) -> None:
        for key, conv in self.nodes.items():
            dtype, base = const_of(conv.inputs[1]).dtype, node_name(conv)
            conv.replace_input_with(1, b.initializer(f"{base}.weight_{suffix}", self.w[key].astype(dtype)))
            if len(conv.inputs) < 3:
                conv.resize_inputs(3)
            conv.replace_input_with(2, b.initializer(f"{base}.bias_{suffix}", self.b[key].astype(dtype)))


def equalization_scales(r1: np.ndarray, r2: np.ndarray, max_scale: float = 1e4) -> np.ndarray:
    """s_i = sqrt(r1_i / r2_i): both layers end with range sqrt(r1_i r2_i); 1 where a range is 0."""
    ok = (r1 > 0) & (r2 > 0)
    s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
    return np.asarray(np.clip(s, 1.0 / max_scale, max_scale))


def _sweep(pairs: list[ConvPair], ws: _Weights) -> float:
    """One pass over all pairs; returns the largest relative scale change applied."""
    change = 0.0
    for p in pairs:
        w1 = ws.w[id(p.first)]
        r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
        s = equalization_scales(r1, ws.in_ranges(p.second, w1.shape[0]))
        ws.scale_out(p.first, s)
        ws.scale_in(p.second, s)
        p.scale = s if p.scale is None else p.scale * s
        change = max(change, float(np.max(np.abs(np.log(s)))))
    return change


def _rewrite_bounded(b: GraphBuilder, p: ConvPair, relu6: str, rank: int) -> None:
    """Replace the bounded Clip of an equalized pair by Relu (+ Min with per-channel bounds for "exact")."""
    act = p.act
    bounds = input_saturation(act) if act is not None else None
    if act is None or bounds is None or p.scale is None:
        raise ValueError("only an equalized pair through a bounded Clip is rewritten")
    base = node_name(act)
    last = b.node("Relu", [act.inputs[0]], base=base, after=act)
    if relu6 == "exact":
        bound = (bounds[1] / p.scale).astype(np.float32).reshape(1, -1, *[1] * (rank - 2))
        c = b.initializer(f"{base}.bound_cle", bound)
        last = b.node("Min", [last.outputs[0], c], base=base, after=last)
    b.replace_uses(act.outputs[0], last.outputs[0], take_name=True)
    b.graph.remove(act, safe=True)


class EqualizePass(RewritePass):
    """Cross-layer equalization of every Conv -> act -> Conv pair (count: pairs equalized).

    relu6: "skip", "exact" or "relu" (see the module docstring). Sweeps stop when no scale changes by
    more than `tol` (relative) or after `max_sweeps`.
    """

    def __init__(self, relu6: str = "skip", max_sweeps: int = 20, tol: float = 1e-3) -> None:
        super().__init__()
        if relu6 not in RELU6_MODES:
            raise unknown_choice("relu6 mode", relu6, RELU6_MODES)
        if max_sweeps < 1:
            raise ConfigError(f"max_sweeps must be >= 1, got {max_sweeps}.")
        self.relu6, self.max_sweeps, self.tol = relu6, max_sweeps, tol

    def rewrite(self, model: ir.Model) -> int:
        pairs = []
        for p in find_pairs(model):
            if p.bounded and self.relu6 == "skip":
                self.not_fired(node_name(p.first), "a Clip(0, hi) follows it (relu6='skip')")
            else:
                pairs.append(p)
        if not pairs:
            return 0
        ws = _Weights()
        for p in pairs:
            ws.load(p.first)
            ws.load(p.second)
        for _ in range(self.max_sweeps):
            if _sweep(pairs, ws) < self.tol:
                break
        b = GraphBuilder(model.graph)
        ws.store(b, "cle")
        for p in pairs:
            if p.bounded:
                _rewrite_bounded(b, p, self.relu6, ws.w[id(p.first)].ndim)
        RemoveUnusedNodesPass()(model)
        return len(pairs)


def equalize(model: ir.Model, relu6: str = "skip", max_sweeps: int = 20, tol: float = 1e-3) -> int:
    """Cross-layer equalization in place (see :class:`EqualizePass`); returns the number of pairs."""
    return rewrite_count(EqualizePass(relu6, max_sweeps, tol), model)


def _unpadded(conv: ir.Node) -> bool:
    pads = conv.attributes["pads"].as_ints() if "pads" in conv.attributes else ()
    auto = conv.attributes["auto_pad"].as_string() if "auto_pad" in conv.attributes else "NOTSET"
    return not any(pads) and auto in ("NOTSET", "VALID")


def _absorb(b: GraphBuilder, p: ConvPair, c: np.ndarray) -> None:
    ws = _Weights()
    ws.load(p.first)
    ws.load(p.second)
    w2 = ws.w[id(p.second)]
    shift = w2 * c[ws.in_channel_index(p.second)].reshape(*w2.shape[:2], *[1] * (w2.ndim - 2))
    ws.b[id(p.first)] = ws.b[id(p.first)] - c
    ws.b[id(p.second)] = ws.b[id(p.second)] + shift.reshape(w2.shape[0], -1).sum(axis=1)
    ws.store(b, "hba")


class AbsorbHighBiasPass(RewritePass):
    """Move each channel's lower bound from a Conv's bias into the next (unpadded) Conv's bias (count: pairs).

    `preact_min[t]` is the per-channel minimum (axis 1) of the first Conv's output `t` over the
    calibration data. Through ReLU the shift is ``c = max(0, min)`` (exact while the pre-activation
    stays >= c); without an activation it is ``c = min`` (always exact).
    """

    def __init__(self, preact_min: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.preact_min = preact_min

    def _shift(self, p: ConvPair) -> np.ndarray | str:
        lo = self.preact_min.get(p.first.outputs[0].name or "")
        if p.bounded or lo is None or not _unpadded(p.second):
            return "no statistics, a Clip(0, hi) between, or the next Conv is padded"
        relu = p.act is not None and (input_saturation(p.act) or (None,))[0] == 0.0
        c = np.maximum(lo.astype(np.float64), 0.0) if relu else lo.astype(np.float64)
        return c if np.any(c) else "nothing to move (lower bound 0)"

    def rewrite(self, model: ir.Model) -> int:
        b, changed = GraphBuilder(model.graph), 0
        for p in find_pairs(model):
            c = self._shift(p)
            if isinstance(c, str):
                self.not_fired(node_name(p.first), c)
                continue
            _absorb(b, p, c)
            changed += 1
        if changed:
            RemoveUnusedNodesPass()(model)
        return changed


def absorb_high_bias(model: ir.Model, preact_min: dict[str, np.ndarray]) -> int:
    """High-bias absorption in place (see :class:`AbsorbHighBiasPass`); returns the number of pairs changed."""
    return rewrite_count(AbsorbHighBiasPass(preact_min), model)
