"""SmoothQuant: exact in FP32, flattens outlier channels, shared scales, lower int8 error."""

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from slimq import testing
from slimq.core import qmath
from slimq.core.config import StaticConfig
from slimq.core.errors import ConfigError
from slimq.graph.passes.smoothquant import (
    choose_alpha,
    find_sites,
    quantized_error,
    smoothing_scales,
    smoothquant,
)
from slimq.runtime.capture import last_axis_absmax
from slimq.static.method import quantize_static

RNG = np.random.default_rng(0)
K = 32
OUTLIERS = np.ones(K)
OUTLIERS[[3, 17]] = [40.0, -25.0]  # two channels 25-40x larger, as in transformer LayerNorm outputs

NET = """
<ir_version: 9, opset_import: ["" : 20]>
g (float[N, 8, 32] x) => (float[N, 8, 16] y, float[N, 8, 16] z, float[N, 8, 32] res, float[N, 8, 16] v,
                          float[N, 8, 16] f) {
    ln = LayerNormalization <axis = -1> (x, g1, b1)
    q = MatMul (ln, wq)
    ln2d = Reshape (ln, shape2d)
    k = Gemm <transB = 1> (ln2d, wk, bk)
    k3 = Reshape (k, shape3d)
    y = Add (q, k3)
    ln2 = LayerNormalization <axis = -1> (x, g2, b2)
    h = MatMul (ln2, w1)
    hb = Add (h, bh)
    z = MatMul (hb, w2)
    v = MatMul (ln2, wv)
    res = Add (ln2, x)
    gl = Gelu (hb)
    f = MatMul (gl, w3)
}
"""


def net() -> onnx.ModelProto:
    """Sites: ln -> (MatMul, Reshape -> Gemm); ln2 -> (MatMul, MatMul) + residual Add; hb -> (MatMul, Gelu)."""
    w = lambda *s: RNG.standard_normal(s) * 0.2  # noqa: E731
    arrays = {"g1": OUTLIERS * RNG.uniform(0.8, 1.2, K), "b1": RNG.normal(0, 0.1, K), "wq": w(K, 16), "wk": w(16, K),
              "bk": RNG.normal(0, 0.1, 16), "g2": OUTLIERS, "b2": RNG.normal(0, 0.1, K), "w1": w(K, K),
              "bh": RNG.normal(0, 0.1, K), "w2": w(K, 16), "wv": w(K, 16), "w3": w(K, 16)}
    m = onnx.parser.parse_model(NET)
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    m.graph.initializer.extend([nh.from_array(np.array([-1, K], np.int64), "shape2d"),
                                nh.from_array(np.array([-1, 8, 16], np.int64), "shape3d")])
    onnx.checker.check_model(m)
    return m


NET_CACHE = net()


def fresh() -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(NET_CACHE)
    return m


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def exposed(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names)
    return m


X = RNG.standard_normal((16, 8, K)).astype(np.float32)


@pytest.fixture(scope="module")
def stats():
    return last_axis_absmax(fresh(), ["ln", "ln2", "hb", "ln2d", "gl"], [{"x": X}])


def smoothed(stats, **kw) -> tuple[onnx.ModelProto, list]:
    irm = ir.from_proto(fresh())
    done = smoothquant(irm, stats, **kw)
    return ir.to_proto(irm), done


def test_sites_and_absorbers():
    sites = {s.activation: s for s in find_sites(ir.from_proto(NET_CACHE))}
    summary = {k: (s.absorber, len(s.readers), [n.op_type for n, _ in s.others]) for k, s in sites.items()}
    assert summary == {
        "ln": ("layernorm", 1, ["Reshape"]),
        "ln2d": ("mul", 1, []),  # produced by a Reshape: nothing absorbs 1/s
        "ln2": ("layernorm", 2, ["Add"]),  # the residual Add gets the LayerNorm output back through Mul(s)
        "hb": ("linear", 1, ["Gelu"]),
        "gl": ("mul", 1, []),
    }
    assert all(s.needs_mul for s in sites.values())
    assert [r.in_axis for r in sites["ln2d"].readers] == [1]  # Gemm transB=1: weight columns are X's channels


