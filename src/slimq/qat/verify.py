"""Checks that an exported QDQ ONNX model matches the PyTorch fake-quant model.

"One quantization step" of an output: when the model's output is produced by an activation
quantizer (the default: the last Linear/Conv output is quantized), both PyTorch and
onnxruntime return values on that quantizer's grid, so the step is its scale ``s`` and two
outputs "agree within one step" when ``|torch - ort| <= s`` (plus 1e-4 relative slack for
float rounding of ``q * s``). In eval mode the fake-quant model computes what the integer
kernels compute (:mod:`slimq.qat.modules`: int32 biases, the exact accumulator, QLinearConv's
float32 requantization multiplier, QuantizeLinear's division), so the two agree bit for bit where
onnxruntime fuses a QLinear kernel; ops it runs in float between Q/DQ (pooling, float-output layers)
may still round a tie the other way, a one-step move; anything larger is a real mismatch. When the output is not quantized (its producer was skipped or is a float op)
there is no grid in the output's units; the step is then defined as that of a symmetric int8
grid spanning the reference output, ``max|torch| / 127`` (rather than the scale of the last
quantized activation before the float op, which is in that op's input units).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from slimq.qat.model import QATModel, as_inputs, unwrap
from slimq.qat.quantizers import ActQuantizer


@dataclass(frozen=True)
class Agreement:
    """How closely ONNX outputs follow the PyTorch fake-quant model."""

    step: float
    output_quantized: bool
    fraction_within_step: float
    max_diff_steps: float
    num_values: int

    def ok(self, min_fraction: float = 0.999) -> bool:
        """True when at least ``min_fraction`` of outputs lie within one step."""
        return self.fraction_within_step >= min_fraction


def output_quantizer(qmodel: QATModel) -> ActQuantizer | None:
    """The activation quantizer producing the (single) model output, if any."""
    net = qmodel.net
    out_node = next(n for n in net.graph.nodes if n.op == "output")
    value = out_node.args[0]
    while isinstance(value, (tuple, list)) and value:  # torch.export graphs return a (flat) tuple
        value = value[0]
    if getattr(value, "op", None) == "call_module":
        module = net.get_submodule(value.target)
        if isinstance(module, ActQuantizer) and bool(module.initialized):
            return module
    return None


def ort_session(path: str | Path | onnx.ModelProto, optimized_path: str | Path | None = None,
                threads: int = 0) -> ort.InferenceSession:
    """A CPU onnxruntime session of a file or an in-memory model (optionally writing the optimized graph)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    source = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_run(path_or_session: str | Path | onnx.ModelProto | ort.InferenceSession,
            inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    """First output of the model for numpy inputs."""
    sess = path_or_session if isinstance(path_or_session, ort.InferenceSession) else ort_session(path_or_session)
    feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feed)[0]


def _first_output(out: Any) -> np.ndarray:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float().numpy()


def check_agreement(qmodel: nn.Module, onnx_path: str | Path | onnx.ModelProto, inputs: object,
                    chunk: int = 32) -> Agreement:
    """Compare PyTorch (eval mode) and onnxruntime outputs on the same inputs (a file or an in-memory model),
    ``chunk`` samples at a time (memory stays bounded on large sample sets)."""
    qm = unwrap(qmodel)
    tensors = as_inputs(inputs, "inputs")
    sess = onnx_path if isinstance(onnx_path, ort.InferenceSession) else ort_session(onnx_path)
    training = qm.training
    qm.eval()
    refs, gots = [], []
    try:
        for i in range(0, len(tensors[0]), chunk):
            part = tuple(t[i:i + chunk] for t in tensors)
            with torch.no_grad():
                refs.append(_first_output(qm(*part)))
            gots.append(ort_run(sess, tuple(t.detach().numpy() for t in part)))
    finally:
        qm.train(training)
    ref, got = np.concatenate(refs), np.concatenate(gots)
    quantizer = output_quantizer(qm)
    if quantizer is not None:
        step = float(quantizer.current_scale())
    else:
        step = max(float(np.abs(ref).max()) / 127.0, 1e-12)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    within = diff <= step * (1.0 + 1e-4)
    return Agreement(step, quantizer is not None, float(within.mean()), float(diff.max() / step), int(diff.size))


def ort_optimized_ops(onnx_path: str | Path) -> Counter:
    """Op types (``domain:op`` for non-default domains) in onnxruntime's optimized graph."""
    with tempfile.TemporaryDirectory(prefix="slimq-ort-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        ort_session(onnx_path, optimized_path=opt)
        model = onnx.load(str(opt))
    return Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in model.graph.node)
