"""QAT replacements for Conv/Conv+BN/Linear and their export-time (Q/DQ) counterparts.

Conv+BatchNorm follows the folding-aware scheme of Jacob et al. (2018, sec. 3.2) as in
PyTorch's ``ConvBn2d``: the weight fake-quantizer always sees the BN-folded weight
``w * gamma / sqrt(running_var + eps)``, so training quantizes exactly the weights that
get deployed. While BN statistics are live (training, not frozen), the convolution output
is divided back by the folding factor and passed through the real BatchNorm (batch
statistics, running-stat updates). Once frozen (``freeze_bn``) or in eval mode the module
computes ``conv(x, fq(w_folded)) + fq32(b_folded)``, which is exactly the exported graph.

Biases: integer kernels (onnxruntime's QLinearConv/QGemm) add an int32 bias
``round(b / (s_in * s_w))`` to the integer accumulator. Whenever a bias is used without
live BatchNorm, the QAT modules add that rounded bias (:func:`fake_quant_bias`, identity
gradient) and the export stores the same int32 values behind a DequantizeLinear, so the
PyTorch model, the QDQ graph and the integer kernels all add bit-identical biases. ``s_in``
is the scale of the activation quantizer feeding the module (bound by :func:`bind_input`).
Without this the float bias is rounded only in onnxruntime, which moves ~1 % of the
MobileNet logits by more than one output step.

Integer-exact evaluation: in eval mode, a module whose input and output grids are both known
(:func:`bind_input`, :func:`bind_output`) computes what onnxruntime's QLinearConv/QGemm compute, bit
for bit: the exact integer accumulator ``sum(x_q * w_q) + b_q`` (in float64), requantized as
``clamp(round_half_even(float32(acc) * M))`` with the float32 multiplier ``M = (s_in * s_w) / s_out``,
then scaled back to ``q * s_out`` (which the output quantizer leaves unchanged). A float convolution
rounds differently near ties, and deep int8 networks amplify such one-step flips layer after layer
(``scripts/qdq_divergence.py``); training keeps the float path (same values up to those ties).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from slimq.core.errors import ConfigError
from slimq.qat.qdq_op import dequantize_linear, quantize_dequantize
from slimq.qat.quantizers import (
    BIAS_LIMIT,
    ActQuantizer,
    WeightQuantizer,
    bias_scale,
    fake_quant_bias,
    quantize_bias,
    sync_mean_,
)

ConvType = nn.Conv1d | nn.Conv2d
BNType = nn.BatchNorm1d | nn.BatchNorm2d


def _channel_shape(dim: int, axis: int) -> tuple[int, ...]:
    shape = [1] * dim
    shape[axis] = -1
    return tuple(shape)


def _running_stats(bn: BNType) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's running mean and variance: the statistics folded into the conv weights."""
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"{type(bn).__name__} keeps no running statistics (track_running_stats=False), but QAT "
                          "folds BatchNorm with them; build it with track_running_stats=True.")
    return bn.running_mean, bn.running_var


