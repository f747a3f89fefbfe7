"""SmoothQuant on calibration data: statistics, per-site alpha, and the rewritten FP32 model.

One pass of the FP32 model over the calibration batches collects, for every SmoothQuant site
(see :mod:`slimq.graph.passes.smoothquant`), the per-channel max |X| and a random subset of rows of
X. For each site the alpha with the lowest simulated int8 output error (per-tensor X, per-channel
W) is kept, or no smoothing at all when that is best or the gain is below ``min_gain``. The
statistics are taken on the original model; smoothing one site leaves every other site's input
unchanged, so they stay valid while the sites are rewritten one after another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from slimq.core import qmath
from slimq.core.errors import ConfigError
from slimq.core.ops import Role, op_info
from slimq.graph.passes.smoothquant import Site, apply_smoothing, choose_alpha, find_sites, smoothing_scales
from slimq.io.samples import load_samples
from slimq.io.spec import model_inputs
from slimq.runtime.capture import stream_tensors


@dataclass(frozen=True)
class SmoothQuantConfig:
    """Settings of SmoothQuant in static PTQ."""

    alpha: float | None = None  # None: searched per site among `alphas`
    alphas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    allow_mul: bool = True  # smooth sites that need a new (float) Mul
    allow_front_mul: bool = True  # ... including a Mul in front of the linear layers (nothing else absorbs 1/s)
    # ... even when X comes (through Relu/Clip) from a Conv/MatMul/Gemm: the Mul then sits between that
    # layer and its output quantization, and onnxruntime can no longer run the layer with an int8 output
    front_mul_after_linear: bool = False
    min_gain: float = 0.2  # keep a site only if it cuts the simulated error by this share
    max_rows: int = 4096  # rows of X kept per site for the alpha search
    batch_size: int = 8
    max_samples: int = 256
    memory_budget_mb: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SmoothQuant alpha must be in [0, 1] (or None to search), got {self.alpha}.")
        if not 0.0 <= self.min_gain < 1.0:
            raise ConfigError(f"min_gain must be in [0, 1), got {self.min_gain}.")


@dataclass(frozen=True)
class SiteReport:
    activation: str
    absorber: str
    readers: int
    new_mul: bool
    alpha: float | None  # None: left alone
    error_before: float  # simulated relative int8 output error, no smoothing
    error_after: float
    channel_ratio: float  # max / median of max|X_j| before smoothing

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _front_mul_ok(site: Site, config: SmoothQuantConfig) -> bool:
    if site.absorber != "mul":
        return True
    if not config.allow_front_mul:
        return False
    p = site.value.producer()
    while p is not None and op_info(p.op_type, p.domain).role is Role.FUSED_ACTIVATION and p.inputs:
        p = p.inputs[0].producer() if p.inputs[0] is not None else None
    return config.front_mul_after_linear or p is None or op_info(p.op_type, p.domain).weight is None


def site_statistics(model: onnx.ModelProto, tensors: list[str], batches, max_rows: int, budget_mb: int,
                    seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(max |x| per last-axis channel, up to `max_rows` random rows) of each tensor over all batches."""
    rng = np.random.default_rng(seed)
    absmax: dict[str, np.ndarray] = {}
    rows: dict[str, list[np.ndarray]] = {}
    for _, name, value in stream_tensors(model, tensors, batches, budget_mb):
        x = value.reshape(-1, value.shape[-1])
        m = np.abs(x).max(axis=0)
        absmax[name] = m if name not in absmax else np.maximum(absmax[name], m)
        rows.setdefault(name, []).append(x[rng.choice(len(x), min(len(x), max_rows), replace=False)])
    sampled = {}
    for name, parts in rows.items():
        all_rows = np.concatenate(parts)
        sampled[name] = all_rows[rng.choice(len(all_rows), min(len(all_rows), max_rows), replace=False)]
    return absmax, sampled


def _decide(site: Site, absmax: np.ndarray, rows: np.ndarray, cfg: SmoothQuantConfig, quant: dict) -> SiteReport:
    alphas = (cfg.alpha,) if cfg.alpha is not None else cfg.alphas
    alpha, errors = choose_alpha(rows, site.weights(), absmax, alphas, **quant)
    before = errors["none"]
    if alpha is not None and errors[alpha] > (1.0 - cfg.min_gain) * before:
        alpha = None
    ratio = float(absmax.max() / max(np.median(absmax), 1e-30))
    return SiteReport(site.activation, site.absorber, len(site.readers), site.needs_mul, alpha, before,
                      errors[alpha] if alpha is not None else before, ratio)


def smooth_model(model: onnx.ModelProto, calib_data, config: SmoothQuantConfig = SmoothQuantConfig(),
                 act_qtype: qmath.QType = qmath.UINT8, act_symmetric: bool = False,
                 weight_qtype: qmath.QType = qmath.INT8.narrow()) -> tuple[onnx.ModelProto, list[SiteReport]]:
    """The FP32 `model` with SmoothQuant applied where it helps, and one report per site considered.

    The integer types are those the static plan will use (x86: uint8 asymmetric activations, int8 weights).
    """
    irm = ir.from_proto(model)
    sites = [s for s in find_sites(irm) if (config.allow_mul or not s.needs_mul) and _front_mul_ok(s, config)]
    if not sites:
        return model, []
    samples = load_samples(calib_data, model_inputs(model))
    batches = samples.batches(range(min(len(samples), config.max_samples)), config.batch_size)
    absmax, rows = site_statistics(model, sorted({s.activation for s in sites}), batches, config.max_rows,
                                   config.memory_budget_mb, config.seed)
    quant = {"act_qtype": act_qtype, "act_symmetric": act_symmetric, "w_qtype": weight_qtype}
    reports = []
    for site in sites:
        rep = _decide(site, absmax[site.activation], rows[site.activation], config, quant)
        if rep.alpha is not None:
            apply_smoothing(irm, site, smoothing_scales(absmax[site.activation], site.weights(), rep.alpha))
        reports.append(rep)
    RemoveUnusedNodesPass()(irm)
    return ir.to_proto(irm), reports


def summary(reports: Sequence[SiteReport]) -> str:
    done = [r for r in reports if r.alpha is not None]
    muls = sum(r.new_mul for r in done)
    return (f"SmoothQuant: {len(done)} of {len(reports)} sites smoothed ({muls} with a new Mul); "
            f"alphas {sorted({r.alpha for r in done if r.alpha is not None})}")
