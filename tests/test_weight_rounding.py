"""Learned weight rounding in the methods: AdaRound in static PTQ (W4A8 and W8A8), GPTQ in dynamic PTQ."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnx.parser
import onnx_ir as ir
import pytest

import slimq
from slimq.cli.main import main
from slimq.core import qmath
from slimq.core.config import DynamicConfig, StaticConfig
from slimq.core.errors import ConfigError
from slimq.dynamic.method import quantize_dynamic
from slimq.graph.passes.bias_correction import output_shift
from slimq.graph.plan import WeightEntry
from slimq.graph.qdq import check_precomputed
from slimq.runtime.session import Predictor
from slimq.static import adaround
from slimq.static.method import quantize_static

RNG = np.random.default_rng(1)
W4 = qmath.INT4.narrow()

NET = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4, 8, 8] x) => (float[N, 6] y) {
    c1 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3], strides = [2, 2]> (r1, w2, b2)
    p = GlobalAveragePool (c2)
    f = Flatten (p)
    y = Gemm <transB = 1> (f, w3, b3)
}
"""
MIX = RNG.standard_normal((4, 4)) * 0.5 + np.eye(4)


def conv_net() -> onnx.ModelProto:
    arrays = {"w1": RNG.standard_normal((8, 4, 3, 3)) * 0.3, "b1": RNG.normal(0, 0.1, 8),
              "w2": RNG.standard_normal((8, 8, 3, 3)) * 0.2, "b2": RNG.normal(0, 0.1, 8),
              "w3": RNG.standard_normal((6, 8)) * 0.4, "b3": RNG.normal(0, 0.1, 6)}
    m = onnx.parser.parse_model(NET)
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    return m


def images(n: int) -> np.ndarray:
    """Correlated, spatially smooth inputs (with white noise round-to-nearest is already optimal)."""
    z = RNG.standard_normal((n, 4, 10, 10))
    z = (z[:, :, :-2, :-2] + z[:, :, 1:-1, 1:-1] + z[:, :, 2:, 2:] + z[:, :, 2:, :-2]) / 2
    return (np.einsum("ij,njhw->nihw", MIX, z) + 0.3).astype(np.float32)


MODEL, CALIB, HELD_OUT = conv_net(), images(64), images(64)


def static(rounding: str, bits: int = 4, iters: int = 250, **kw) -> object:
    """Static PTQ with AdaRound bounded by iterations, not time (the budget is out of reach): the result does
    not depend on the machine's speed."""
    cfg = StaticConfig(weight_bits=bits, weight_rounding=rounding, adaround_time_budget=120.0, holdout=16,
                       show_progress=False, **kw)
    fixed = functools.partial(adaround.AdaRoundConfig, iters=iters, max_rows=1024, batch_rows=256, lr=3e-2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adaround, "AdaRoundConfig", fixed)
        return quantize_static(MODEL, CALIB, cfg)


@pytest.fixture(scope="module")
def w4a8():
    return static("nearest"), static("adaround")


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: nh.to_array(t) for t in model.graph.initializer}


def mse(model: onnx.ModelProto) -> float:
    ref = Predictor(MODEL).run({"x": HELD_OUT})[0]
    return float(((Predictor(model).run({"x": HELD_OUT})[0] - ref) ** 2).mean())


def test_w4a8_stores_4_bit_integers_in_int8_with_rtn_scales(w4a8):
    fp = inits(MODEL)
    for res in w4a8:
        got = inits(res.model)
        for w in ("w1", "w2", "w3"):
            q = got[f"{w}_quantized"]
            assert q.dtype == np.int8 and q.min() >= -7 and q.max() <= 7 and np.abs(q).max() == 7
            axis = 0
            np.testing.assert_allclose(got[f"{w}_scale"], qmath.quantize_weight(fp[w], W4, axis).scale, rtol=1e-6)
        assert "int4_narrow [-7,7] weights" in res.report.target


def test_adaround_changes_only_rounding_directions_and_lowers_output_error(w4a8):
    rtn, ada = w4a8
    fp, a = inits(MODEL), inits(ada.model)
    changed = 0
    for w in ("w1", "w2", "w3"):
        ref = qmath.quantize_weight(fp[w], W4, 0).data.astype(int)
        diff = a[f"{w}_quantized"].astype(int) - ref
        assert np.abs(diff).max() <= 1
        changed += int((diff != 0).sum())
    assert changed > 20
    assert mse(ada.model) < 0.8 * mse(rtn.model)


