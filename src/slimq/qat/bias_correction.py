"""Bias correction during calibration: remove the mean output shift that weight rounding causes.

Static PTQ does the same (``StaticConfig.bias_correction``): rounding a layer's weights to the int8 grid
moves the mean of each output channel by ``E[conv(x, w_q - w)]``; over the calibration batches (with
float activations) that shift is measured per channel and subtracted from the bias. It matters most
for models converted without training (``slimq.quantize`` with a float model); training absorbs the
shift anyway. The correction goes into an existing parameter: the folded BatchNorm's ``bias`` or the
layer's own ``bias`` (a layer with neither is left as is), so checkpoints keep their keys. The shifts are
also recorded (``QATModel.bias_corrections``): the FP32 reference built from the QAT model
(:func:`slimq.qat.fidelity.float_network`, the default teacher of :func:`slimq.qat.distill`) adds them
back, since a float network with corrected biases is no longer the FP32 model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimq.qat.modules import QATConv, QATLinear, _fq_weight
from slimq.qat.quantizers import sync_mean_


def _weight_error(module: QATConv | QATLinear) -> torch.Tensor:
    if isinstance(module, QATConv):
        w, b = module.folded()
    else:
        w, b = module.linear.weight, module.linear.bias
    return _fq_weight(module, w, b) - w


def target_bias(module: QATConv | QATLinear) -> torch.Tensor | None:
    """The parameter the folded bias moves with one to one."""
    if isinstance(module, QATLinear):
        return module.linear.bias
    return module.bn.bias if module.bn is not None else module.conv.bias


def channel_sums(y: torch.Tensor, linear: bool) -> tuple[torch.Tensor, int]:
    """Per-output-channel sums of a layer output (channel dim 1 for convolutions, last for linears) and the
    count per channel."""
    flat = y.flatten(0, -2).transpose(0, 1) if linear else y.transpose(0, 1).flatten(1)
    return flat.double().sum(1), flat.shape[1]


@torch.no_grad()
def shift_bias(param: torch.Tensor, shift: torch.Tensor, name: str | None,
               record: dict[str, torch.Tensor] | None) -> None:
    """Subtract ``shift`` from the bias ``param``; add it to ``record[name]`` (cumulative) when both are given."""
    shift = shift.to(param.dtype)
    param.sub_(shift)
    if record is not None and name is not None:
        record[name] = record[name] + shift if name in record else shift.clone()


class BiasCorrection:
    """Forward hooks on every QAT Conv/Linear accumulating the per-channel output shift of weight rounding."""

    def __init__(self, net: nn.Module) -> None:
        self.names = {id(p): name for name, p in net.named_parameters()}
        self.sums: dict[nn.Module, torch.Tensor] = {}
        self.counts: dict[nn.Module, int] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in net.modules()
                        if isinstance(m, (QATConv, QATLinear)) and target_bias(m) is not None]

    @torch.no_grad()
    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0]
        err = _weight_error(module)  # type: ignore[arg-type]
        if isinstance(module, QATConv):
            shift = module.conv._conv_forward(x, err, None)
        else:
            shift = F.linear(x, err)
        sums, count = channel_sums(shift, not isinstance(module, QATConv))
        self.sums[module] = self.sums.get(module, 0) + sums
        self.counts[module] = self.counts.get(module, 0) + count

    @torch.no_grad()
    def apply(self, record: dict[str, torch.Tensor] | None = None) -> int:
        """Subtract each layer's mean shift (averaged over ranks) from its bias; returns the layers corrected.
        ``record``: adds each shift under the bias's parameter name (cumulative over calls)."""
        for module, total in self.sums.items():
            mean = sync_mean_((total / self.counts[module]).float())
            param = target_bias(module)  # type: ignore[arg-type]
            if param is not None:
                shift_bias(param, mean, self.names.get(id(param)), record)
        return len(self.sums)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


__all__ = ["BiasCorrection", "channel_sums", "shift_bias", "target_bias"]
