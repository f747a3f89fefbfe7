"""Static PTQ on real assets: the shipped Fashion-MNIST CNNs and PP-OCRv4 rec (fast: small data)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from slimq.core.config import StaticConfig
from slimq.core.errors import CalibrationDataError, ModelLoadError
from slimq.io.fashion_mnist import load_fashion_mnist, preprocess
from slimq.runtime.session import Predictor
from slimq.static.method import quantize_static
from slimq.tasks import (
    ClassificationEvaluator,
    RecEvaluator,
    evaluate,
    rapidocr_model_path,
)
from slimq.zoo import asset_path

QUIET = dict(show_progress=False)


def _asset(name: str):
    try:
        return asset_path(name)
    except ModelLoadError:
        pytest.skip(f"{name} is not shipped in this checkout")


@pytest.fixture(scope="module")
def fmnist():
    try:
        train, _ = load_fashion_mnist("train")
        test, labels = load_fashion_mnist("test")
    except CalibrationDataError:
        pytest.skip("Fashion-MNIST files are not available")
    idx = np.random.default_rng(0).permutation(len(train))[:64]
    return preprocess(train[idx]), ClassificationEvaluator(preprocess(test[:1000]), labels[:1000], 500, "input")


def _top1_drop(name: str, algo: str, fmnist) -> tuple[float, float]:
    calib, ev = fmnist
    path = _asset(name)
    fp32 = evaluate(Predictor(path, threads=2).run, ev)["top1"]
    res = quantize_static(str(path), calib, StaticConfig(algo=algo, max_samples=64, holdout=0, **QUIET))
    int8 = evaluate(Predictor(res.model, threads=2).run, ev)["top1"]
    return fp32 - int8, res.report.int8_mac_share


@pytest.mark.parametrize("name", ["fmnist_resnet", "fmnist_mobilenet"])
def test_fmnist_hist_keeps_accuracy_and_runs_int8(name, fmnist):
    drop, share = _top1_drop(name, "hist", fmnist)
    assert drop <= 1.0, f"{name}: INT8 top-1 is {drop:.2f} pt below FP32 on 1000 test images"
    assert share >= 0.95, f"{name}: only {share:.1%} of MACs run in int8"


def test_fmnist_kl_keeps_accuracy(fmnist):
    drop, _ = _top1_drop("fmnist_resnet", "KL", fmnist)
    assert drop <= 1.0


@pytest.fixture(scope="module")
def rec_path():
    try:
        return rapidocr_model_path("rec")
    except ModelLoadError:
        pytest.skip("rapidocr-onnxruntime models are not installed")


def test_ppocr_rec_quantizes_to_int8_kernels_and_keeps_cer(rec_path):
    """benchmarks/static_ppocr.py on 200 of its 400 lines: x86 default settings, 64 calibration lines."""
    ev = RecEvaluator(rec_path, n_lines=200, seed=0, batch_size=8)
    calib = ev.calibration_batches(10, 8)
    res = quantize_static(str(rec_path), calib, StaticConfig(algo="hist", max_samples=64, holdout=16, **QUIET))
    assert res.report.int8_mac_share >= 0.9, res.report.format()
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    fp32 = evaluate(Predictor(rec_path, threads=2).run, ev)
    int8 = evaluate(lambda f: sess.run(None, f), ev)
    assert int8["cer"] <= fp32["cer"] + 0.3, f"INT8 CER {int8['cer']:.2f} % vs FP32 {fp32['cer']:.2f} %"