def test_report_says_what_adaround_did(w4a8):
    rtn, ada = w4a8
    assert "weight_rounding" not in rtn.report.details
    d = ada.report.details["weight_rounding"]
    assert (d["method"], d["layers"], d["calibration_samples"]) == ("adaround", 3, 52)  # 64 samples, 12 held back (a fifth)
    assert d["learned"] + d["kept_nearest"] == 3 and d["learned"] >= 2
    assert 0 < d["mean_mse_vs_nearest"] < 1 and d["seconds"] < 30
    assert {r["node"] for r in d["per_layer"]} == {"c1", "c2", "y"}
    assert all(r["mse"] <= r["mse_rtn"] for r in d["per_layer"])
    assert any(n.startswith("AdaRound: 3 layers") for n in ada.report.notes)


def test_bias_correction_skips_the_learned_layers(w4a8):
    """AdaRound fits each layer's output mean itself: its layers keep the FP32 bias; round-to-nearest's are
    corrected by (W_rtn - W) . E[x] over the calibration samples."""
    rtn, ada = w4a8
    fp = inits(MODEL)
    entry = WeightEntry("c1", 1, "w1", 0, W4)
    mean_x = CALIB[:52].astype(np.float64).mean(axis=(0, 2, 3))
    corrected = fp["b1"] - output_shift(fp["w1"], entry, mean_x, "Conv")
    stored = {name: inits(r.model)["b1_quantized"] * inits(r.model)["b1_scale"] for name, r in (("rtn", rtn), ("ada", ada))}
    step = max(inits(r.model)["b1_scale"].max() for r in w4a8)
    assert np.abs(stored["rtn"] - corrected).max() <= step
    assert np.abs(stored["ada"] - fp["b1"]).max() <= step
    assert np.abs(corrected - fp["b1"]).max() > 4 * step  # the two are told apart
    learned = ada.report.details["weight_rounding"]["learned"]
    assert rtn.report.details["bias_corrected_layers"] == 3
    assert ada.report.details["bias_corrected_layers"] == 3 - learned


