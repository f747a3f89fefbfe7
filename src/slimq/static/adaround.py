"""AdaRound (Nagel et al. 2020): learn whether each weight rounds up or down, one layer at a time.

Round-to-nearest minimises each weight's own error, not the layer's output error. AdaRound keeps
the scale fixed and learns, per weight, a soft rounding ``h(V)`` in [0, 1] between ``floor(w/s)``
and ``floor(w/s) + 1`` that minimises ``|| f(W x) - f(W~ x) ||^2`` on the layer's real inputs
(``f``: the ReLU/Clip fused after the layer, if any), plus a regulariser that drives every
``h`` to 0 or 1 as its exponent anneals from 20 to 2. The result is an ordinary integer weight
tensor for the given scales: the QDQ format does not change.

Inputs come from the FP32 model run by onnxruntime over the calibration data (not from the
partly quantized model). Convolutions are unfolded into patch rows and a random subset of rows
is kept per batch, so memory is bounded by ``max_rows`` per layer. The total time budget (input
capture included) is shared by the layers: each gets what is left, split evenly over the layers
still to do, and stops at that time or at ``iters`` iterations, fully annealed either way. A layer whose learned rounding does not beat round-to-nearest on the rows keeps RTN.
Conv (2-D, explicit pads), Gemm (alpha = 1, no transA) and MatMul with a 2-D constant weight.

Needs PyTorch (``pip install 'slimq[qat]'``); runs on the CPU.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from slimq.core import qmath
from slimq.core.errors import ConfigError
from slimq.core.ops import MacKind, Role, input_saturation, op_info
from slimq.graph.names import node_name, value_name
from slimq.io.samples import load_samples
from slimq.io.spec import model_inputs
from slimq.runtime.capture import stream_tensors

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional dependency
    raise ConfigError("AdaRound needs PyTorch: pip install 'slimq[qat]' (CPU wheels are enough).") from None

_ZETA, _GAMMA = 1.1, -0.1  # rectified sigmoid stretch (paper's values)


@dataclass(frozen=True)
class AdaRoundConfig:
    """Settings of AdaRound; loss, regulariser and annealing follow the paper and BRECQ's implementation."""

    qtype: qmath.QType = qmath.INT8.narrow()
    per_channel: bool = True
    max_rows: int = 4096  # input rows (conv positions or tokens) kept per layer
    iters: int = 1000  # upper bound per layer; the time budget may allow fewer
    time_budget_s: float = 300.0  # all layers together
    batch_rows: int = 512
    lr: float = 1e-2  # the paper: 1e-3 for 10k iterations; 1e-2 reaches more in a CPU budget
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2  # share of iterations without the rounding regulariser
    batch_size: int = 32  # calibration samples per onnxruntime run
    max_samples: int = 256
    memory_budget_mb: int = 1024
    sequential: bool = True  # later layers see the rounded earlier ones (the paper's asymmetric loss)
    threads: int = 1  # torch threads while optimising (the per-layer problems are small)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_rows", "iters", "batch_rows", "batch_size", "max_samples", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"AdaRoundConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.time_budget_s <= 0:
            raise ConfigError(f"AdaRoundConfig.time_budget_s must be > 0, got {self.time_budget_s}.")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"AdaRoundConfig.warmup must be in [0, 1), got {self.warmup}.")


@dataclass(frozen=True)
class RoundedWeight:
    """Integer weights of one layer (stored one per int8 for 4-bit types) with their scales."""

    node: str
    tensor: str
    q: np.ndarray
    scale: np.ndarray
    axis: int | None
    qtype: qmath.QType
    mse_rtn: float  # layer output MSE on the captured rows, round-to-nearest
    mse: float  # the same with the returned rounding
    iterations: int
    adaround: bool  # False: the learned rounding was not better, q is round-to-nearest

    def dequantized(self) -> np.ndarray:
        return qmath.dequantize(self.q, self.scale, np.zeros_like(self.scale, np.int64), self.axis)


