"""Read-only diagnostics: switch off parts of a QDQ model's quantization to see what costs accuracy.

``bypass_activations(model, keep)`` returns a copy of a QDQ model in which every
activation QuantizeLinear -> DequantizeLinear pair whose input tensor does *not*
satisfy ``keep`` is replaced by an Identity (that tensor stays float; weights stay
int8). ``keep=lambda t: False`` gives a weights-only model. ``float_weights`` puts
the original FP32 weights back (activations-only quantization). Both are onnx-ir
passes on slimq's graph builder (:class:`BypassActivationsPass`, :class:`FloatWeightsPass`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from slimq.core.ops import is_dequantize, is_quantize
from slimq.graph.builder import GraphBuilder
from slimq.graph.names import node_name
from slimq.graph.passes import RewritePass, rewrite_count
from slimq.io.model import load_model, save_model


def _dequantize_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if is_dequantize(n.op_type, n.domain)]


class BypassActivationsPass(RewritePass):
    """Replace the activation Q -> DQ pairs of tensors `keep` rejects by an Identity (they stay float)."""

    def __init__(self, keep: Callable[[str], bool]) -> None:
        super().__init__()
        self.keep = keep

    def rewrite(self, model: ir.Model) -> int:
        b, bypassed = GraphBuilder(model.graph), 0
        for dq in _dequantize_nodes(model):
            q = dq.inputs[0].producer()
            if q is None or not is_quantize(q.op_type, q.domain) or q.inputs[0].const_value is not None:
                continue  # a weight (constant input) or a DequantizeLinear of an initializer
            x = q.inputs[0]
            if self.keep(x.name):
                continue
            ident = b.node("Identity", [x], base=node_name(dq), outputs=[f"{x.name}_bypass"],
                           name=b.fresh(f"{node_name(dq)}_bypass"), after=dq)
            b.replace_uses(dq.outputs[0], ident.outputs[0], take_name=True)
            bypassed += 1
        RemoveUnusedNodesPass()(model)
        return bypassed


class FloatWeightsPass(RewritePass):
    """Make weight DequantizeLinear nodes output the original FP32 weights again.

    `fp32` holds the preprocessed FP32 initializers; weight DQ nodes are named ``<weight>_DequantizeLinear``."""

    def __init__(self, fp32: dict[str, ir.Value]) -> None:
        super().__init__()
        self.fp32 = fp32

    def rewrite(self, model: ir.Model) -> int:
        b, restored = GraphBuilder(model.graph), 0
        for dq in _dequantize_nodes(model):
            base = dq.name.removesuffix("_DequantizeLinear")
            if not dq.inputs[0].is_initializer() or base not in self.fp32:
                continue
            w = b.initializer(f"{base}_fp32", self.fp32[base].const_value.numpy())
            b.replace_uses(dq.outputs[0], w)
            restored += 1
        RemoveUnusedNodesPass()(model)
        return restored


def bypass_activations(model: onnx.ModelProto, keep: Callable[[str], bool]) -> onnx.ModelProto:
    """Copy of ``model`` with the activation Q/DQ pairs of tensors not kept replaced by Identity."""
    irm = ir.from_proto(model)
    rewrite_count(BypassActivationsPass(keep), irm)
    return ir.to_proto(irm)


def float_weights(model: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` whose weight DequantizeLinear nodes output the original FP32 weights of ``fp32``
    (the preprocessed FP32 model) again."""
    irm = ir.from_proto(model)
    rewrite_count(FloatWeightsPass(dict(ir.from_proto(fp32).graph.initializers)), irm)
    return ir.to_proto(irm)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Switch off activation (or weight) quantization of a QDQ model.")
    p.add_argument("int8")
    p.add_argument("out")
    p.add_argument("--keep", nargs="*", default=[], help="activation tensors whose Q/DQ stays (default: none)")
    p.add_argument("--float-weights", metavar="FP32", help="put the weights of this (preprocessed) FP32 model back")
    args = p.parse_args(argv)
    model = load_model(args.int8)
    if args.float_weights:
        model = float_weights(model, load_model(args.float_weights))
    else:
        model = bypass_activations(model, set(args.keep).__contains__)
    save_model(model, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
