"""Prototype graph rewrites for PP-LCNetV3-style models (PP-OCRv4 rec) that are not (yet) part of slimq.

The earlier prototypes here were promoted: Conv + affine folding and HardSwish fusion are
``slimq.graph.passes`` (run by ``preprocess``), and bias correction is slimq's own
(``StaticConfig.bias_correction``, on by default). What is left, as onnx-ir passes on
slimq's graph builder (exact in FP32; run them on a preprocessed model):

* :class:`EqualizeConvPairsPass` (``equalize_conv_pairs``): cross-layer equalization of
  Conv -> Conv pairs (Nagel et al. 2019).
* :class:`SmoothConvInputsPass` (``smooth_conv_inputs``): SmoothQuant-style per-channel
  equalization of a Conv input ``h * a + b`` into the Conv's weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes import RewritePass, rewrite_count
from slimq.graph.passes.common import const_array
from slimq.io.model import load_model, save_model
from slimq.runtime.exposed import ExposedRunner


def _group(conv: ir.Node) -> int:
    return conv.attributes["group"].as_int() if "group" in conv.attributes else 1


def _sole_reader(v: ir.Value) -> ir.Node | None:
    uses = list(v.uses())
    return uses[0].node if len(uses) == 1 and not v.is_graph_output() else None


def _producer(v: ir.Value | None, op_type: str) -> ir.Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.op_type == op_type and p.domain in ("", "ai.onnx") else None


def _scalar_operand(node: ir.Node) -> int | None:
    """Index of the scalar constant input of a binary op (None: it has none)."""
    for i, v in enumerate(node.inputs):
        c = const_array(v)
        if c is not None and c.size == 1:
            return i
    return None


class EqualizeConvPairsPass(RewritePass):
    """Cross-layer equalization of Conv -> Conv pairs with nothing in between.

    Output channel i of the first conv is divided by s_i and input channel i of the second
    multiplied by s_i, s_i = sqrt(r1_i / r2_i) (r: per-channel abs-max of the weights), so both
    convs see balanced per-channel ranges. Exact in FP32 (the pair is linear).
    """

    def _scales(self, c1: ir.Node, c2: ir.Node) -> np.ndarray | str:
        w1, w2 = const_array(c1.inputs[1]), const_array(c2.inputs[1])
        if w1 is None or w2 is None or _group(c1) != 1:
            return "weights not constant, or the first Conv is grouped"
        cout, groups2 = w1.shape[0], _group(c2)
        r1 = np.abs(w1.reshape(cout, -1)).max(1).astype(np.float64)
        if groups2 == cout and w2.shape[1] == 1:  # depthwise: input channel i is output channel i
            r2 = np.abs(w2.reshape(cout, -1)).max(1).astype(np.float64)
        elif groups2 == 1:
            r2 = np.abs(w2).max(axis=(0, 2, 3)).astype(np.float64)
        else:
            return "second Conv is grouped but not depthwise"
        return np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)

    def rewrite(self, model: ir.Model) -> int:
        b, pairs = GraphBuilder(model.graph), 0
        for c2 in [n for n in model.graph if n.op_type == "Conv"]:
            c1 = _producer(c2.inputs[0], "Conv")
            if c1 is None or _sole_reader(c1.outputs[0]) is not c2:
                continue
            s = self._scales(c1, c2)
            if isinstance(s, str):
                self.not_fired(node_name(c2), s)
                continue
            w1, w2 = const_array(c1.inputs[1]), const_array(c2.inputs[1])
            depthwise = _group(c2) == w1.shape[0]
            base = f"{node_name(c1)}_cle"
            c1.replace_input_with(1, b.initializer(f"{base}_w1", (w1 / s.reshape(-1, 1, 1, 1)).astype(np.float32)))
            if len(c1.inputs) > 2 and (b1 := const_array(c1.inputs[2])) is not None:
                c1.replace_input_with(2, b.initializer(f"{base}_b1", (b1 / s).astype(np.float32)))
            scale2 = s.reshape(-1, 1, 1, 1) if depthwise else s.reshape(1, -1, 1, 1)
            c2.replace_input_with(1, b.initializer(f"{base}_w2", (w2 * scale2).astype(np.float32)))
            pairs += 1
        RemoveUnusedNodesPass()(model)
        return pairs


def _smooth_site(conv: ir.Node) -> tuple[ir.Node, ir.Node, int, int] | None:
    """(Mul, Add, index of a in Mul, index of b in Add) when the Conv's input is Add(Mul(h, a), b), scalars a, b."""
    add = _producer(conv.inputs[0], "Add")
    mul = _producer(add.inputs[0], "Mul") if add is not None else None
    if mul is None or _sole_reader(add.outputs[0]) is not conv:
        return None
    ia, ib = _scalar_operand(mul), _scalar_operand(add)
    return (mul, add, ia, ib) if ia is not None and ib is not None else None


