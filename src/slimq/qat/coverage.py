"""How much of a prepared model's arithmetic QAT reaches: multiply-accumulates counted on the example inputs.

:func:`probe` runs the prepared graph once (eval mode, no gradients) and counts the MACs of every
convolution, transposed convolution, linear and matmul it executes, whether a module (also inside a
skipped or unsupported leaf module) or a functional call. A MAC is *int8-reachable* when QAT fake-quantizes
it: a QAT Conv/Linear module (quantized weight, quantized input), or a matmul whose two operands come
straight from activation quantizers. Everything else runs in float in the exported model.

The same pass is the prepared model's smoke test: an exception names the graph node that raised.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimq.core.errors import ModelLoadError
from slimq.qat.aten_ops import is_aten, onnx_op, packet
from slimq.qat.capture import module_paths
from slimq.qat.graph import MacOp
from slimq.qat.modules import QATConv, QATLinear
from slimq.qat.quantizers import ActQuantizer

_FUNCTIONS = {F.conv1d: "Conv", F.conv2d: "Conv", F.conv3d: "Conv", F.conv_transpose1d: "ConvTranspose",
              F.conv_transpose2d: "ConvTranspose", F.conv_transpose3d: "ConvTranspose", F.linear: "Gemm",
              torch.matmul: "MatMul", torch.mm: "MatMul", torch.bmm: "MatMul", operator.matmul: "MatMul"}
_METHODS = {"matmul": "MatMul", "mm": "MatMul", "bmm": "MatMul"}
_FLOAT_MODULES: dict[type, str] = {nn.Conv1d: "Conv", nn.Conv2d: "Conv", nn.Conv3d: "Conv",
                                   nn.ConvTranspose1d: "ConvTranspose", nn.ConvTranspose2d: "ConvTranspose",
                                   nn.ConvTranspose3d: "ConvTranspose", nn.Linear: "Gemm"}


def _conv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> int:
    return out.numel() * w[0].numel()  # every output element sums over Cin/g x kernel


def _conv_t(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> int:
    return x.numel() * w[0].numel()  # every input element spreads over Cout/g x kernel


def _gemm(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> int:
    return out.numel() * w.shape[-1]


def _matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> int:
    return out.numel() * a.shape[-1]


COUNTERS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], int]] = {
    "Conv": _conv, "ConvTranspose": _conv_t, "Gemm": _gemm, "MatMul": _matmul}


def _function_op(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return _METHODS.get(str(node.target))
    if node.op != "call_function":
        return None
    if is_aten(node):
        op = onnx_op(node)
        if packet(node) is torch.ops.aten.convolution and len(node.args) > 6 and node.args[6]:
            return "ConvTranspose"
        return op if op in COUNTERS and packet(node) is not torch.ops.aten.addmm else None
    return _FUNCTIONS.get(node.target)  # type: ignore[arg-type]


def _from_quantizer(gm: nn.Module, value: Any) -> bool:
    return (isinstance(value, fx.Node) and value.op == "call_module"
            and isinstance(gm.get_submodule(str(value.target)), ActQuantizer))


class _Probe(fx.Interpreter):
    """Runs the graph, remembering the current node and counting MACs (module hooks + functional calls)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.current: fx.Node | None = None
        self.ops: list[MacOp] = []

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        result = super().run_node(n)
        op = _function_op(n)
        if op is not None and isinstance(result, torch.Tensor) and len(n.args) >= 2:
            a, b = (self.env[x] if isinstance(x, fx.Node) else x for x in n.args[:2])
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                int8 = op == "MatMul" and all(_from_quantizer(self.module, x) for x in n.args[:2])
                paths = module_paths(n)
                name = f"{paths[-1]}:{n.name}" if paths else n.name
                self.ops.append(MacOp(name, op, COUNTERS[op](a, b, result), int8))
        return result

    def hook(self, path: str, op: str, int8: bool) -> Callable[..., None]:
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            w: Any = module.conv.weight if isinstance(module, QATConv) else \
                module.linear.weight if isinstance(module, QATLinear) else module.weight
            if isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
                self.ops.append(MacOp(path, op, COUNTERS[op](inputs[0], w, output), int8))
        return record


def _module_op(module: nn.Module) -> tuple[str, bool] | None:
    if isinstance(module, QATConv):
        return "Conv", True
    if isinstance(module, QATLinear):
        return "Gemm", True
    op = next((op for cls, op in _FLOAT_MODULES.items() if isinstance(module, cls)), None)
    return (op, False) if op is not None else None


def probe(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> list[MacOp]:
    """Run ``gm`` on ``example`` (eval mode) and return its MAC ops; failures name the node."""
    runner = _Probe(gm)
    handles = []
    inside_qat = {id(m.conv) for m in gm.modules() if isinstance(m, QATConv)}
    inside_qat |= {id(m.linear) for m in gm.modules() if isinstance(m, QATLinear)}
    for path, module in gm.named_modules():
        found = _module_op(module) if id(module) not in inside_qat else None
        if found is not None:
            handles.append(module.register_forward_hook(runner.hook(path, *found)))
    training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            runner.run(*example)
    except Exception as exc:
        where = runner.current.format_node() if runner.current is not None else "<start>"
        raise ModelLoadError(
            f"The QAT-prepared model fails on the example inputs at node: {where} ({type(exc).__name__}: {exc}). "
            f"Check the example inputs' shapes, or add the module to QATConfig.skip.") from exc
    finally:
        gm.train(training)
        for h in handles:
            h.remove()
    return runner.ops


__all__ = ["MacOp", "probe"]
