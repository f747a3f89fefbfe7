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

Both passes mutate the onnx-ir model in place and return how many layer pairs they changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from slimq.core.errors import ConfigError, unknown_choice
from slimq.core.ops import Role, input_saturation, op_info
from slimq.graph.passes.common import add_initializer, const_array

_ONNX = ("", "ai.onnx")
RELU6_MODES = ("skip", "exact", "relu")


@dataclass
class _Pair:
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
    return n is not None and n.op_type == "Conv" and n.domain in _ONNX and len(n.inputs) > 1 \
        and const_array(n.inputs[1]) is not None and (len(n.inputs) < 3 or n.inputs[2] is None
                                                      or const_array(n.inputs[2]) is not None)


def _group(n: ir.Node) -> int:
    return n.attributes["group"].as_int() if "group" in n.attributes else 1


def _act_kind(n: ir.Node) -> str | None:
    """"homogeneous" (ReLU, Clip(0|-inf, inf)), "bounded" (Clip(0, hi)), or None (not scale-equivariant)."""
    if n.domain not in _ONNX or op_info(n.op_type).role is not Role.FUSED_ACTIVATION:
        return None
    bounds = input_saturation(n)
    if bounds is None or bounds[0] not in (0.0, -math.inf) or bounds[1] <= 0.0:
        return None
    if bounds[1] == math.inf:
        return "homogeneous"
    return "bounded" if bounds[0] == 0.0 else None


def _pair_from(first: ir.Node) -> _Pair | None:
    nxt = _sole_reader(first.outputs[0])
    act, kind = None, "homogeneous"
    if nxt is not None and not _is_conv(nxt):
        act, kind = nxt, _act_kind(nxt)
        nxt = _sole_reader(act.outputs[0]) if kind is not None else None
    if not _is_conv(nxt):
        return None
    w1, w2 = const_array(first.inputs[1]), const_array(nxt.inputs[1])
    if w1.shape[0] != w2.shape[1] * _group(nxt) or w1.ndim != w2.ndim:
        return None
    return _Pair(first, act, nxt, kind == "bounded")


def find_pairs(model: ir.Model) -> list[_Pair]:
    """Every Conv -> (ReLU | Clip(0, hi) | nothing) -> Conv chain whose intermediate tensors have one reader."""
    return [p for n in model.graph if _is_conv(n) and (p := _pair_from(n)) is not None]


