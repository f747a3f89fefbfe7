"""The FP32 reference of a QAT network: the same graph with fake quantization off.

It is the distillation teacher, the FP32 side of ``convert``'s report and of empirical bias correction.
Bias correction's shifts are added back: they compensate rounding that this network does not have.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import fx, nn

from slimq.qat.add_op import QATAdd
from slimq.qat.modules import QATConv, QATLinear, bind_input, bind_output
from slimq.qat.quantizers import ActQuantizer


class FloatAct(nn.Module):
    """Stand-in for an ActQuantizer in the FP32 reference: passes activations through."""

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        return x


def reference_network(net: fx.GraphModule, corrections: Mapping[str, torch.Tensor]) -> fx.GraphModule:
    """An eval-mode copy of ``net`` with fake quantization off and the bias ``corrections`` (parameter name ->
    amount subtracted) added back."""
    ref = copy.deepcopy(net).eval()
    with torch.no_grad():
        for name, shift in corrections.items():
            param = ref.get_parameter(name)
            param.add_(shift.to(param.device, param.dtype))
    for name, module in list(ref.named_modules()):
        if isinstance(module, (QATConv, QATLinear)):
            setattr(module, "weight_quant", nn.Identity())  # weights pass through unrounded
            bind_input(module, None)  # float bias, not the int32-rounded one
            bind_output(module, None)
        elif isinstance(module, (ActQuantizer, QATAdd)):
            parent, _, leaf = name.rpartition(".")
            plain = FloatAct() if isinstance(module, ActQuantizer) else module.export_module()
            setattr(ref.get_submodule(parent) if parent else ref, leaf, plain)
    return ref.eval()


__all__ = ["FloatAct", "reference_network"]
