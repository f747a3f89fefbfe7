"""Prototype graph rewrites for PP-LCNetV3-style models (PP-OCRv4 rec), to measure what they buy.

Read-only with respect to slimq: these rewrite a *copy* of the FP32 model before
``quantize_static`` sees it. They are exact (FP32 outputs unchanged):

* ``fold_conv_affine``: Conv -> Mul(constant) [-> Add(constant)] becomes one Conv
  with scaled weights and bias (PP-LCNetV3's "learnable affine blocks" after every conv).
* ``fuse_hardswish``: x * Clip(x + 3, 0, 6) / 6 becomes HardSwish(x) (opset 14).

Fewer elementwise ops means fewer requantization points in the QDQ model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}
        self.outputs = {o.name for o in self.g.output}

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if tensor in n.input]

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        users = self.consumers(tensor)
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def add_init(self, name: str, array: np.ndarray) -> str:
        t = numpy_helper.from_array(array.astype(np.float32), name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name


def _channel_const(g: _Graph, node: onnx.NodeProto, data: str, cout: int) -> np.ndarray | None:
    """The other (constant) operand of a Mul/Add as a per-output-channel vector, if it is one."""
    other = [i for i in node.input if i != data]
    if len(other) != 1 or (c := g.const(other[0])) is None:
        return None
    if c.size == 1:
        return np.full(cout, float(c.reshape(())), np.float64)
    if c.size == cout and c.shape[-2:] in ((1, 1),) and c.ndim in (3, 4):
        return c.reshape(cout).astype(np.float64)
    return None


def fold_conv_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold constant per-channel Mul/Add that directly follow a Conv into the Conv. Returns (model, folds)."""
    g, folds = _Graph(model), 0
    for conv in [n for n in g.g.node if n.op_type == "Conv"]:
        w = g.const(conv.input[1])
        while w is not None:
            nxt = g.sole_consumer(conv.output[0])
            if nxt is None or nxt.op_type not in ("Mul", "Add"):
                break
            c = _channel_const(g, nxt, conv.output[0], w.shape[0])
            if c is None:
                break
            b = g.const(conv.input[2]).astype(np.float64) if len(conv.input) > 2 else np.zeros(w.shape[0])
            if nxt.op_type == "Mul":
                w = (w.astype(np.float64) * c.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32)
                b = b * c
            else:
                b = b + c
            base = f"{conv.name or conv.output[0]}_affine{folds}"
            conv.input[1] = g.add_init(base + "_w", w)
            if len(conv.input) > 2:
                conv.input[2] = g.add_init(base + "_b", b)
            else:
                conv.input.append(g.add_init(base + "_b", b))
            out = nxt.output[0]
            g.g.node.remove(nxt)
            conv.output[0] = out
            folds += 1
    return model, folds


def _scalar(g: _Graph, name: str) -> float | None:
    c = g.const(name)
    return float(c.reshape(())) if c is not None and c.size == 1 else None