def layer_weights(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Conv/Gemm node -> the (integers, scale, zero point) initializers of the DequantizeLinear feeding its weight."""
    producer = {n.output[0]: n for n in model.graph.node}
    return {n.name or n.output[0]: list(producer[n.input[1]].input) for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") and producer[n.input[1]].op_type == "DequantizeLinear"}


def test_w8a8_adaround_per_tensor_keeps_the_int8_format():
    """Per-tensor weights let SmoothQuant ("auto") smooth the Gemm: its weight is then `w3_smooth`, and AdaRound
    learns the rounding of the smoothed weight."""
    res = static("adaround", bits=8, iters=40, per_channel=False, bias_correction=False)
    q, layers = inits(res.model), layer_weights(res.model)
    assert len(layers) == 3
    for data, scale, zero in layers.values():
        assert q[scale].shape == () and q[data].dtype == np.int8 and q[zero].dtype == np.int8 and q[zero] == 0
    assert np.abs(q["w1_quantized"]).max() > 60  # 8-bit range (7-bit with reduce_range)
    d = res.report.details["weight_rounding"]
    assert d["layers"] == 3 and d["learned"] >= 1
    assert {r["tensor"] for r in d["per_layer"]} == {layers[n][0].removesuffix("_quantized") for n in layers}


def test_precomputed_weights_must_match_their_entry():
    w = RNG.standard_normal((8, 4)).astype(np.float32)
    entry = WeightEntry("n", 1, "w", 0, W4)
    good = qmath.quantize_weight(w, W4, 0)
    check_precomputed(entry, good, w)
    bad = [qmath.quantize_weight(w, qmath.INT8.narrow(), 0), qmath.quantize_weight(w, W4, None),
           qmath.QuantizedTensor(good.data * 2, good.scale, good.zero_point, 0, W4)]
    for qt in bad:
        with pytest.raises(ValueError, match="does not match its plan entry"):
            check_precomputed(entry, qt, w)


def test_config_and_cli_refuse_bad_settings(tmp_path, capsys):
    for kw in ({"weight_rounding": "ada"}, {"weight_bits": 2}, {"adaround_time_budget": 0}, {"weight_bits": True}):
        with pytest.raises(ConfigError):
            StaticConfig(**kw)
    with pytest.raises(ConfigError, match="Did you mean \"gptq\""):
        DynamicConfig(weight_rounding="gpt")
    path = tmp_path / "m.onnx"
    onnx.save(MODEL, path)
    np.save(tmp_path / "x.npy", CALIB)
    base = ["quantize", "static", str(path), "--calib", str(tmp_path / "x.npy"), "-o", str(tmp_path / "q.onnx")]
    assert main([*base, "--adaround-budget", "5"]) == 2
    assert "add --adaround" in capsys.readouterr().err
    assert main([*base, "--weight-bits", "4"]) in (0, 3)
    assert np.abs(inits(onnx.load(tmp_path / "q.onnx"))["w1_quantized"]).max() == 7


def test_ir_roundtrip_of_the_learned_model(w4a8):
    """The written model is a valid graph onnxruntime loads (checked above) and onnx accepts."""
    onnx.checker.check_model(w4a8[1].model)
    assert sum(n.op_type == "DequantizeLinear" for n in ir.from_proto(w4a8[1].model).graph) >= 6


# -- GPTQ in dynamic PTQ -------------------------------------------------------------------------------

MLP = """
<ir_version: 8, opset_import: ["" : 21]>
g (float[N, 32] x) => (float[N, 16] y) {
    h = MatMul (x, w1)
    r = Relu (h)
    y = Gemm <transB = 1> (r, w2, b2)
}
"""
X_MIX = RNG.standard_normal((32, 32)) * np.geomspace(3, 0.05, 32)[:, None]


def tokens(n: int) -> np.ndarray:
    return (RNG.standard_normal((n, 32)) @ X_MIX).astype(np.float32)


X_CALIB, X_TEST = tokens(256), tokens(256)


def mlp() -> onnx.ModelProto:
    m = onnx.parser.parse_model(MLP)
    arrays = {"w1": RNG.standard_normal((32, 64)) * 0.2, "w2": RNG.standard_normal((16, 64)) * 0.2,
              "b2": RNG.normal(0, 0.1, 16)}
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    return m


MLP_MODEL = mlp()
INT4_G16 = dict(weight_bits=4, granularity="group:16", on_collapse="warn")


@pytest.fixture(scope="module")
def gptq_pair():
    rtn = quantize_dynamic(MLP_MODEL, DynamicConfig(**INT4_G16), check_data=X_TEST[:8])
    gptq = quantize_dynamic(MLP_MODEL, DynamicConfig(**INT4_G16, weight_rounding="gptq"), check_data=X_TEST[:8],
                            calib_data=X_CALIB)
    return rtn, gptq


def test_gptq_same_format_and_size_lower_output_error(gptq_pair):
    rtn, gptq = gptq_pair
    a, b = inits(rtn.model), inits(gptq.model)
    assert sorted(a) == sorted(b) and "w1_quantized" in a
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
    np.testing.assert_array_equal(a["w1_scale"], b["w1_scale"])
    assert (a["w1_quantized"] != b["w1_quantized"]).mean() > 0.05
    assert rtn.report.sizes.quantized_bytes == gptq.report.sizes.quantized_bytes
    ref = Predictor(MLP_MODEL).run({"x": X_TEST})[0]
    err = lambda r: float(((Predictor(r.model).run({"x": X_TEST})[0] - ref) ** 2).mean())  # noqa: E731
    assert err(gptq) < 0.8 * err(rtn)


def test_gptq_report_entry(gptq_pair):
    rtn, gptq = gptq_pair
    assert "weight_rounding" not in rtn.report.details
    d = gptq.report.details["weight_rounding"]
    assert (d["method"], d["weights"], d["calibration_samples"], d["skipped"]) == ("gptq", 2, 128, [])
    assert d["mean_output_error"] < 0.8 * d["mean_output_error_rtn"]
    assert "GPTQ rounding" in gptq.report.details["config"]
    assert any(n.startswith("GPTQ rounding: 2 MatMul weights") for n in gptq.report.notes)


def test_gptq_needs_calibration_data_and_rtn_refuses_it(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--calib"):
        quantize_dynamic(MLP_MODEL, DynamicConfig(weight_rounding="gptq"))
    with pytest.raises(ConfigError, match="only used by GPTQ"):
        quantize_dynamic(MLP_MODEL, DynamicConfig(), calib_data=X_CALIB)
    with pytest.raises(ConfigError, match="calib_data"):
        slimq.quantize(MLP_MODEL, DynamicConfig(), X_TEST, calib=X_CALIB)
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(MLP_MODEL, path)
    np.save(tmp_path / "x.npy", X_CALIB[:32])
    assert main(["quantize", "dynamic", str(path), "-o", str(out), "--gptq"]) == 2
    assert "--calib" in capsys.readouterr().err and not out.exists()


def test_gptq_through_the_api_and_the_cli(tmp_path):
    res = slimq.quantize(MLP_MODEL, DynamicConfig(weight_rounding="gptq"), X_TEST[:8], calib_data=X_CALIB[:32])
    assert res.report.details["weight_rounding"]["calibration_samples"] == 32
    path, out = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(MLP_MODEL, path)
    np.save(tmp_path / "x.npy", X_CALIB[:32])
    assert main(["quantize", "dynamic", str(path), "-o", str(out), "--weight-bits", "4", "--gptq",
                 "--calib", str(tmp_path / "x.npy"), "--min-cosine", "0.9"]) == 0
    report = json.loads((tmp_path / "q.onnx.report.json").read_text())
    assert report["details"]["weight_rounding"]["weights"] == 2