def test_layernorm_and_linear_absorb_exactly(stats):
    """Without the extra readers, the LayerNorm and the previous linear layer absorb 1/s: no new op."""
    m = fresh()
    g = m.graph
    keep = [n for n in g.node if n.output[0] in ("ln2", "h", "hb", "z", "v")]
    del g.node[:]
    g.node.extend(keep)
    del g.output[:]
    g.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("z", "v")])
    irm = ir.from_proto(m)
    sites = {s.activation: s.absorber for s in find_sites(irm)}
    assert sites == {"ln2": "layernorm", "hb": "linear"}
    done = smoothquant(irm, {"ln2": stats["ln2"], "hb": stats["hb"]}, alpha=0.5)
    out = ir.to_proto(irm)
    assert len(done) == 2 and testing.count_ops(out) == testing.count_ops(m)
    for a, b in zip(run(out, X), run(m, X)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    after = last_axis_absmax(out, ["ln2"], [{"x": X}])["ln2"]
    assert after.max() / np.median(after) < 0.25 * stats["ln2"].max() / np.median(stats["ln2"])


def test_explicit_mul_only_when_allowed_and_exact(stats):
    m = fresh()
    out, done = smoothed(stats, alpha=0.5)
    assert done == [] and testing.count_ops(out) == testing.count_ops(m)
    out, done = smoothed(stats, alpha=0.5, allow_mul=True)
    assert len(done) == 5 and testing.count_ops(out)["Mul"] == 5
    for a, b in zip(run(out, X), run(m, X)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_readers_share_one_scale(stats):
    out, done = smoothed(stats, alpha={"ln2": 0.5}, allow_mul=True)  # only this site
    assert [d.activation for d in done] == ["ln2"]
    w = {t.name: nh.to_array(t) for t in out.graph.initializer}
    w0 = {t.name: nh.to_array(t) for t in fresh().graph.initializer}
    ratio_v = w["wv_smooth"][:, 0] / w0["wv"][:, 0]
    ratio_1 = w["w1_smooth"][:, 0] / w0["w1"][:, 0]
    np.testing.assert_allclose(ratio_v, ratio_1, rtol=1e-5)
    np.testing.assert_allclose(ratio_v, smoothing_scales(stats["ln2"], [w0["w1"], w0["wv"]], 0.5), rtol=1e-5)
    np.testing.assert_allclose(w["g2_smooth"], w0["g2"] / ratio_v, rtol=1e-5)


def test_alpha_search_and_error_model(stats):
    rows = run(exposed(fresh(), ["ln2"]), X)[0].reshape(-1, K)
    w0 = {t.name: nh.to_array(t) for t in fresh().graph.initializer}
    weights = [w0["w1"], w0["wv"]]
    alpha, errors = choose_alpha(rows, weights, stats["ln2"])
    assert alpha is not None and errors[alpha] < 0.5 * errors["none"]
    flat = RNG.standard_normal((256, K)).astype(np.float32)  # no outliers: smoothing has little to gain
    a2, e2 = choose_alpha(flat, weights, np.abs(flat).max(axis=0))
    assert e2[a2 if a2 is not None else "none"] <= e2["none"]
    assert quantized_error(rows, weights, np.ones(K)) == pytest.approx(errors["none"])
    with pytest.raises(ConfigError, match="alpha"):
        smoothing_scales(stats["ln2"], weights, 1.5)


def test_static_int8_closer_to_fp32_after_smoothing(stats):  # statistics from the calibration data
    """Real slimq static INT8 (per-tensor activations, MatMul/Gemm only, so that the graph input itself is not
    quantized by the residual Add): every MatMul output is >= 3 dB closer to FP32 with smoothing."""
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((64, 8, K)).astype(np.float32)
    test = rng.standard_normal((32, 8, K)).astype(np.float32)
    m = fresh()
    out, _ = smoothed(last_axis_absmax(m, list(stats), [{"x": calib}]), alpha=0.5, allow_mul=True)
    cfg = StaticConfig(show_progress=False, holdout=0, max_samples=64, op_types=("MatMul", "Gemm"), smoothquant="off")
    ref = run(m, test)
    base, smooth = run(quantize_static(m, calib, cfg).model, test), run(quantize_static(out, calib, cfg).model, test)
    for i in (0, 1, 3, 4):  # y, z, v, f
        assert qmath.sqnr_db(ref[i], smooth[i]) > qmath.sqnr_db(ref[i], base[i]) + 3.0, i


def test_smooth_model_picks_sites_on_calibration_data():
    from slimq.static.smoothing import SmoothQuantConfig, smooth_model, summary

    m = fresh()
    out, reports = smooth_model(m, X, SmoothQuantConfig(batch_size=16))
    by = {r.activation: r for r in reports}
    assert set(by) == {"ln", "ln2d", "ln2", "hb", "gl"}
    assert by["ln2"].alpha is not None and by["ln2"].error_after < 0.5 * by["ln2"].error_before
    assert by["ln2"].channel_ratio > 10
    assert "sites smoothed" in summary(reports)
    for a, b in zip(run(out, X), run(m, X)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    same, reports = smooth_model(m, X, SmoothQuantConfig(batch_size=16, allow_mul=False))
    assert reports == [] and testing.count_ops(same) == testing.count_ops(m)  # every site here needs a Mul
    with pytest.raises(ConfigError, match="min_gain"):
        SmoothQuantConfig(min_gain=1.0)


def test_static_ptq_smooths_by_default_where_it_helps():
    """quantize_static's "auto" SmoothQuant: sites chosen on the calibration data, reported, exact in FP32, and the
    smoothed MatMul inputs calibrated with KL; every MatMul output is closer to FP32 than with it off."""
    rng = np.random.default_rng(3)
    calib = rng.standard_normal((64, 8, K)).astype(np.float32)
    test = rng.standard_normal((32, 8, K)).astype(np.float32)
    m = fresh()
    base = StaticConfig(show_progress=False, holdout=0, max_samples=64, op_types=("MatMul", "Gemm"))
    on = quantize_static(m, calib, base)
    off = quantize_static(m, calib, StaticConfig(**{**base.__dict__, "smoothquant": "off"}))
    sq = on.report.details["rewrites"]["smoothquant"]
    assert sq["smoothed"] >= 2 and len(sq["per_site"]) == sq["sites"] == 5
    assert "rewrites" not in off.report.details
    ref, a, b = run(m, test), run(on.model, test), run(off.model, test)
    for i in (0, 1, 3, 4):
        assert qmath.sqnr_db(ref[i], a[i]) > qmath.sqnr_db(ref[i], b[i]), i
