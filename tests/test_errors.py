"""Every bad input gets a clear error naming the problem and the fix, exit code 2, no traceback."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from slimq import testing
from slimq.core.config import StaticConfig
from slimq.core.errors import (
    CalibrationDataError,
    ConfigError,
    ModelLoadError,
    OutputPathError,
)
from slimq.io.model import load_model, save_model
from slimq.static.method import quantize_static

QUIET = StaticConfig(show_progress=False)


@pytest.fixture()
def files(tmp_path, conv_model, conv_calib):
    model = tmp_path / "m.onnx"
    onnx.save(conv_model, model)
    calib = tmp_path / "calib.npy"
    np.save(calib, conv_calib)
    return tmp_path, model, calib


def cli(*args):
    return subprocess.run([sys.executable, "-m", "slimq.cli.main", *map(str, args)], capture_output=True, text=True)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"not an onnx model at all \x00\xff\x12", "not a valid ONNX model|not an ONNX model"),
])
def test_corrupt_or_non_onnx_file(tmp_path, content, match):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        load_model(p)


def test_truncated_model(files):
    tmp, model, _ = files
    cut = tmp / "cut.onnx"
    cut.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ModelLoadError):
        load_model(cut)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(tmp_path)


def test_ancient_opset(tmp_path, conv_model):
    m = onnx.ModelProto()
    m.CopyFrom(conv_model)
    m.opset_import[0].version = 5
    p = tmp_path / "old.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match="opset 5.*Re-export"):
        load_model(p)


def test_external_data_round_trip_and_escape_refused(tmp_path, conv_model):
    out = save_model(conv_model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    again = load_model(out)
    assert [i.name for i in again.graph.initializer] == [i.name for i in conv_model.graph.initializer]
    m = onnx.load(str(out), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.data"
    evil = tmp_path / "evil.onnx"
    evil.write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match="outside the model folder"):
        load_model(evil)


@pytest.mark.parametrize("data,match", [
    (np.zeros((8, 3, 12, 12), np.float32), "dimension 2 is 12, expected 16"),
    (np.zeros((8, 16, 16, 3, 1), np.float32), "rank 4"),
    (np.zeros((8, 3, 16, 16), np.int32), "dtype int32"),
    (np.full((8, 3, 16, 16), np.nan, np.float32), "NaN or Inf"),
    (np.full((8, 3, 16, 16), np.inf, np.float32), "NaN or Inf"),
    (np.zeros((0, 3, 16, 16), np.float32), "empty"),
    ({"image": np.zeros((8, 3, 16, 16), np.float32)}, 'Did you mean "input"|no such input'),
])
def test_bad_calibration_data(conv_model, data, match):
    with pytest.raises(CalibrationDataError, match=match):
        quantize_static(conv_model, data, QUIET)


def test_output_equal_to_input_is_refused(files):
    _, model, calib = files
    with pytest.raises(OutputPathError, match="never overwrites"):
        quantize_static(model, calib, QUIET, output=model)


def test_bad_config_values():
    with pytest.raises(ConfigError, match='Did you mean "hist"'):
        StaticConfig(algo="hsit")
    with pytest.raises(ConfigError, match='Did you mean "tensorrt"'):
        StaticConfig(target="tensort")
    with pytest.raises(ConfigError, match='Did you mean "hist_percent"'):
        StaticConfig.from_dict({"hist_percentt": 0.99})


@pytest.mark.parametrize("extra,match", [
    (["--algo", "histo"], 'Did you mean "hist"'),
    (["--skip-nodes", "no_such_node"], "not in the model"),
    (["--target", "x87"], 'Did you mean "x86"'),
])
def test_cli_errors_exit_2_without_traceback(files, extra, match):
    tmp, model, calib = files
    before = digest(model)
    r = cli("quantize", "static", model, "--calib", calib, "-o", tmp / "out.onnx", *extra)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "slimq: error:" in r.stderr
    assert pytest.importorskip("re").search(match, r.stderr)
    assert digest(model) == before and not (tmp / "out.onnx").exists()


def test_cli_same_output_and_missing_files(files):
    tmp, model, calib = files
    before = digest(model)
    for args, match in [((model, "--calib", calib, "-o", model), "never overwrites"),
                        ((tmp / "missing.onnx", "--calib", calib, "-o", tmp / "o.onnx"), "not found"),
                        ((model, "--calib", tmp / "nodata", "-o", tmp / "o.onnx"), "not found")]:
        r = cli("quantize", "static", *args)
        assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr
    assert digest(model) == before


def test_cli_success_writes_model_and_report_atomically(tmp_path):
    # The MLP's logits have clear top-2 margins (>= 0.32 on the held-back rows vs an INT8 error
    # <= 0.14), so the fidelity check passes and the exit code is 0, not 3 (written with warnings).
    model, calib = tmp_path / "mlp.onnx", tmp_path / "calib.npy"
    onnx.save(testing.matmul_net(), model)
    np.save(calib, np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32))
    r = cli("quantize", "static", model, "--calib", calib, "-o", tmp_path / "q.onnx", "--algo", "mse")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stdout
    assert (tmp_path / "q.onnx").exists() and (tmp_path / "q.onnx.report.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    onnx.checker.check_model(onnx.load(str(tmp_path / "q.onnx")))
    report = json.loads((tmp_path / "q.onnx.report.json").read_text())
    assert report["warnings"] == [] and report["agreement"][0]["top1_agreement"] == 1.0


def test_cli_exit_3_when_written_with_warnings(tmp_path, conv_model, conv_calib):
    # calibrated on tiny-amplitude samples, checked on the 16 held-back full-amplitude ones: the
    # model is written, the fidelity warning is printed and the exit code says so
    model, calib = tmp_path / "m.onnx", tmp_path / "calib.npy"
    onnx.save(conv_model, model)
    tiny = np.concatenate([conv_calib, conv_calib[:16]]) * 1e-3  # 64 calibration samples
    np.save(calib, np.concatenate([tiny, conv_calib[:16] * 10]))
    r = cli("quantize", "static", model, "--calib", calib, "-o", tmp_path / "q.onnx")
    assert r.returncode == 3, r.stdout + r.stderr
    assert 'WARNING: output "logits": cosine' in r.stdout and (tmp_path / "q.onnx").exists()
    report = json.loads((tmp_path / "q.onnx.report.json").read_text())
    assert report["agreement"][0]["cosine"] < 0.98 and report["agreement_samples"] == 16


def test_recipe_unknown_key(files):
    tmp, model, calib = files
    recipe = tmp / "r.yaml"
    recipe.write_text("static:\n  algo: KL\n  hist_precent: 0.99\n")
    r = cli("quantize", "static", model, "--calib", calib, "-o", tmp / "q.onnx", "--recipe", recipe)
    assert r.returncode == 2 and 'Did you mean "hist_percent"' in r.stderr
    recipe.write_text("statc:\n  algo: KL\n")
    r = cli("quantize", "static", model, "--calib", calib, "-o", tmp / "q.onnx", "--recipe", recipe)
    assert r.returncode == 2 and 'Did you mean "static"' in r.stderr


def test_inspect_lists_ops(files):
    _, model, _ = files
    r = cli("inspect", model)
    assert r.returncode == 0 and "Conv" in r.stdout and "quantizable share" in r.stdout
