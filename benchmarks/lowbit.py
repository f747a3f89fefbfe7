"""Helpers of the low-bit weight benchmarks: put other integer weights into a finished QDQ model.

slimq's static PTQ writes 8-bit weights. To measure W4A8 (or W6A8 ...) the benchmarks quantize at
W8A8 with :func:`slimq.quantize_static` (activation scales calibrated as usual, bias correction off)
and then replace every weight initializer behind a DequantizeLinear with the low-bit integers
(stored in int8, values within the low-bit range, e.g. [-7, 7]) and their scales; each bias is
re-quantized to int32 with the new weight scale (``s_in * s_w``). onnxruntime runs the result
with its int8 kernels, so the numbers are those of a real integer model whose weights happen to
use only 4 bits of range; a 4-bit deployment (packed INT4) computes the same values.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper as nh

from slimq.core import qmath

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def node_key(n: onnx.NodeProto) -> str:
    return n.name or n.output[0]


def rtn_weights(layers, qtype: qmath.QType, per_channel: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Round-to-nearest integers and symmetric abs-max scales per node (layers: slimq.static.adaround.find_layers)."""
    out = {}
    for lay in layers:
        qt = qmath.quantize_weight(lay.weight, qtype, lay.axis if per_channel else None)
        out[lay.node] = (qt.data, qt.scale)
    return out


def set_weights(qdq: onnx.ModelProto, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """A copy of `qdq` whose weight DequantizeLinear inputs hold `weights[node] = (integers, scale)`."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    done = set()
    for n in m.graph.node:
        key = node_key(n)
        if n.op_type not in WEIGHT_OPS or key not in weights:
            continue
        wdq = producer[n.input[1]]
        q, scale = weights[key]
        old_scale = nh.to_array(inits[wdq.input[1]]).astype(np.float64)
        _replace(inits[wdq.input[0]], np.asarray(q).astype(np.int8))
        _replace(inits[wdq.input[1]], np.asarray(scale, np.float32).reshape(old_scale.shape))
        if len(n.input) > 2 and n.input[2]:
            _requantize_bias(inits, producer[n.input[2]], old_scale, np.asarray(scale, np.float64))
        done.add(key)
    missing = set(weights) - done
    if missing:
        raise KeyError(f"no quantized weight layer named {sorted(missing)} in the QDQ model")
    return m


def _replace(t: onnx.TensorProto, a: np.ndarray) -> None:
    t.CopyFrom(nh.from_array(a, t.name))


def _requantize_bias(inits: dict, bdq: onnx.NodeProto, old_w_scale: np.ndarray, new_w_scale: np.ndarray) -> None:
    """int32 bias at scale s_in * s_w_new (bias scale and weight scale have the same shape: () or (C,))."""
    bq, bs = nh.to_array(inits[bdq.input[0]]).astype(np.float64), nh.to_array(inits[bdq.input[1]]).astype(np.float64)
    new_scale = (bs * new_w_scale.reshape(bs.shape) / old_w_scale.reshape(bs.shape)).astype(np.float32)
    q = np.clip(np.rint(bq * bs / np.broadcast_to(new_scale, bq.shape)), -2**31, 2**31 - 1).astype(np.int32)
    _replace(inits[bdq.input[0]], q)
    _replace(inits[bdq.input[1]], new_scale)
