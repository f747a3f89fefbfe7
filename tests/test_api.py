"""slimq.quantize: one entry, three methods, one result type, one report schema, one finish step."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import onnx
import pytest

import slimq
from slimq import testing
from slimq.core.errors import CalibrationDataError, ConfigError, FidelityError, OutputPathError
from slimq.report.schema import Report

QUIET = {"show_progress": False}


def _keys(d: object, prefix: str = "") -> set[str]:
    """Every key path of a JSON document down to the section level (lists: their first element)."""
    if isinstance(d, dict):
        out = set()
        for k, v in d.items():
            if k in ("details", "quantized_ops", "int8_ops", "float_mac_ops"):  # method-specific contents
                out.add(prefix + k)
                continue
            out |= {prefix + k} | _keys(v, f"{prefix}{k}.")
        return out
    if isinstance(d, list) and d and isinstance(d[0], dict):
        return _keys(d[0], prefix)
    return set()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One model written by each method through slimq.quantize, under the default umask."""
    torch = pytest.importorskip("torch")
    from slimq.qat.testing_models import build

    d = tmp_path_factory.mktemp("api")
    old = os.umask(0o022)
    try:
        conv = testing.conv_net()
        static = slimq.quantize(conv, slimq.StaticConfig(holdout=8, **QUIET),
                                testing.random_inputs(conv, 40, seed=1), d / "static.onnx")
        dynamic = slimq.quantize(testing.matmul_net(), slimq.DynamicConfig(), None, d / "dynamic.onnx")
        torch.manual_seed(0)
        qat = slimq.quantize(build("convnet").eval(), slimq.QATConfig(), torch.randn(40, 1, 16, 16), d / "qat.onnx")
    finally:
        os.umask(old)
    return {"static": static, "dynamic": dynamic, "qat": qat}


def test_quantize_dispatches_every_method_to_one_result_type(written):
    for method, result in written.items():
        assert isinstance(result, slimq.QuantResult) and result.report.method == method
        assert result.path is not None and result.path.exists() and result.report_path.exists()
        onnx.checker.check_model(onnx.load(str(result.path)))
        assert result.report.sizes.quantized_bytes == result.path.stat().st_size
    assert written["static"].plan is not None and written["dynamic"].decisions
    assert written["qat"].artifacts["int8_weights"] > 0


def test_every_method_writes_the_same_report_schema(written):
    from dataclasses import fields

    from slimq.report.schema import AgreementRow, FloatOp

    docs = {m: json.loads(r.report_path.read_text()) for m, r in written.items()}
    for section in ("", "macs.", "sizes."):  # top level and the fixed sections: the same keys everywhere
        keys = [{k for k in _keys(d) if k.startswith(section) and "." not in k[len(section):]} for d in docs.values()]
        assert keys[0] == keys[1] == keys[2], section
    rows = {"agreement": {f.name for f in fields(AgreementRow)}, "float_ops": {f.name for f in fields(FloatOp)}}
    for doc in docs.values():
        for section, names in rows.items():
            assert all(set(item) == names for item in doc[section]), section
    assert all(doc["agreement"] for doc in docs.values())
    for method, doc in docs.items():
        assert doc["schema"] == "slimq-report/1" and doc["method"] == method
        assert Report.from_dict(doc).to_dict() == doc  # reads back losslessly


def test_written_files_follow_the_umask(written):
    for result in written.values():
        for path in (result.path, result.report_path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_external_data_files_follow_the_umask_too(tmp_path):
    old = os.umask(0o027)
    try:
        slimq.quantize(testing.matmul_net(), slimq.DynamicConfig(external_data=True), None, tmp_path / "m.onnx")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"m.onnx": 0o640, "m.onnx.data": 0o640, "m.onnx.report.json": 0o640, "m.onnx.report.html": 0o640}


def test_output_location_is_checked_before_any_work(tmp_path):
    missing_data = tmp_path / "no-such-calibration-folder"
    with pytest.raises(OutputPathError, match="does not exist"):
        slimq.quantize(testing.conv_net(), slimq.StaticConfig(), missing_data, tmp_path / "nope" / "q.onnx")
    with pytest.raises(CalibrationDataError):  # with a good output path the data is the problem
        slimq.quantize(testing.conv_net(), slimq.StaticConfig(), missing_data, tmp_path / "q.onnx")


def test_strict_refusal_writes_nothing(tmp_path):
    conv = testing.conv_net()
    cfg = slimq.StaticConfig(min_cosine=0.999999, strict=True, holdout=8, **QUIET)
    with pytest.raises(FidelityError, match="nothing was written"):
        slimq.quantize(conv, cfg, testing.random_inputs(conv, 40, seed=1), tmp_path / "q.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_config_type_and_options_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="StaticConfig, DynamicConfig, QATConfig"):
        slimq.quantize(testing.conv_net(), {"algo": "hist"}, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match='Did you mean "preprocess"'):
        slimq.quantize(testing.conv_net(), slimq.StaticConfig(), np.zeros((2, 3, 16, 16), np.float32),
                       preprocesss=None)
    with pytest.raises(ConfigError, match="needs calibration data"):
        slimq.quantize(testing.conv_net(), slimq.StaticConfig())