def fuse_hardswish(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """x * Clip(x + 3, 0, 6) / 6 -> HardSwish(x); bumps the default opset to 14 when needed."""
    g, fused = _Graph(model), 0
    producer = {o: n for n in g.g.node for o in n.output}
    for div in [n for n in g.g.node if n.op_type == "Div"]:
        mul = producer.get(div.input[0])
        if _scalar(g, div.input[1]) != 6.0 or mul is None or mul.op_type != "Mul":
            continue
        clip = next((producer.get(i) for i in mul.input if producer.get(i) is not None
                     and producer[i].op_type == "Clip"), None)
        if clip is None or len(clip.input) < 3 or (_scalar(g, clip.input[1]), _scalar(g, clip.input[2])) != (0.0, 6.0):
            continue
        add = producer.get(clip.input[0])
        x = next((i for i in mul.input if i != clip.output[0]), None)
        if add is None or add.op_type != "Add" or x not in add.input:
            continue
        if _scalar(g, next(i for i in add.input if i != x)) != 3.0:
            continue
        if any(len(g.consumers(t)) != 1 for t in (add.output[0], clip.output[0], mul.output[0])):
            continue
        idx = list(g.g.node).index(div)
        g.g.node.insert(idx, helper.make_node("HardSwish", [x], [div.output[0]], name=f"{div.name}_hardswish"))
        for n in (add, clip, mul, div):
            g.g.node.remove(n)
        fused += 1
    if fused:
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx") and imp.version < 14:
                imp.version = 14
    return model, fused


def prune_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop initializers no node uses any more (in place)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def rewrite(model: onnx.ModelProto, cle: bool = False) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Affine folding and HardSwish fusion (and optionally CLE) on a copy of ``model``
    (run after slimq.graph.passes.preprocess)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m, folds = fold_conv_affine(m)
    m, fused = fuse_hardswish(m)
    info = {"conv_affine_folds": folds, "hardswish_fusions": fused}
    if cle:
        m, info["cle_pairs"] = equalize_conv_pairs(m)
    return prune_initializers(m), info


def bias_correct(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> tuple[onnx.ModelProto, int]:
    """Bias correction for int8 per-channel weights (Nagel et al. 2019, empirical input means).

    Conv bias b becomes b - (W_q - W) . E[x], with W_q the int8 weights slimq will produce
    (symmetric per-channel abs-max, [-127, 127]) and E[x] the per-channel mean of the Conv's
    input over ``feeds``; the expected output shift of weight rounding is then zero.
    Groups are handled (depthwise included); padding is ignored (interior positions).
    """
    from slimq.core import qmath
    from slimq.runtime.exposed import ExposedRunner

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = _Graph(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv" and g.const(n.input[1]) is not None]
    inputs = sorted({n.input[0] for n in convs} - {i.name for i in m.graph.input})
    sums: dict[str, np.ndarray] = {}
    count = 0
    runner = ExposedRunner(m, inputs, feeds[0], 1 << 30)
    for f in feeds:
        acts = dict(runner.run(f))
        acts.update({k: v for k, v in f.items()})
        for name in {n.input[0] for n in convs}:
            s = acts[name].astype(np.float64).mean(axis=(0, 2, 3))
            sums[name] = sums.get(name, 0) + s
        count += 1
    for n in convs:
        w = g.const(n.input[1])
        wq = qmath.quantize_weight(w, qmath.INT8.narrow(), 0)
        dq = wq.data.astype(np.float64) * wq.scale.reshape(-1, *[1] * (w.ndim - 1))
        dw = (dq - w.astype(np.float64)).sum(axis=(2, 3))  # (cout, cin/groups)
        mean_x = sums[n.input[0]] / count
        groups = next((a.i for a in n.attribute if a.name == "group"), 1)
        cin_g = w.shape[1]
        xg = mean_x.reshape(groups, cin_g)
        shift = np.einsum("gok,gk->go", dw.reshape(groups, -1, cin_g), xg).reshape(-1)
        b = g.const(n.input[2]).astype(np.float64) if len(n.input) > 2 else np.zeros(w.shape[0])
        name = g.add_init(f"{n.name or n.output[0]}_biascorr", b - shift)
        if len(n.input) > 2:
            n.input[2] = name
        else:
            n.input.append(name)
    return prune_initializers(m), len(convs)


def equalize_conv_pairs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Cross-layer equalization (Nagel et al. 2019) of Conv -> Conv pairs with nothing in between.

    Output channel i of the first conv is divided by s_i and input channel i of the second
    multiplied by s_i, s_i = sqrt(r1_i / r2_i) (r: per-channel abs-max of the weights), so both
    convs see balanced per-channel ranges. Exact in FP32 (the pair is linear).
    """
    g, pairs = _Graph(model), 0
    producer = {o: n for n in g.g.node for o in n.output}
    for c2 in [n for n in g.g.node if n.op_type == "Conv"]:
        c1 = producer.get(c2.input[0])
        if c1 is None or c1.op_type != "Conv" or g.sole_consumer(c1.output[0]) is not c2:
            continue
        w1, w2 = g.const(c1.input[1]), g.const(c2.input[1])
        groups2 = next((a.i for a in c2.attribute if a.name == "group"), 1)
        if w1 is None or w2 is None or next((a.i for a in c1.attribute if a.name == "group"), 1) != 1:
            continue
        cout = w1.shape[0]
        r1 = np.abs(w1.reshape(cout, -1)).max(1).astype(np.float64)
        if groups2 == cout and w2.shape[1] == 1:  # depthwise: input channel i is output channel i
            r2 = np.abs(w2.reshape(cout, -1)).max(1).astype(np.float64)
        elif groups2 == 1:
            r2 = np.abs(w2).max(axis=(0, 2, 3)).astype(np.float64)
        else:
            continue
        s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)
        b1 = g.const(c1.input[2]).astype(np.float64) if len(c1.input) > 2 else np.zeros(cout)
        w1n = w1 / s.reshape(-1, 1, 1, 1)
        w2n = w2 * (s.reshape(-1, 1, 1, 1) if groups2 == cout else s.reshape(1, -1, 1, 1))
        base = f"{c1.name or c1.output[0]}_cle"
        c1.input[1] = g.add_init(base + "_w1", w1n)
        if len(c1.input) > 2:
            c1.input[2] = g.add_init(base + "_b1", b1 / s)
        c2.input[1] = g.add_init(base + "_w2", w2n)
        pairs += 1
    return model, pairs


def smooth_conv_inputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                       alpha: float = 0.5) -> tuple[onnx.ModelProto, list[str]]:
    """Equalize per-channel activation ranges into the next Conv (SmoothQuant-style, exact in FP32).

    For every Conv whose input is ``Add(Mul(h, a), b)`` with constant a, b (PP-LCNetV3's affine
    after HardSwish), channel c of that input is divided by s_c and input channel c of the Conv's
    weights multiplied by s_c, s_c = max|x_c|^alpha / max|w_c|^(1 - alpha): a and b become
    per-channel vectors. Returns the model and the names of those Mul/Add nodes, which must stay
    float (skip them) so that only the equalized Conv input is quantized.
    """
    from slimq.runtime.exposed import ExposedRunner

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = _Graph(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    sites = []
    for conv in [n for n in m.graph.node if n.op_type == "Conv"]:
        add = producer.get(conv.input[0])
        mul = producer.get(add.input[0]) if add is not None and add.op_type == "Add" else None
        if mul is None or mul.op_type != "Mul" or g.sole_consumer(add.output[0]) is not conv:
            continue
        a_name = next((i for i in mul.input if i in g.inits), None)
        b_name = next((i for i in add.input if i in g.inits), None)
        if a_name is None or b_name is None or g.const(a_name).size != 1 or g.const(b_name).size != 1:
            continue
        sites.append((conv, mul, add, a_name, b_name))
    runner = ExposedRunner(m, [s[2].output[0] for s in sites], feeds[0], 1 << 30)
    xmax: dict[str, np.ndarray] = {}
    for f in feeds:
        for name, a in runner.run(f):
            cur = np.abs(a).max(axis=(0, 2, 3)).astype(np.float64)
            xmax[name] = np.maximum(xmax.get(name, cur), cur)
    skip = []
    for conv, mul, add, a_name, b_name in sites:
        w = g.const(conv.input[1]).astype(np.float64)
        group = next((at.i for at in conv.attribute if at.name == "group"), 1)
        depthwise = group == w.shape[0] and w.shape[1] == 1
        if group != 1 and not depthwise:
            continue
        wmax = np.abs(w.reshape(w.shape[0], -1)).max(1) if depthwise else np.abs(w).max(axis=(0, 2, 3))
        x = xmax[add.output[0]]
        s = np.where((x > 0) & (wmax > 0), x**alpha / np.maximum(wmax, 1e-12) ** (1 - alpha), 1.0)
        shape = (1, -1, 1, 1)
        base = conv.name or conv.output[0]
        mul.input[list(mul.input).index(a_name)] = g.add_init(
            base + "_smooth_a", (float(g.const(a_name).reshape(())) / s).reshape(shape))
        add.input[list(add.input).index(b_name)] = g.add_init(
            base + "_smooth_b", (float(g.const(b_name).reshape(())) / s).reshape(shape))
        w_new = w * (s.reshape(-1, 1, 1, 1) if depthwise else s.reshape(1, -1, 1, 1))
        conv.input[1] = g.add_init(base + "_smooth_w", w_new)
        skip += [mul.name, add.name]
    return prune_initializers(m), skip
