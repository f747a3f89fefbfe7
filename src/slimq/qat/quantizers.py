"""Fake quantizers: activation (moving_average_abs_max / PACT / LSQ) and per-channel weights.

All state that matters for export lives in buffers or parameters, so ``state_dict`` holds it
and a checkpoint loads with ``torch.load(weights_only=True)``.

Distributed training: whenever an activation statistic is measured (a training step of
the STE observer, the first batch of PACT/LSQ, calibration) the per-batch ``max|x|`` is
all-reduced with MAX over the default process group before it enters the moving average,
so every rank runs the same arithmetic on the same numbers and holds bit-identical scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from slimq.core.errors import CalibrationDataError
from slimq.core.observers import ObserverSettings, compute_range, get_algorithm, make_observer

MIN_SCALE = 1e-8
INT32_LIMIT = 2**31 - 128  # largest float32 below 2**31: int32 bias values stay in [-limit, limit]
BIAS_LIMIT = 2.0**30  # int32 biases stay below this, leaving headroom in the int32 accumulator


def distributed_world() -> int:
    """World size of the default process group (1 when not running distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def sync_max_(t: torch.Tensor) -> torch.Tensor:
    """In place: the element-wise maximum of ``t`` over all ranks (no-op on one process)."""
    if distributed_world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def sync_mean_(t: torch.Tensor) -> torch.Tensor:
    """In place: the mean of ``t`` over all ranks (identical bytes on every rank)."""
    world = distributed_world()
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(world)
    return t


def grid(bits: int, unsigned: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer range (qmin, qmax) of a grid with zero point 0."""
    if unsigned:
        return 0, 2**bits - 1
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if narrow else -qmax - 1), qmax


def _grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``factor`` (LSQ)."""
    return (x - x * factor).detach() + x * factor


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity gradient."""
    return (torch.round(x) - x).detach() + x


def fake_quant_ste(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round(x/scale), qmin, qmax) * scale``; gradient 1 inside the range, 0 outside."""
    zero = torch.zeros((), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_tensor_affine(x, scale.float().reshape(()), zero, qmin, qmax)


def fake_quant_exact(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round_half_even(x / scale)) * scale`` with a true division, as ONNX QuantizeLinear (and
    onnxruntime) computes it; ``torch.fake_quantize_*`` multiply by ``1 / scale`` instead, which rounds
    a few values in a million the other way. Gradient 1 inside the range, 0 outside."""
    s = scale.detach().float().reshape(())
    return torch.clamp(_round_ste(x / s), qmin, qmax) * s


def fake_quant_lsq(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, g: float) -> torch.Tensor:
    """LSQ (Esser et al. 2020): learned ``scale`` (broadcastable to x), gradient scaled by g."""
    s = _grad_scale(scale.clamp_min(MIN_SCALE), g)
    return _round_ste(torch.clamp(x / s, qmin, qmax)) * s


def fake_quant_pact(x: torch.Tensor, alpha: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """PACT (Choi et al. 2018): clip to the grid's range ``[qmin, qmax] * alpha/qmax``, then STE.

    ``alpha`` gets gradient +1 from elements clipped above and ``qmin/qmax`` from those below.
    Clipping exactly at the grid's ends makes the export a plain QuantizeLinear (saturation).
    """
    a = alpha.clamp_min(MIN_SCALE * qmax)
    clipped = torch.minimum(x, a)
    if qmin < 0:
        clipped = torch.maximum(clipped, a * (qmin / qmax))
    return fake_quant_ste(clipped, (a / qmax).detach(), qmin, qmax)


def bias_scale(input_scale: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """Scale of the int32 bias of a Conv/Gemm: ``s_in * s_w`` per channel, in float32.

    Exactly what onnxruntime's QLinearConv/QGemm expect (and what the export stores).
    """
    return (input_scale.detach().float() * weight_scale.detach().float()).float()


def quantize_bias(b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Integer-valued float tensor ``clamp(round_half_even(b / scale))`` in the int32 range."""
    return torch.clamp(torch.round(b.detach().float() / scale), -INT32_LIMIT, INT32_LIMIT)


def fake_quant_bias(b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int32 bias ``round(b / scale) * scale`` that integer kernels add; identity gradient.

    Written as ``q * scale + (b - b.detach())`` so the forward value is exactly ``q * scale``
    in float32, bit for bit what DequantizeLinear of the exported int32 bias gives.
    """
    return quantize_bias(b, scale) * scale + (b - b.detach())


CALIBRATION_ALGOS = ("avg", "abs_max", "hist", "mse", "KL", "emd")
# As static PTQ: tensors with fewer values per sample (logits, pooled features) are never clipped; their
# rare large values are the signal (the top class), not noise.
MIN_VALUES_TO_CLIP = 1024


class RangeCalibration:
    """What an activation quantizer gathers while :func:`slimq.qat.calibrate` runs.

    ``avg`` (the default, PaddleSlim's QAT initialisation): the mean over batches of the per-batch
    ``max|x|`` (each all-reduced with MAX across ranks). The other algorithms are static PTQ's
    (:mod:`slimq.core.observers`, e.g. ``hist``: the 99.99th percentile of ``|x|``) applied to this
    quantizer's grid (signed or unsigned); under DDP each rank computes its threshold and the ranks
    take the largest.
    """

    def __init__(self, algo: str, bits: int, unsigned: bool) -> None:
        self.algo = get_algorithm(algo)
        self.settings = ObserverSettings(levels=2**bits, symmetric=not unsigned, min_values_to_clip=MIN_VALUES_TO_CLIP)
        self.batch_max: list[torch.Tensor] = []
        self.observer = make_observer(self.algo, self.settings) if self.algo.name != "avg" else None

    def update(self, x: torch.Tensor, abs_max: torch.Tensor) -> None:
        self.batch_max.append(abs_max)
        if self.observer is not None:
            self.observer.update(x.detach().float().cpu().numpy())

    def threshold(self) -> torch.Tensor | None:
        """The calibrated range ``a`` of the grid ``[-a, a]`` (or ``[0, a]``); None when nothing was seen."""
        if not self.batch_max:
            return None
        if self.observer is None:
            return torch.stack(self.batch_max).mean()
        lo, hi = compute_range(self.observer, self.algo, self.settings)
        t = torch.tensor(float(max(-lo, hi, 0.0)), dtype=torch.float32)
        return sync_max_(torch.where(t > 0, t, torch.stack(self.batch_max).max()))


class ActQuantizer(nn.Module):
    """Per-tensor activation fake quantizer.

    ``forward(x, observe=True)``: with ``observe=False`` it only re-applies the current grid
    (used after max-pool/flatten/reshape, where values are already on that grid).
    Before its range is known (no calibration, no training step) it passes ``x`` through.
    """

    # buffers (register_buffer) and the variant's learned parameter, typed for nn.Module's __getattr__
    accum: torch.Tensor
    state: torch.Tensor
    initialized: torch.Tensor
    observer_enabled: torch.Tensor
    alpha: nn.Parameter  # pact only
    scale: nn.Parameter  # lsq only

    def __init__(self, variant: str, bits: int, unsigned: bool, moving_rate: float) -> None:
        super().__init__()
        self.variant = variant
        self.bits = bits
        self.unsigned = unsigned
        self.moving_rate = moving_rate
        self.qmin, self.qmax = grid(bits, unsigned)
        self.register_buffer("accum", torch.zeros(()))
        self.register_buffer("state", torch.zeros(()))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("observer_enabled", torch.tensor(True))
        if variant == "pact":
            self.alpha = nn.Parameter(torch.ones(()))
        elif variant == "lsq":
            self.scale = nn.Parameter(torch.ones(()))
        self.calibrating = False
        self._calib: RangeCalibration | None = None
        self.ceiling: float | None = None  # see cap_range

    def extra_repr(self) -> str:
        kind = "unsigned" if self.unsigned else "signed"
        return f"variant={self.variant}, bits={self.bits}, {kind} [{self.qmin}, {self.qmax}]"

    def range_max(self) -> torch.Tensor:
        """Detached upper end of the represented range (``qmax * scale``)."""
        return self.current_scale() * self.qmax

    def max_scale(self) -> float | None:
        """Largest float32 scale whose grid top ``qmax * scale`` (float32) stays within the ceiling."""
        if self.ceiling is None:
            return None
        s = np.float32(self.ceiling / self.qmax)
        while np.float32(s * np.float32(self.qmax)) > self.ceiling:
            s = np.nextafter(s, np.float32(0))
        return float(s)

    def _capped(self, scale: torch.Tensor) -> torch.Tensor:
        cap = self.max_scale()
        return scale if cap is None else scale.clamp_max(cap)

    def current_scale(self) -> torch.Tensor:
        """Detached scale of the grid now in use."""
        if self.variant == "pact":
            scale = (self.alpha.detach().clamp_min(MIN_SCALE * self.qmax) / self.qmax).float()
        elif self.variant == "lsq":
            scale = self.scale.detach().clamp_min(MIN_SCALE).float()
        else:
            scale = (self.accum / self.state.clamp_min(1e-12) / self.qmax).clamp_min(MIN_SCALE)
        return self._capped(scale)

    def _batch_abs_max(self, x: torch.Tensor) -> torch.Tensor:
        cur = x.detach().abs().amax().float().reshape(())
        # NaN/Inf become +Inf before the all-reduce so that every rank raises, none hangs.
        cur = sync_max_(torch.where(torch.isfinite(cur), cur, torch.full_like(cur, math.inf)))
        if not torch.isfinite(cur):
            raise CalibrationDataError(
                "An activation contains NaN or Inf; check the input data and the learning rate."
            )
        return cur

    def _set_range(self, abs_max: torch.Tensor) -> None:
        """Initialise every variant's range from an abs-max statistic."""
        with torch.no_grad():
            self.accum.copy_(abs_max)
            self.state.fill_(1.0)
            if self.variant == "pact":
                self.alpha.copy_(abs_max.clamp_min(MIN_SCALE * self.qmax))
            elif self.variant == "lsq":
                self.scale.copy_((abs_max / self.qmax).clamp_min(MIN_SCALE))
            self.initialized.fill_(True)

    def _ema_live(self) -> bool:
        """The moving average still updates (STE variant, observer not frozen)."""
        return self.variant == "ste" and bool(self.observer_enabled)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        cur = self._batch_abs_max(x)
        if not bool(self.initialized):
            self._set_range(cur)
        elif self._ema_live():
            # PaddleSlim moving_average_abs_max: bias-corrected exponential moving average.
            self.accum.mul_(self.moving_rate).add_(cur)
            self.state.mul_(self.moving_rate).add_(1.0)

    def start_calibration(self, algo: str = "avg") -> None:
        """Gather range statistics (activations pass through unchanged) until finish_calibration."""
        self.calibrating, self._calib = True, RangeCalibration(algo, self.bits, self.unsigned)

    def finish_calibration(self) -> bool:
        """Set the range from what was gathered (see :class:`RangeCalibration`); False if nothing was."""
        calib, self.calibrating, self._calib = self._calib, False, None
        threshold = calib.threshold() if calib is not None else None
        if threshold is None:
            return False
        self._set_range(threshold)
        return True

    def cap_range(self, ceiling: float) -> None:
        """Never let the grid's top ``qmax * scale`` exceed ``ceiling`` (a ReLU6's 6): values above
        cannot occur, and onnxruntime drops a Clip before QuantizeLinear only when the grid lies inside
        the clip range."""
        self.ceiling = float(ceiling)

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        if self.calibrating:
            if observe and self._calib is not None:
                self._calib.update(x, self._batch_abs_max(x))
            return x
        initialized = bool(self.initialized)
        if self.training and observe and (not initialized or self._ema_live()):
            self._observe(x)
        if not bool(self.initialized):
            return x
        if not self.training:  # evaluation: exactly the exported QuantizeLinear + DequantizeLinear
            return fake_quant_exact(x, self.current_scale(), self.qmin, self.qmax)
        cap = self.max_scale()
        if self.variant == "pact":
            alpha = self.alpha if cap is None else self.alpha.clamp_max(cap * self.qmax)
            return fake_quant_pact(x, alpha, self.qmin, self.qmax)
        if self.variant == "lsq":
            g = 1.0 / math.sqrt(max(x.numel(), 1) * self.qmax)
            return fake_quant_lsq(x, self._capped(self.scale), self.qmin, self.qmax, g)
        return fake_quant_ste(x, self.current_scale(), self.qmin, self.qmax)


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric weight fake quantizer (axis 0), integers in [-qmax, qmax].

    STE/PACT: ``scale_c = max|w_c| / qmax`` recomputed every call (no gradient to the scale).
    LSQ: learned per-channel scale, initialised by :meth:`init_scale` from the weights.
    """

    scale: nn.Parameter  # lsq only

    def __init__(self, variant: str, bits: int, channels: int) -> None:
        super().__init__()
        self.variant = variant
        self.bits = bits
        self.qmin, self.qmax = grid(bits, unsigned=False, narrow=True)
        if variant == "lsq":
            self.scale = nn.Parameter(torch.ones(channels))

    def extra_repr(self) -> str:
        return f"variant={self.variant}, per-channel [{self.qmin}, {self.qmax}]"

    def abs_max_scale(self, w: torch.Tensor) -> torch.Tensor:
        """Per-channel abs-max scale of ``w`` (detached)."""
        return (w.detach().abs().flatten(1).amax(1) / self.qmax).clamp_min(MIN_SCALE).float()

    @torch.no_grad()
    def init_scale(self, w: torch.Tensor) -> None:
        """LSQ: start the learned scale at the abs-max scale of ``w``."""
        if self.variant == "lsq":
            self.scale.copy_(self.abs_max_scale(w))

    def current_scale(self, w: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
        """Detached per-channel scale used for ``w`` (at least ``floor``, see the QAT modules' bias)."""
        if self.variant == "lsq":
            scale = self.scale.detach().clamp_min(MIN_SCALE).float()
        else:
            scale = self.abs_max_scale(w)
        return scale if floor is None else torch.maximum(scale, floor)

    def forward(self, w: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
        shape = (-1,) + (1,) * (w.dim() - 1)
        if self.variant == "lsq":
            g = 1.0 / math.sqrt(max(w[0].numel(), 1) * self.qmax)
            scale = self.scale if floor is None else torch.maximum(self.scale, floor)
            return fake_quant_lsq(w, scale.reshape(shape), self.qmin, self.qmax, g)
        scale = self.current_scale(w, floor)
        zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, self.qmin, self.qmax)