class _Weights:
    """Float64 working copies of the weights and biases being rescaled, written back once."""

    def __init__(self) -> None:
        self.w: dict[int, np.ndarray] = {}
        self.b: dict[int, np.ndarray] = {}
        self.nodes: dict[int, ir.Node] = {}

    def load(self, conv: ir.Node) -> None:
        if id(conv) not in self.nodes:
            w = const_array(conv.inputs[1]).astype(np.float64)
            b = const_array(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
            self.nodes[id(conv)], self.w[id(conv)] = conv, w
            self.b[id(conv)] = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)

    def in_channel_index(self, conv: ir.Node) -> np.ndarray:
        """(cout, cin/group) map of weight [o, j] to the input channel it reads."""
        w = self.w[id(conv)]
        cout_g = w.shape[0] // _group(conv)
        return (np.arange(w.shape[0])[:, None] // cout_g) * w.shape[1] + np.arange(w.shape[1])[None, :]

    def in_ranges(self, conv: ir.Node, channels: int) -> np.ndarray:
        per = np.abs(self.w[id(conv)]).reshape(*self.w[id(conv)].shape[:2], -1).max(axis=2)
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

    def store(self, graph: ir.Graph, suffix: str) -> None:
        for key, conv in self.nodes.items():
            dtype, base = const_array(conv.inputs[1]).dtype, conv.name or conv.outputs[0].name
            conv.replace_input_with(1, add_initializer(graph, f"{base}.weight_{suffix}", self.w[key].astype(dtype)))
            if len(conv.inputs) < 3:
                conv.resize_inputs(3)
            conv.replace_input_with(2, add_initializer(graph, f"{base}.bias_{suffix}", self.b[key].astype(dtype)))


def equalization_scales(r1: np.ndarray, r2: np.ndarray, max_scale: float = 1e4) -> np.ndarray:
    """s_i = sqrt(r1_i / r2_i): both layers end with range sqrt(r1_i r2_i); 1 where a range is 0."""
    ok = (r1 > 0) & (r2 > 0)
    s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
    return np.clip(s, 1.0 / max_scale, max_scale)


def _sweep(pairs: list[_Pair], ws: _Weights) -> float:
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


def _rewrite_bounded(graph: ir.Graph, p: _Pair, relu6: str, rank: int) -> None:
    """Replace the bounded Clip of an equalized pair by Relu (+ Min with per-channel bounds for "exact")."""
    act, hi = p.act, input_saturation(p.act)[1]
    relu = ir.node("Relu", [act.inputs[0]], name=f"{act.name or act.outputs[0].name}_relu")
    new = [relu]
    if relu6 == "exact":
        bound = (hi / p.scale).astype(np.float32).reshape(1, -1, *[1] * (rank - 2))
        c = add_initializer(graph, f"{act.name or act.outputs[0].name}.bound_cle", bound)
        new.append(ir.node("Min", [relu.outputs[0], c], name=f"{act.name or act.outputs[0].name}_min"))
    graph.insert_after(act, new)
    out, name = act.outputs[0], act.outputs[0].name
    out.replace_all_uses_with(new[-1].outputs[0])
    out.name, new[-1].outputs[0].name = f"{name}_clip_cle", name
    graph.remove(act, safe=True)


def equalize(model: ir.Model, relu6: str = "skip", max_sweeps: int = 20, tol: float = 1e-3) -> int:
    """Cross-layer equalization of every Conv -> act -> Conv pair, in place. Returns the number of pairs.

    relu6: "skip", "exact" or "relu" (see the module docstring). Sweeps stop when no scale changes by
    more than `tol` (relative) or after `max_sweeps`.
    """
    if relu6 not in RELU6_MODES:
        raise unknown_choice("relu6 mode", relu6, RELU6_MODES)
    if max_sweeps < 1:
        raise ConfigError(f"max_sweeps must be >= 1, got {max_sweeps}.")
    pairs = [p for p in find_pairs(model) if not p.bounded or relu6 != "skip"]
    if not pairs:
        return 0
    ws = _Weights()
    for p in pairs:
        ws.load(p.first)
        ws.load(p.second)
    for _ in range(max_sweeps):
        if _sweep(pairs, ws) < tol:
            break
    ws.store(model.graph, "cle")
    for p in pairs:
        if p.bounded:
            _rewrite_bounded(model.graph, p, relu6, ws.w[id(p.first)].ndim)
    RemoveUnusedNodesPass()(model)
    return len(pairs)


def _unpadded(conv: ir.Node) -> bool:
    pads = conv.attributes["pads"].as_ints() if "pads" in conv.attributes else ()
    auto = conv.attributes["auto_pad"].as_string() if "auto_pad" in conv.attributes else "NOTSET"
    return not any(pads) and auto in ("NOTSET", "VALID")


def absorb_high_bias(model: ir.Model, preact_min: dict[str, np.ndarray]) -> int:
    """Move each channel's lower bound from a Conv's bias into the next (unpadded) Conv's bias, in place.

    `preact_min[t]` is the per-channel minimum (axis 1) of the first Conv's output `t` over the
    calibration data. Through ReLU the shift is ``c = max(0, min)`` (exact while the pre-activation
    stays >= c); without an activation it is ``c = min`` (always exact). Returns the pairs changed.
    """
    changed = 0
    for p in find_pairs(model):
        lo = preact_min.get(p.first.outputs[0].name)
        if p.bounded or lo is None or not _unpadded(p.second):
            continue
        relu = p.act is not None and input_saturation(p.act)[0] == 0.0
        c = np.maximum(lo.astype(np.float64), 0.0) if relu else lo.astype(np.float64)
        if not np.any(c):
            continue
        ws = _Weights()
        ws.load(p.first)
        ws.load(p.second)
        w2 = ws.w[id(p.second)]
        ws.b[id(p.first)] = ws.b[id(p.first)] - c
        ws.b[id(p.second)] = ws.b[id(p.second)] + (w2 * c[ws.in_channel_index(p.second)].reshape(
            *w2.shape[:2], *[1] * (w2.ndim - 2))).reshape(w2.shape[0], -1).sum(axis=1)
        ws.store(model.graph, "hba")
        changed += 1
    if changed:
        RemoveUnusedNodesPass()(model)
    return changed