class QATConv(nn.Module):
    """Conv1d/Conv2d with per-channel weight fake quantization and optional folded BatchNorm."""

    bn_frozen: torch.Tensor  # buffer
    input_quant: ActQuantizer | None  # plain attributes, see bind_input / bind_output
    output_quant: ActQuantizer | None

    def __init__(self, conv: ConvType, bn: BNType | None, weight_quant: WeightQuantizer) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.weight_quant = weight_quant
        self.register_buffer("bn_frozen", torch.tensor(False))
        weight_quant.init_scale(self.folded()[0])
        bind_input(self, None)
        bind_output(self, None)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias with the BatchNorm (running statistics) folded in."""
        w, b = self.conv.weight, self.conv.bias
        if self.bn is None:
            return w, b
        factor = self._bn_factor()
        w = w * factor.reshape(_channel_shape(w.dim(), 0))
        mean, _ = _running_stats(self.bn)
        b0 = b if b is not None else torch.zeros_like(mean)
        shift = self.bn.bias if self.bn.bias is not None else torch.zeros_like(mean)
        return w, (b0 - mean) * factor + shift

    def _bn_factor(self) -> torch.Tensor:
        assert self.bn is not None
        _, var = _running_stats(self.bn)
        inv_std = torch.rsqrt(var + self.bn.eps)
        return inv_std if self.bn.weight is None else self.bn.weight * inv_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is not None and self.training and not bool(self.bn_frozen):
            return self._forward_live_bn(x)
        w, b = self.folded()
        y = self.conv._conv_forward(x, _fq_weight(self, w, b), _sim_bias(self, b, w))
        return y if self.training else _integer_exact(self, x, y, w, b, self.conv._conv_forward)

    def _forward_live_bn(self, x: torch.Tensor) -> torch.Tensor:
        assert self.bn is not None
        factor = self._bn_factor()
        w = self.conv.weight * factor.reshape(_channel_shape(self.conv.weight.dim(), 0))
        y = self.conv._conv_forward(x, _fq_weight(self, w, self.folded()[1]), None)
        shape = _channel_shape(y.dim(), 1)
        # A channel with gamma = 0 (e.g. pruned) has zero folded weights; divide it by 1.
        y = y / torch.where(factor == 0, torch.ones_like(factor), factor).reshape(shape)
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(shape)
        y = self.bn(y)
        # Keep running statistics identical on every rank. Through ``.data`` because autograd
        # saved them for BatchNorm's backward (which does not read them in training mode).
        mean, var = _running_stats(self.bn)
        sync_mean_(mean.data)
        sync_mean_(var.data)
        return y

    def export_module(self) -> "QDQConv":
        """Inference copy: folded weights, pre-quantized, exported as Q/DQ."""
        with torch.no_grad():
            w, b = self.folded()
            scale = _weight_scale(self, w, b)
            w_q = _fq_weight(self, w, b)
        conv = copy.deepcopy(self.conv)
        conv.bias = None
        return QDQConv(conv, w_q.detach().clone(), scale, _export_bias(self, b, w))


class QATLinear(nn.Module):
    """Linear with per-output-channel weight fake quantization."""

    input_quant: ActQuantizer | None  # plain attributes, see bind_input / bind_output
    output_quant: ActQuantizer | None

    def __init__(self, linear: nn.Linear, weight_quant: WeightQuantizer) -> None:
        super().__init__()
        self.linear = linear
        self.weight_quant = weight_quant
        weight_quant.init_scale(linear.weight)
        bind_input(self, None)
        bind_output(self, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        y = F.linear(x, _fq_weight(self, w, b), _sim_bias(self, b, w))
        return y if self.training else _integer_exact(self, x, y, w, b, F.linear)

    def export_module(self) -> "QDQLinear":
        """Inference copy with pre-quantized weights, exported as Q/DQ."""
        with torch.no_grad():
            w = self.linear.weight
            scale = _weight_scale(self, w, self.linear.bias)
            w_q = _fq_weight(self, w, self.linear.bias)
        return QDQLinear(w_q.detach().clone(), scale, _export_bias(self, self.linear.bias, w))


QATLayer = QATConv | QATLinear


def bind_input(module: QATLayer, quantizer: ActQuantizer | None) -> None:
    """Tell ``module`` which activation quantizer produces its input (for the bias scale).

    Stored as a plain attribute, not a submodule: the quantizer belongs to the graph's
    quantizer container, and ``state_dict``/``deepcopy`` must see it once.
    """
    object.__setattr__(module, "input_quant", quantizer)


def bind_output(module: QATLayer, quantizer: ActQuantizer | None) -> None:
    """Tell ``module`` which activation quantizer alone quantizes its output (through at most a
    ReLU/clip that onnxruntime drops because the grid lies inside it), enabling integer-exact eval."""
    object.__setattr__(module, "output_quant", quantizer)


def _ready(q: ActQuantizer | None) -> bool:
    return q is not None and not q.calibrating and bool(q.initialized)


def _integer_exact(module: QATLayer, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                   op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``y`` replaced (forward only) by the integer kernels' result on the output grid, see the module doc."""
    out_q, in_q = module.output_quant, module.input_quant
    if not (_ready(out_q) and _ready(in_q)) or not isinstance(module.weight_quant, WeightQuantizer):
        return y
    assert out_q is not None and in_q is not None
    with torch.no_grad():
        s_in, s_out = in_q.current_scale(), out_q.current_scale()
        s_w = _weight_scale(module, w, b)
        shape = _channel_shape(w.dim(), 0)
        w_q = torch.round(_fq_weight(module, w, b) / s_w.reshape(shape))
        b_q = None if b is None else quantize_bias(b, bias_scale(s_in, s_w)).double()
        acc = op(torch.round(x / s_in).double(), w_q.double(), b_q).float()
        axis = 1 if isinstance(module, QATConv) else y.dim() - 1  # Linear: features last
        multiplier = (bias_scale(s_in, s_w) / s_out.float()).reshape(_channel_shape(y.dim(), axis))
        q = torch.clamp(torch.round(acc * multiplier), out_q.qmin, out_q.qmax)
        exact = q * s_out.float()
    return y + (exact - y).detach()


def _input_scale(module: QATLayer) -> torch.Tensor | None:
    q = module.input_quant
    if q is None or q.calibrating or not bool(q.initialized):
        return None
    return q.current_scale()


