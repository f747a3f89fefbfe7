"""PyTorch in: nn.Module / ExportedProgram / .pt2 through the dynamo exporter, checked against PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="PyTorch models need the qat extra (pip install 'slimq[qat]')")

from slimq.cli.main import main
from slimq.core.config import DynamicConfig, StaticConfig
from slimq.core.errors import CalibrationDataError, ConfigError, ConversionError, ModelLoadError
from slimq.io.fashion_mnist import load_fashion_mnist, preprocess
from slimq.io.source import framework_of, load_source
from slimq.runtime.session import Predictor
from slimq.static.method import quantize_static
from slimq.zoo import asset_path

QUIET = dict(show_progress=False, speed_guard=False, compare_runtimes=False)


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(image)))
        return self.fc(x.mean((2, 3)))


class Broken(Small):
    """Traces to a different function than it runs eagerly: what an exporter bug looks like."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = super().forward(image)
        return y * 1.5 if torch.compiler.is_exporting() else y


class TwoHeads(Small):
    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        y = super().forward(image)
        return {"logits": y, "probs": torch.softmax(y, -1)}


def _data(n: int = 24) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 12, 12)).astype(np.float32)


def test_module_is_exported_checked_and_quantized():
    data = _data()
    res = quantize_static(Small().eval(), data, StaticConfig(**QUIET))
    conv = res.report.details["conversion"]
    assert conv["framework"] == "PyTorch" and conv["checked_samples"] == 16
    assert conv["max_abs_diff"] < 1e-4
    assert any(n.startswith("converted from PyTorch") for n in res.report.notes)
    assert [i.name for i in res.model.graph.input] == ["image"]  # the forward's parameter name
    assert res.report.macs.int8_share > 0.9
    ref = Small().eval()(torch.from_numpy(data[:4])).detach().numpy()
    out = Predictor(res.model).run({"image": data[:4]})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99


def test_export_keeps_a_dynamic_batch():
    src = load_source(Small().eval(), _data(4))
    dim = src.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert not dim.HasField("dim_value") and dim.dim_param
    out = Predictor(src.model).run({"image": _data(5)})[0]
    assert out.shape == (5, 5)


def test_dict_outputs_keep_their_keys_as_names():
    src = load_source(TwoHeads().eval(), _data(4))
    assert [o.name for o in src.model.graph.output] == ["logits", "probs"]


def test_broken_export_is_refused_with_the_worst_difference():
    with pytest.raises(ConversionError, match=r'does not match PyTorch: output "\w+" differs by up to [0-9.]+'):
        quantize_static(Broken().eval(), _data(), StaticConfig(**QUIET))


def test_module_without_examples_or_array_data_is_a_clear_error(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "a.npy", _data(4))
    with pytest.raises(ConfigError, match="needs example inputs"):
        load_source(Small().eval(), str(folder))
    src = load_source((Small().eval(), (torch.from_numpy(_data(1)),)), str(folder))  # (module, example) pair
    assert src.conversion is not None and src.conversion.checked_samples == 4


def test_pt2_cli_static_inspect_bench(tmp_path, capsys):
    program = torch.export.export(Small().eval(), (torch.from_numpy(_data(1)),))
    pt2 = tmp_path / "small.pt2"
    torch.export.save(program, pt2)
    assert framework_of(str(pt2)) == "pytorch"
    np.save(tmp_path / "calib.npy", _data())
    out = tmp_path / "small.int8.onnx"
    code = main(["quantize", "static", str(pt2), "--calib", str(tmp_path / "calib.npy"), "-o", str(out)])
    assert code in (0, 3) and out.is_file()
    assert "converted from PyTorch" in capsys.readouterr().out
    assert main(["inspect", str(pt2)]) == 0
    assert "Conv" in capsys.readouterr().out
    assert main(["bench", str(pt2), str(out), "--threads", "1", "--min-time", "0", "--iters", "2",
                 "--rounds", "1", "--warmup", "0"]) == 0
    assert "small.int8" in capsys.readouterr().out


def test_pt2_with_a_fixed_batch_refuses_other_batches(tmp_path):
    program = torch.export.export(Small().eval(), (torch.from_numpy(_data(2)),))
    pt2 = tmp_path / "b2.pt2"
    torch.export.save(program, pt2)
    with pytest.raises(CalibrationDataError, match="dimension 0 is 1, expected 2"):
        load_source(str(pt2), _data(4))


def test_not_a_pt2_file(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="torch.export.save"):
        load_source(str(bad))


def test_dynamic_ptq_takes_an_exported_program():
    from slimq.dynamic.method import quantize_dynamic

    program = torch.export.export(Small().eval(), (torch.from_numpy(_data(1)),))
    res = quantize_dynamic(program, DynamicConfig(), None, _data(4))
    assert res.report.details["conversion"]["checked_samples"] == 4
    assert any(i.data_type == onnx.TensorProto.INT8 for i in res.model.graph.initializer)


def test_fmnist_pt2_matches_the_onnx_route(tmp_path):
    """The shipped Fashion-MNIST ResNet: top-1 after static PTQ from its .pt2 equals the ONNX route's (±0.5 pt)."""
    from slimq.zoo.fmnist import build_model

    try:
        test, labels = load_fashion_mnist("test")
        train, _ = load_fashion_mnist("train")
    except CalibrationDataError:
        pytest.skip("Fashion-MNIST files are not available")
    model = build_model("fmnist_resnet")
    model.load_state_dict(torch.load(asset_path("fmnist_resnet", ".pt"), weights_only=True))
    pt2 = tmp_path / "fmnist_resnet.pt2"
    batch = {0: torch.export.Dim("batch", min=1, max=4096)}
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(2, 1, 28, 28),), dynamic_shapes=(batch,)), pt2)
    calib, x, y = preprocess(train[:64]), preprocess(test[:1000]), labels[:1000]
    top1 = {}
    for route, src in (("onnx", str(asset_path("fmnist_resnet"))), ("pt2", str(pt2))):
        res = quantize_static(src, calib, StaticConfig(max_samples=64, holdout=0, **QUIET))
        name = res.model.graph.input[0].name
        top1[route] = float((Predictor(res.model, threads=2).run({name: x})[0].argmax(1) == y).mean() * 100)
    assert abs(top1["onnx"] - top1["pt2"]) <= 0.5, top1