@dataclass
class _Layer:
    """A weight layer in canonical form: out[p, g, o] = sum_k rows[p, g, k] * w[g, o, k] + bias[g, o]."""

    node: str
    tensor: str
    activation: str
    op_type: str
    weight: np.ndarray  # original layout
    axis: int  # output-channel axis of `weight`
    bias: np.ndarray | None
    clamp: tuple[float, float] | None
    conv: dict | None = None  # group, kernel, pads, strides, dilations

    def canonical(self, w: np.ndarray) -> np.ndarray:
        if self.conv is None:
            return np.moveaxis(w, self.axis, 0).reshape(1, w.shape[self.axis], -1)
        g = self.conv["group"]
        return w.reshape(g, w.shape[0] // g, -1)

    def original(self, wc: np.ndarray) -> np.ndarray:
        if self.conv is None:
            return np.moveaxis(wc.reshape(np.moveaxis(self.weight, self.axis, 0).shape), 0, self.axis)
        return wc.reshape(self.weight.shape)

    def rows(self, x: np.ndarray) -> np.ndarray:
        """(positions, groups, K) input rows of this layer for activation batch `x`."""
        if self.conv is None:
            return x.reshape(-1, 1, x.shape[-1])
        c = self.conv
        t = torch.nn.functional.pad(torch.from_numpy(np.ascontiguousarray(x, np.float32)), c["pads"])
        cols = torch.nn.functional.unfold(t, c["kernel"], dilation=c["dilations"], stride=c["strides"])
        k = cols.shape[1] // c["group"]
        return cols.transpose(1, 2).reshape(-1, c["group"], k).numpy()


def _attr(n: ir.Node, name: str, default: Any) -> Any:
    return n.attributes[name].value if name in n.attributes else default


def _clamp(n: ir.Node) -> tuple[float, float] | None:
    """Bounds of the ReLU/Clip that alone reads `n`'s output (fused into it by the QDQ model)."""
    uses = list(n.outputs[0].uses())
    if len(uses) != 1 or n.outputs[0].is_graph_output():
        return None
    act = uses[0].node
    return input_saturation(act) if op_info(act.op_type, act.domain).role is Role.FUSED_ACTIVATION else None


def _conv_attrs(n: ir.Node, w: np.ndarray) -> dict | None:
    if w.ndim != 4 or _attr(n, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    pads = list(_attr(n, "pads", [0, 0, 0, 0]))  # ONNX: top, left, bottom, right -> torch: left, right, top, bottom
    return {"group": int(_attr(n, "group", 1)), "kernel": tuple(w.shape[2:]),
            "pads": (pads[1], pads[3], pads[0], pads[2]), "strides": tuple(_attr(n, "strides", [1, 1])),
            "dilations": tuple(_attr(n, "dilations", [1, 1]))}


def _const(v: ir.Value | None) -> np.ndarray | None:
    return v.const_value.numpy() if v is not None and v.const_value is not None else None


_LAYER_MACS = (MacKind.CONV, MacKind.MATMUL)  # Conv, Gemm, MatMul (not ConvTranspose)


def _layer(n: ir.Node) -> _Layer | None:
    info = op_info(n.op_type, n.domain)  # the op table's facts: inputs, weight axes, bias, kind of MAC
    weight, mac = info.weight, info.mac
    if n.domain not in ("", "ai.onnx") or weight is None or mac is None or mac.kind not in _LAYER_MACS:
        return None
    if len(n.inputs) <= max(weight.input, mac.a_input):
        return None
    wv, x = n.inputs[weight.input], n.inputs[mac.a_input]
    w = _const(wv)
    if wv is None or w is None or w.dtype != np.float32 or x is None or x.const_value is not None:
        return None
    bi = info.bias_input
    b = _const(n.inputs[bi]) if bi is not None and len(n.inputs) > bi else None
    name, tensor, act = node_name(n), value_name(wv), value_name(x)
    if mac.kind is MacKind.CONV:
        conv = _conv_attrs(n, w)  # a 4-D weight, so its channel axis is defined
        return _Layer(name, tensor, act, n.op_type, w, weight.axes(n, w.ndim)[0], b, _clamp(n), conv) if conv else None
    if w.ndim != 2 or mac.a_transposed(n) or _attr(n, "alpha", 1.0) != 1.0:
        return None
    axis = weight.axes(n, w.ndim)[0]
    bias = b.reshape(-1) * float(_attr(n, "beta", 1.0)) if b is not None and b.size == w.shape[axis] else None
    return _Layer(name, tensor, act, n.op_type, w, axis, bias, _clamp(n) if bias is not None else None)


def find_layers(model: onnx.ModelProto, nodes: Iterable[str] | None = None) -> list[_Layer]:
    """The layers AdaRound can optimise (optionally only the named nodes)."""
    wanted = set(nodes) if nodes is not None else None
    layers = [lay for n in ir.from_proto(model).graph if (lay := _layer(n)) is not None]
    return [lay for lay in layers if wanted is None or lay.node in wanted]


def _pick(n: int, k: int, seed: int, batch: int, node: str) -> np.ndarray:
    """The rows kept of one batch: the same for the FP32 and the partly rounded model."""
    rng = np.random.default_rng([seed, batch, zlib.crc32(node.encode())])
    return np.sort(rng.choice(n, min(k, n), replace=False))


def capture_rows(model: onnx.ModelProto, layers: list[_Layer], batches: list[dict[str, np.ndarray]],
                 max_rows: int, budget_mb: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random subset of up to `max_rows` input rows per layer, spread evenly over the batches."""
    per_batch = -(-max_rows // max(1, len(batches)))
    by_act: dict[str, list[_Layer]] = {}
    for lay in layers:
        by_act.setdefault(lay.activation, []).append(lay)
    parts: dict[str, list[np.ndarray]] = {lay.node: [] for lay in layers}
    for b, name, value in stream_tensors(model, sorted(by_act), batches, budget_mb):
        for lay in by_act[name]:
            rows = lay.rows(value)
            parts[lay.node].append(rows[_pick(len(rows), per_batch, seed, b, lay.node)])
    return {k: np.concatenate(v)[:max_rows] for k, v in parts.items() if v}


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)


class _Problem:
    """One layer's reconstruction problem in torch (canonical layout)."""

    def __init__(self, lay: _Layer, rows: np.ndarray, scale: np.ndarray, qtype: qmath.QType,
                 rows_in: np.ndarray | None = None) -> None:
        w = torch.from_numpy(lay.canonical(lay.weight).astype(np.float32))
        s = np.asarray(scale, np.float32)
        s = s.reshape(w.shape[:2]) if s.size > 1 else np.broadcast_to(s.reshape(()), w.shape[:2])
        self.s = torch.from_numpy(np.ascontiguousarray(s)).unsqueeze(-1)
        self.floor = torch.floor(w / self.s)
        self.nearest = (torch.round(w / self.s) - self.floor).clamp(0, 1)
        self.qmin, self.qmax = qtype.qmin, qtype.qmax
        to_t = lambda r: torch.from_numpy(np.ascontiguousarray(r.transpose(1, 0, 2), np.float32))  # noqa: E731
        b = np.zeros(w.shape[:2], np.float32) if lay.bias is None else lay.bias.reshape(w.shape[:2])
        self.b, self.clamp = torch.from_numpy(b.astype(np.float32)).unsqueeze(1), lay.clamp
        self.target = self.forward(w, to_t(rows))  # FP32 output on FP32 inputs
        self.x = to_t(rows if rows_in is None else rows_in)  # (G, P, K) inputs the rounded layer will see
        rest = (w / self.s - self.floor).clamp(1e-4, 1 - 1e-4)
        p = ((rest - _GAMMA) / (_ZETA - _GAMMA)).clamp(1e-4, 1 - 1e-4)
        self.v = torch.log(p / (1 - p)).requires_grad_(True)

    def forward(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(G, P, O) layer outputs (after the fused activation) for rows x (G, P, K)."""
        y = torch.bmm(x, w.transpose(1, 2)) + self.b
        return y.clamp(*self.clamp) if self.clamp is not None else y

    def weight(self, h: torch.Tensor) -> torch.Tensor:
        return self.s * torch.clamp(self.floor + h, self.qmin, self.qmax)

    def mse(self, h: torch.Tensor) -> float:
        with torch.no_grad():
            return float(((self.forward(self.weight(h), self.x) - self.target) ** 2).mean())


def _step(prob: _Problem, opt: torch.optim.Optimizer, idx: torch.Tensor, beta: float | None, reg: float) -> None:
    h = _h(prob.v)
    pred = prob.forward(prob.weight(h), prob.x.index_select(1, idx))
    loss = ((pred - prob.target.index_select(1, idx)) ** 2).sum(dim=(0, 2)).mean()
    if beta is not None:
        loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _beta(progress: float, cfg: AdaRoundConfig) -> float | None:
    """None during warm-up, then the regulariser exponent annealed (cosine) from beta[0] to beta[1]."""
    if progress < cfg.warmup:
        return None
    frac = (progress - cfg.warmup) / (1 - cfg.warmup)
    return cfg.beta[1] + 0.5 * (cfg.beta[0] - cfg.beta[1]) * (1 + math.cos(math.pi * min(frac, 1.0)))


def optimize_layer(lay: _Layer, rows: np.ndarray, scale: np.ndarray, cfg: AdaRoundConfig, budget_s: float,
                   rows_in: np.ndarray | None = None) -> tuple[np.ndarray, float, float, int]:
    """(canonical integer weights, RTN MSE, returned MSE, iterations) for one layer.

    `rows` are FP32 inputs (they give the target), `rows_in` the inputs the rounded layer will see
    (default: the same). Progress, which drives warm-up and annealing, is the larger of the
    iteration and time fractions: a layer stops at `cfg.iters` or `budget_s`, fully annealed.
    """
    prob = _Problem(lay, rows, scale, cfg.qtype, rows_in)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam([prob.v], lr=cfg.lr)
    n, it, start, progress = rows.shape[0], 0, time.perf_counter(), 0.0
    while progress < 1.0:
        idx = torch.randint(0, n, (min(cfg.batch_rows, n),), generator=gen)
        _step(prob, opt, idx, _beta(progress, cfg), cfg.reg_weight)
        it += 1
        progress = max(it / cfg.iters, (time.perf_counter() - start) / budget_s)
    hard = (prob.v.detach() >= 0).float()
    mse_rtn, mse = prob.mse(prob.nearest), prob.mse(hard)
    best = hard if mse < mse_rtn else prob.nearest
    q = torch.clamp(prob.floor + best, prob.qmin, prob.qmax).numpy().astype(np.int64)
    return q, mse_rtn, min(mse, mse_rtn), it


class _Run:
    """One AdaRound run: FP32 rows of every layer, and a copy of the model whose rounded layers
    carry their dequantized weights (the inputs of later layers, with ``sequential``)."""

    def __init__(self, model: onnx.ModelProto, layers: list[_Layer], batches: list, cfg: AdaRoundConfig):
        self.layers, self.batches, self.cfg = layers, batches, cfg
        self.rows = capture_rows(model, layers, batches, cfg.max_rows, cfg.memory_budget_mb, cfg.seed)
        self.current = onnx.ModelProto()
        self.current.CopyFrom(model)
        self.inits = {t.name: t for t in self.current.graph.initializer}
        self.rounded = 0

    def inputs(self, lay: _Layer) -> np.ndarray | None:
        if not self.cfg.sequential or not self.rounded:
            return None
        c = self.cfg
        return capture_rows(self.current, [lay], self.batches, c.max_rows, c.memory_budget_mb, c.seed)[lay.node]

    def round(self, lay: _Layer, scale: np.ndarray, axis: int | None, budget_s: float) -> RoundedWeight:
        c = self.cfg
        q, mse_rtn, mse, iters = optimize_layer(lay, self.rows[lay.node], scale, c, budget_s, self.inputs(lay))
        r = RoundedWeight(lay.node, lay.tensor, lay.original(q).astype(c.qtype.np_dtype), scale, axis, c.qtype,
                          mse_rtn, mse, iters, mse < mse_rtn)
        if lay.tensor in self.inits:
            self.inits[lay.tensor].CopyFrom(onnx.numpy_helper.from_array(r.dequantized(), lay.tensor))
        self.rounded += 1
        return r


def _scale(lay: _Layer, cfg: AdaRoundConfig, scales: dict[str, np.ndarray] | None) -> tuple[np.ndarray, int | None]:
    axis = lay.axis if cfg.per_channel else None
    if scales is not None and lay.node in scales:
        return np.asarray(scales[lay.node], np.float32), axis
    return qmath.quantize_weight(lay.weight, cfg.qtype, axis).scale, axis


def adaround(model: onnx.ModelProto, calib_data: object, config: AdaRoundConfig = AdaRoundConfig(),
             nodes: Iterable[str] | None = None,
             scales: dict[str, np.ndarray] | None = None) -> dict[str, RoundedWeight]:
    """Learned rounding of every supported layer of the FP32 `model`, keyed by node name.

    calib_data: anything :func:`slimq.io.samples.load_samples` accepts. `scales[node]` overrides the
    default symmetric abs-max scale (per output channel with ``config.per_channel``).
    """
    samples = load_samples(calib_data, model_inputs(model))
    batches = list(samples.batches(range(min(len(samples), config.max_samples)), config.batch_size))
    return adaround_batches(model, batches, config, nodes, scales)


def adaround_batches(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]],
                     config: AdaRoundConfig = AdaRoundConfig(), nodes: Iterable[str] | None = None,
                     scales: dict[str, np.ndarray] | None = None) -> dict[str, RoundedWeight]:
    """:func:`adaround` on ready feed batches (static PTQ passes its calibration batches)."""
    nodes = list(nodes) if nodes is not None else None
    layers = find_layers(model, nodes)
    if not layers:
        raise ConfigError("AdaRound found no Conv/Gemm/MatMul layer with a constant float32 weight"
                          + (f" among nodes {sorted(nodes)[:8]}." if nodes is not None else "."))
    deadline = time.perf_counter() + config.time_budget_s
    run = _Run(model, layers, batches, config)
    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        for i, lay in enumerate(layers):
            share = _share(deadline, len(layers) - i, len(layers), config)
            out[lay.node] = run.round(lay, *_scale(lay, config, scales), share)
    finally:
        torch.set_num_threads(threads)
    return out


def _share(deadline: float, layers_left: int, layers: int, cfg: AdaRoundConfig) -> float:
    """Seconds for the next layer: what is left of the budget (input capture included), split evenly over the
    layers left; at least a twentieth of an even share, so a late layer still anneals (and keeps
    round-to-nearest if that is not better)."""
    return max((deadline - time.perf_counter()) / layers_left, 0.05 * cfg.time_budget_s / layers)