class SmoothConvInputsPass(RewritePass):
    """Equalize per-channel activation ranges into the next Conv (SmoothQuant-style, exact in FP32).

    For every Conv whose input is ``Add(Mul(h, a), b)`` with scalar constants a, b (PP-LCNetV3's
    affine after HardSwish), channel c of that input is divided by s_c and input channel c of the
    Conv's weights multiplied by s_c, s_c = max|x_c|^alpha / max|w_c|^(1 - alpha): a and b become
    per-channel vectors. ``skip`` lists those Mul/Add nodes, which must stay float (skip them) so
    that only the equalized Conv input is quantized.
    """

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]], alpha: float = 0.5) -> None:
        super().__init__()
        self.feeds, self.alpha, self.skip = list(feeds), alpha, []

    def _input_max(self, model: ir.Model, tensors: list[str]) -> dict[str, np.ndarray]:
        runner = ExposedRunner(ir.to_proto(model), tensors, self.feeds[0], 1 << 30)
        xmax: dict[str, np.ndarray] = {}
        for f in self.feeds:
            for name, a in runner.run(f):
                cur = np.abs(a).max(axis=(0, 2, 3)).astype(np.float64)
                xmax[name] = np.maximum(xmax.get(name, cur), cur)
        return xmax

    def _smooth(self, b: GraphBuilder, conv: ir.Node, site: tuple[ir.Node, ir.Node, int, int], x: np.ndarray) -> bool:
        mul, add, ia, ib = site
        w = const_array(conv.inputs[1]).astype(np.float64)
        depthwise = _group(conv) == w.shape[0] and w.shape[1] == 1
        if _group(conv) != 1 and not depthwise:
            self.not_fired(node_name(conv), "grouped Conv that is not depthwise")
            return False
        wmax = np.abs(w.reshape(w.shape[0], -1)).max(1) if depthwise else np.abs(w).max(axis=(0, 2, 3))
        s = np.where((x > 0) & (wmax > 0), x**self.alpha / np.maximum(wmax, 1e-12) ** (1 - self.alpha), 1.0)
        base, shape = node_name(conv), (1, -1, 1, 1)
        for node, i, tag in ((mul, ia, "a"), (add, ib, "b")):
            c = float(const_array(node.inputs[i]).reshape(()))
            node.replace_input_with(i, b.initializer(f"{base}_smooth_{tag}", (c / s).reshape(shape).astype(np.float32)))
        w_new = w * (s.reshape(-1, 1, 1, 1) if depthwise else s.reshape(1, -1, 1, 1))
        conv.replace_input_with(1, b.initializer(f"{base}_smooth_w", w_new.astype(np.float32)))
        self.skip += [node_name(mul), node_name(add)]
        return True

    def rewrite(self, model: ir.Model) -> int:
        sites = [(c, s) for c in model.graph if c.op_type == "Conv" and (s := _smooth_site(c)) is not None]
        if not sites:
            return 0
        xmax = self._input_max(model, [s[1].outputs[0].name for _, s in sites])
        b = GraphBuilder(model.graph)
        done = sum(self._smooth(b, conv, s, xmax[s[1].outputs[0].name]) for conv, s in sites)
        RemoveUnusedNodesPass()(model)
        return done


def equalize_conv_pairs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` after :class:`EqualizeConvPairsPass`, and the number of pairs equalized."""
    irm = ir.from_proto(model)
    pairs = rewrite_count(EqualizeConvPairsPass(), irm)
    return ir.to_proto(irm), pairs


def smooth_conv_inputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                       alpha: float = 0.5) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` after :class:`SmoothConvInputsPass`, and the Mul/Add nodes to leave float."""
    irm = ir.from_proto(model)
    smooth = SmoothConvInputsPass(feeds, alpha)
    smooth(irm)
    return ir.to_proto(irm), smooth.skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Cross-layer equalization of Conv pairs on a (preprocessed) model.")
    p.add_argument("model")
    p.add_argument("out")
    args = p.parse_args(argv)
    model, pairs = equalize_conv_pairs(load_model(args.model))
    save_model(model, args.out)
    print(f"equalized {pairs} Conv pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
