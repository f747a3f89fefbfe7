"""Tiny models written as ONNX text, with deterministic weights, for tests and examples."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import onnx.parser

_CONV_NET = """
<ir_version: 8, opset_import: ["" : {opset}]>
conv_net (float[N, 3, 16, 16] input) => (float[N, 10] logits) {{
    c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (input, w1, b1)
    bn1 = BatchNormalization (c1, bn_scale, bn_bias, bn_mean, bn_var)
    r1 = Relu (bn1)
    p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
    c2 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (p1, w2, b2)
    r2 = Clip (c2, clip_min, clip_max)
    c3 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (r2, w3, b3)
    s = Add (c3, r2)
    r3 = Relu (s)
    g = GlobalAveragePool (r3)
    f = Flatten (g)
    logits = Gemm <transB = 1> (f, wfc, bfc)
}}
"""

_MATMUL_NET = """
<ir_version: 8, opset_import: ["" : {opset}]>
mlp (float[N, 32] x) => (float[N, 8] y) {{
    h = MatMul (x, w1)
    hb = Add (h, b1)
    a = Relu (hb)
    y = MatMul (a, w2)
}}
"""

_UNSUPPORTED_NET = """
<ir_version: 8, opset_import: ["" : {opset}]>
hs_net (float[N, 3, 8, 8] input) => (float[N, 4, 8, 8] out) {{
    c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (input, w1, b1)
    h = HardSwish (c1)
    out = Conv <kernel_shape = [1, 1]> (h, w2, b2)
}}
"""


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _add_inits(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    model.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    onnx.checker.check_model(model)
    return model


def conv_net(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-ReLU-MaxPool-Conv-Clip-Conv-Add(residual)-ReLU-GAP-Flatten-Gemm, input (N,3,16,16)."""
    r = _rng(seed)
    he = lambda *s: r.normal(0, np.sqrt(2.0 / np.prod(s[1:])), s)  # noqa: E731
    arrays = {
        "w1": he(8, 3, 3, 3), "b1": r.normal(0, 0.1, 8),
        "bn_scale": r.uniform(0.5, 1.5, 8), "bn_bias": r.normal(0, 0.1, 8),
        "bn_mean": r.normal(0, 0.1, 8), "bn_var": r.uniform(0.5, 1.5, 8),
        "w2": he(16, 8, 3, 3), "b2": r.normal(0, 0.1, 16),
        "clip_min": np.float32(0.0), "clip_max": np.float32(6.0),
        "w3": he(16, 16, 3, 3), "b3": r.normal(0, 0.1, 16),
        "wfc": he(10, 16), "bfc": r.normal(0, 0.1, 10),
    }
    return _add_inits(onnx.parser.parse_model(_CONV_NET.format(opset=opset)), arrays)


def matmul_net(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """MatMul-Add-Relu-MatMul MLP, input (N, 32)."""
    r = _rng(seed)
    arrays = {"w1": r.normal(0, 0.25, (32, 64)), "b1": r.normal(0, 0.1, 64), "w2": r.normal(0, 0.2, (64, 8))}
    return _add_inits(onnx.parser.parse_model(_MATMUL_NET.format(opset=opset)), arrays)


def unsupported_net(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """Conv-HardSwish-Conv: HardSwish has no int8 kernel and must stay float (and be reported)."""
    r = _rng(seed)
    arrays = {"w1": r.normal(0, 0.3, (4, 3, 3, 3)), "b1": r.normal(0, 0.1, 4),
              "w2": r.normal(0, 0.3, (4, 4, 1, 1)), "b2": r.normal(0, 0.1, 4)}
    return _add_inits(onnx.parser.parse_model(_UNSUPPORTED_NET.format(opset=opset)), arrays)


def random_inputs(model: onnx.ModelProto, n: int, seed: int = 0, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """`n` feed dicts of standard-normal data matching the model's inputs (dynamic dims -> batch)."""
    r = _rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = []
    for _ in range(n):
        f = {}
        for i in model.graph.input:
            if i.name in inits:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else batch for d in i.type.tensor_type.shape.dim]
            f[i.name] = r.standard_normal(dims).astype(np.float32)
        feeds.append(f)
    return feeds


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


__all__ = ["conv_net", "count_ops", "matmul_net", "oh", "random_inputs", "unsupported_net"]