def _scale_floor(module: QATLayer, b: torch.Tensor | None) -> torch.Tensor | None:
    """Per-channel lower bound of the weight scale that keeps the int32 bias below BIAS_LIMIT.

    A channel whose folded weights are ~0 but whose bias is not (BatchNorm with gamma ~ 0: a constant
    channel) would get a tiny weight scale and ``|b| / (s_in * s_w)`` beyond int32; integer kernels
    then overflow their int32 accumulator while float QDQ does not. The floor keeps the bias exact
    to ``|b| / BIAS_LIMIT`` and leaves enough headroom for the accumulated products.
    """
    s_in = _input_scale(module)
    if b is None or s_in is None:
        return None
    return (b.detach().abs().float() / (s_in * BIAS_LIMIT)).float()


def _fq_weight(module: QATLayer, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The fake-quantized weight (identity when the quantizer is switched off for the FP32 reference)."""
    wq = module.weight_quant
    return wq(w, _scale_floor(module, b)) if isinstance(wq, WeightQuantizer) else wq(w)


def _weight_scale(module: QATLayer, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return module.weight_quant.current_scale(w, _scale_floor(module, b))


def _bias_scale(module: QATLayer, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """``s_in * s_w`` when the input grid is known, else None (bias stays float)."""
    s_in = _input_scale(module)
    if s_in is None or not isinstance(module.weight_quant, WeightQuantizer):
        return None
    return bias_scale(s_in, _weight_scale(module, w, b))


def _sim_bias(module: QATLayer, b: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor | None:
    if b is None:
        return None
    scale = _bias_scale(module, w, b)
    return b if scale is None else fake_quant_bias(b, scale)


def _export_bias(module: QATLayer, b: torch.Tensor | None, w: torch.Tensor) -> "ExportBias | None":
    if b is None:
        return None
    with torch.no_grad():
        scale = _bias_scale(module, w, b)
        if scale is None:
            return ExportBias(b.detach().float().clone(), None)
        return ExportBias(quantize_bias(b, scale).to(torch.int32), scale.contiguous())


class ExportBias(nn.Module):
    """A bias in export form: int32 values behind DequantizeLinear (scale ``s_in * s_w``),
    or a plain float tensor (``scale`` None: the module's input grid was unknown)."""

    values: torch.Tensor  # buffers
    scale: torch.Tensor | None

    def __init__(self, values: torch.Tensor, scale: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("values", values)
        self.register_buffer("scale", scale)

    def forward(self) -> torch.Tensor:
        if self.scale is None:
            return self.values
        zero = torch.zeros(self.scale.shape, dtype=torch.int32, device=self.scale.device)
        return dequantize_linear(self.values, self.scale, zero, 0)


def _weight_qdq(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # w already lies on the grid; the post-export pass folds this QuantizeLinear into an
    # int8 initializer.
    return quantize_dequantize(w, scale, torch.zeros(scale.shape, dtype=torch.int8, device=scale.device), 0)


class QDQConv(nn.Module):
    """Export form of :class:`QATConv`: constant quantized weight -> QuantizeLinear/DequantizeLinear."""

    weight_q: torch.Tensor  # buffers
    weight_scale: torch.Tensor

    def __init__(self, conv: ConvType, w_q: torch.Tensor, scale: torch.Tensor, bias: ExportBias | None) -> None:
        super().__init__()
        self.conv = conv
        del self.conv.weight
        self.register_buffer("weight_q", w_q)
        self.register_buffer("weight_scale", scale.contiguous())
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias()
        return self.conv._conv_forward(x, _weight_qdq(self.weight_q, self.weight_scale), b)


class QDQLinear(nn.Module):
    """Export form of :class:`QATLinear`."""

    weight_q: torch.Tensor  # buffers
    weight_scale: torch.Tensor

    def __init__(self, w_q: torch.Tensor, scale: torch.Tensor, bias: ExportBias | None) -> None:
        super().__init__()
        self.register_buffer("weight_q", w_q)
        self.register_buffer("weight_scale", scale.contiguous())
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias()
        return F.linear(x, _weight_qdq(self.weight_q, self.weight_scale), b)


class QDQAct(nn.Module):
    """Export form of :class:`ActQuantizer`: scale and zero point in the target's storage type."""

    scale: torch.Tensor  # buffers
    zero_point: torch.Tensor

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().float().reshape(()).clone())
        self.register_buffer("zero_point", zero_point)

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        return quantize_dequantize(x, self.scale, self.zero_point, 1)


def export_act(q: ActQuantizer, act_dtype: str) -> QDQAct:
    """Map a trained activation quantizer to its stored form (uint8 or int8) for ``act_dtype``.

    The training grid has zero point 0; storage shifts it: a signed grid in uint8 gets zero
    point 128, an unsigned grid in int8 gets -128.
    """
    if act_dtype == "uint8":
        zero = torch.tensor(0 if q.unsigned else 128, dtype=torch.uint8)
    else:
        zero = torch.tensor(-128 if q.unsigned else 0, dtype=torch.int8)
    return QDQAct(q.current_scale(), zero)
