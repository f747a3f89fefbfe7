"""--target arm also writes the ORT-format model onnxruntime Mobile loads; it loads here and matches."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from slimq import testing
from slimq.cli.main import main
from slimq.core.config import StaticConfig
from slimq.static.method import quantize_static


def test_arm_target_writes_a_matching_ort_file(tmp_path, conv_model, conv_calib):
    out = tmp_path / "conv.int8.onnx"
    res = quantize_static(conv_model, conv_calib, StaticConfig(show_progress=False, target="arm"), out)
    ort_file = tmp_path / "conv.int8.ort"
    assert ort_file.is_file() and ort_file.read_bytes()[4:8] == b"ORTM"
    d = res.report.details["ort_format"]
    assert d["samples"] >= 1 and d["max_abs_diff"] < 1e-5
    assert any(n.startswith("ORT format for onnxruntime Mobile: conv.int8.ort") for n in res.report.notes)
    x = conv_calib[:3]
    mobile = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    qdq = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(mobile, qdq, atol=1e-5)
    assert sum(n.op_type == "QuantizeLinear" for n in res.model.graph.node) > 0


def test_other_targets_write_no_ort_file(tmp_path, conv_model, conv_calib):
    quantize_static(conv_model, conv_calib, StaticConfig(show_progress=False), tmp_path / "m.onnx")
    assert not (tmp_path / "m.ort").exists()


def test_cli_arm(tmp_path, capsys):
    import onnx

    m = testing.conv_net()
    onnx.save(m, tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.concatenate([f["input"] for f in testing.random_inputs(m, 20)]))
    code = main(["quantize", "static", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"),
                 "--target", "arm", "-o", str(tmp_path / "m.int8.onnx")])
    assert code in (0, 3) and (tmp_path / "m.int8.ort").is_file()
    assert "ORT format for onnxruntime Mobile" in capsys.readouterr().out


def test_ort_file_never_overwrites_the_input(tmp_path, conv_model, conv_calib):
    import onnx
    import pytest

    from slimq.core.errors import OutputPathError

    src = tmp_path / "m.ort"  # an input that happens to be named like the .ort companion of m.onnx
    onnx.save(conv_model, src)
    with pytest.raises(OutputPathError, match="never overwrites its input"):
        quantize_static(str(src), conv_calib, StaticConfig(show_progress=False, target="arm"), tmp_path / "m.onnx")
