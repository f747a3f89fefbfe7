"""QAT on models module swapping cannot see: torch.export graph capture, the int8 MAC-share threshold,
calibration as static PTQ does it, label-free distillation, user models on the CLI."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import slimq.qat as qat  # noqa: E402
from slimq.cli.main import main as cli_main  # noqa: E402
from slimq.core.errors import CalibrationDataError, ConfigError, NothingToQuantizeError  # noqa: E402
from slimq.qat.capture import PaddedConv2d, capture  # noqa: E402
from slimq.qat.modules import QATConv, QATLinear  # noqa: E402
from slimq.qat.quantizers import ActQuantizer  # noqa: E402
from slimq.qat.testing_models import build  # noqa: E402


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def kl(teacher: torch.Tensor, student: torch.Tensor) -> float:
    return float(F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True,
                          reduction="batchmean"))


@pytest.fixture(scope="module")
def functional(tmp_path_factory):
    """FunctionalNet prepared (auto capture), calibrated like PTQ, converted once."""
    model = build("functional")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qat.QATWarning)  # the token-mixing div and mean stay float
        qmodel = qat.prepare(model, images(2))
    qat.calibrate(qmodel, [images(16, seed=s) for s in (1, 2)], algo="hist", bias_correction=True)
    path = tmp_path_factory.mktemp("functional") / "f.onnx"
    result = qat.convert(qmodel, path, samples=images(48, seed=3))
    return model, qmodel, result


def test_capture_lifts_functional_convs_and_pads_exactly() -> None:
    model = build("functional")
    gm = capture(model, (images(2),))
    x = images(5, seed=1)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))  # the lifted graph computes the same numbers (batch 5: dynamic)
    convs = {name: m for name, m in gm.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(convs) == {"stem", "block.expand", "block.depthwise", "block.project"}
    assert isinstance(convs["stem"], PaddedConv2d) and convs["stem"].pre_pad == (0, 1, 0, 1)  # TF "SAME", stride 2
    assert not isinstance(convs["block.depthwise"], PaddedConv2d) and convs["block.depthwise"].padding == (1, 1)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in gm.modules()) == 4
    assert not [n for n in gm.graph.nodes if "pad" in str(n.target)]


def test_functional_model_runs_fully_int8_in_onnxruntime(functional) -> None:
    _, qmodel, result = functional
    assert qmodel.report.capture == "export" and qmodel.report.int8_mac_share == 1.0
    assert {o.op for o in qmodel.report.mac_ops} == {"Conv", "MatMul", "Gemm"}
    assert result.report.int8_mac_share > 0.999
    ops = qat.ort_optimized_ops(result.path)
    assert ops["com.microsoft:QLinearConv"] == 4 and ops["QLinearMatMul"] == 2 and ops["com.microsoft:QGemm"] == 1
    assert "Pad" not in ops and "Clip" not in ops  # padding folded into Conv pads, ReLU6 into the grid
    details = result.report.details
    assert details["exporter"] == "dynamo" and details["capture"] == "export"
    assert details["fp32_export_max_abs_diff"] < 1e-4
    assert result.artifacts["export_agreement"].fraction_within_step >= 0.999
    assert result.report.agreement[0].cosine > 0.99


def test_module_swap_alone_reaches_no_int8_macs_and_prepare_says_which() -> None:
    with pytest.raises(NothingToQuantizeError, match="min_int8_mac_share") as err:
        qat.prepare(build("functional"), images(2), qat.QATConfig(capture="fx"))
    for name in ("stem", "block.depthwise", "MatMul", "0.0 %"):
        assert name in str(err.value)
    with pytest.warns(qat.QATWarning):
        qmodel = qat.prepare(build("functional"), images(2), qat.QATConfig(capture="fx", min_int8_mac_share=0.0))
    assert qmodel.report.int8_mac_share == 0.0 and qmodel.report.float_macs()[0].op == "MatMul"


def test_captured_batchnorm_trains_live_then_freezes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qat.QATWarning)
        qmodel = qat.prepare(build("functional"), images(2), qat.QATConfig(capture="export"))
    stem = qmodel.net.get_submodule("stem")
    assert isinstance(stem, QATConv) and stem.bn is not None
    before = stem.bn.running_mean.clone()
    qmodel.train()
    qmodel(images(8, seed=4) * 3 + 1)
    assert not torch.equal(stem.bn.running_mean, before)  # live batch statistics in training mode
    qmodel.freeze_bn()
    frozen = stem.bn.running_mean.clone()
    qmodel(images(8, seed=5) * 3 + 1)
    assert torch.equal(stem.bn.running_mean, frozen)


class DeadChannelNet(nn.Module):
    """A conv channel whose BatchNorm gamma is ~0 (a constant output): its int32 bias would overflow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4).eval()
        with torch.no_grad():
            self.bn.weight[0], self.bn.bias[0] = 1e-9, 2.0
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def test_constant_channel_keeps_its_int32_bias_in_range(tmp_path) -> None:
    qmodel = qat.prepare(DeadChannelNet().eval(), images(2))
    qat.calibrate(qmodel, [images(16)])
    result = qat.convert(qmodel, tmp_path / "d.onnx", samples=images(32, seed=1))
    bias = next(m for m in result.model.graph.initializer if m.name.endswith("conv.bias.values"))
    assert np.abs(np.frombuffer(bias.raw_data, dtype=np.int32)).max() <= 2**30
    assert result.artifacts["export_agreement"].fraction_within_step == 1.0


def test_relu6_range_never_exceeds_six_in_float32() -> None:
    q = ActQuantizer("ste", 8, True, 0.9)
    q.cap_range(6.0)
    q._set_range(torch.tensor(7.5))
    scale = q.current_scale()
    assert np.float32(scale.item()) * np.float32(255) <= 6.0 and scale.item() > 6.0 / 255 * (1 - 1e-6)


def test_hist_calibration_and_bias_correction_follow_static_ptq() -> None:
    model = nn.Sequential(nn.Linear(2048, 8)).eval()
    x = torch.randn(64, 2048) + 0.5
    x[0, 0] = 40.0  # one outlier: abs_max keeps it, hist clips it
    ranges = {}
    for algo in ("abs_max", "hist"):
        qmodel = qat.prepare(model, x[:2])
        qat.calibrate(qmodel, [x[:32], x[32:]], algo=algo, bias_correction=algo == "hist")
        ranges[algo] = float(dict(qmodel.quantizers())["act_quant.in_input_1"].range_max())
        layer = next(m for m in qmodel.net.modules() if isinstance(m, QATLinear))
        shift = (F.linear(x, layer.weight_quant(layer.linear.weight), layer.linear.bias) - model(x)).mean(0)
        assert (shift.abs().max() < 1e-4) == (algo == "hist"), (algo, shift)  # the weight-rounding shift is gone
    assert ranges["abs_max"] == pytest.approx(40.0, rel=0.01) and ranges["hist"] < 10.0
    # as static PTQ: tensors with fewer than 1024 values per sample (logits, pooled features) are never clipped
    small = nn.Sequential(nn.Linear(32, 8)).eval()
    xs = torch.randn(256, 32)
    xs[0, 0] = 40.0
    qsmall = qat.prepare(small, xs[:2])
    qat.calibrate(qsmall, [xs], algo="hist")
    assert float(dict(qsmall.quantizers())["act_quant.in_input_1"].range_max()) == pytest.approx(40.0, rel=0.01)
    with pytest.raises(ConfigError, match='Did you mean "hist"'):
        qat.calibrate(qmodel, [x], algo="hsit")


def test_bias_correction_leaves_the_fp32_reference_alone(tmp_path) -> None:
    """The corrected biases compensate weight rounding: the FP32 reference (distillation's teacher, the
    export report's reference) must add the shifts back, also after a checkpoint round trip."""
    from slimq.qat.fidelity import float_network

    model = build("mobilenet").eval()
    x = images(64, seed=8)
    qmodel = qat.prepare(model, x[:2])
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(float_network(qmodel)(x), ref, atol=1e-5)
    qat.calibrate(qmodel, [x[:32], x[32:]], algo="hist", bias_correction=True)
    assert qmodel.bias_corrections and max(float(s.abs().max()) for s in qmodel.bias_corrections.values()) > 1e-3
    with torch.no_grad():
        assert torch.allclose(float_network(qmodel)(x), ref, atol=1e-5)
        path = qat.save_checkpoint(qmodel, tmp_path / "c.pt")
        fresh = qat.load_checkpoint(qat.prepare(model, x[:2]), path)
        assert torch.allclose(float_network(fresh)(x), ref, atol=1e-5)
        assert torch.equal(fresh.eval()(x), qmodel.eval()(x))


def test_distillation_without_labels_moves_the_student_towards_the_teacher() -> None:
    model = build("mobilenet")
    train, held = images(96, seed=6), images(64, seed=7)
    qmodel = qat.prepare(model, train[:2])
    qat.calibrate(qmodel, [train[:48]], algo="hist")
    with torch.no_grad():
        teacher = model(held)
        before = kl(teacher, qmodel.eval()(held))
    result = qat.distill(qmodel, train.numpy(), config=qat.DistillConfig(steps=40, batch_size=16, lr=1e-3))
    with torch.no_grad():
        after = kl(teacher, qmodel.eval()(held))
    assert result.steps == 40 and result.last_loss < result.first_loss
    assert after < 0.7 * before, (before, after)
    with pytest.raises(ConfigError, match='Did you mean "kl"'):
        qat.DistillConfig(loss="kll")
    with pytest.raises(ConfigError, match="not modules of the prepared model"):
        qat.distill(qmodel, train, config=qat.DistillConfig(steps=1, features=("nope",)))
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        qat.DistillConfig(batch_size=0)
    with pytest.raises(CalibrationDataError, match="at least 2 samples"):
        qat.distill(qmodel, train[:1])


def test_distill_stays_the_function_whatever_is_imported_first() -> None:
    import subprocess

    code = ("import slimq.qat as q; q.DistillConfig; import slimq.qat.user_model; import slimq.qat.distillation; "
            "assert callable(q.distill) and q.distill.__name__ == 'distill', q.distill")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_distillation_with_mse_and_feature_matching_from_a_folder(tmp_path) -> None:
    model = build("functional")
    x = images(48, seed=3)
    for i in range(0, 48, 16):
        np.save(tmp_path / f"part{i}.npy", x[i:i + 16].numpy())
    qmodel = qat.prepare(model, x[:2])
    qat.calibrate(qmodel, [x], algo="hist")
    before = {k: v.clone() for k, v in qmodel.state_dict().items() if v.is_floating_point()}
    feature = next(n for n, m in qmodel.net.named_modules() if isinstance(m, QATConv))
    cfg = qat.DistillConfig(steps=6, batch_size=8, lr=1e-3, loss="mse", features=(feature,))
    logged: list[int] = []
    result = qat.distill(qmodel, tmp_path, config=cfg, log=lambda step, loss: logged.append(step))
    assert result.steps == 6 and len(result.losses) == 6 and all(np.isfinite(result.losses)) and logged == [6]
    changed = [k for k, v in qmodel.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed and not qmodel.training  # weights moved; handed back in eval mode
    with pytest.raises(ConfigError, match="leave teacher=None"):
        qat.distill(qmodel, x, teacher=model, config=cfg)


FACTORY = '''
from slimq.qat.testing_models import build


def tiny():
    return build("functional")


def broken():
    return 42
'''


def test_cli_quantizes_a_user_factory_and_a_pt2_program_without_labels(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "user_models.py").write_text(FACTORY, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    np.savez(tmp_path / "calib.npz", input=images(40).numpy())
    out = tmp_path / "u.int8.onnx"
    code = cli_main(["quantize", "qat", "--model", "user_models:tiny", "--calib", "calib.npz", "--distill",
                     "--steps", "3", "--batch-size", "8", "-o", str(out)])
    text = capsys.readouterr().out
    assert code in (0, 3) and out.is_file() and "distill step 3" in text, text
    report = json.loads((tmp_path / "u.int8.onnx.report.json").read_text())
    assert report["macs"]["int8_share"] > 0.999 and report["details"]["capture"] == "export"
    # the speed plan ran by default (a toy model: not timed, every layer int8) and the report says so
    assert any(n.startswith("QAT speed plan: not run (a toy model") for n in report["notes"]), report["notes"]
    assert cli_main(["quantize", "qat", "--model", "user_models:tiny", "--calib", "calib.npz", "--no-speed-guard",
                     "-o", "n.onnx"]) in (0, 3)
    assert not any("speed plan" in n for n in json.loads((tmp_path / "n.onnx.report.json").read_text())["notes"])
    program = torch.export.export(build("functional").eval(), (images(2),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "f.pt2")
    assert cli_main(["quantize", "qat", "--model", "f.pt2", "--calib", "calib.npz", "-o", "p.onnx"]) in (0, 3)
    assert (tmp_path / "p.onnx").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--model", "user_models:tiny"], "needs calibration data: --calib"),
    (["--model", "nowhere_pkg:build", "--calib", "calib.npz"], 'Cannot import module "nowhere_pkg"'),
    (["--model", "user_models:broken", "--calib", "calib.npz"], "returned int, expected a torch nn.Module"),
    (["--model", "user_models:tiny", "--calib", "calib.npz", "--train", "calib.npz"], "add --distill"),
    (["--model", "user_models:tiny", "--calib", "calib.npz", "--epochs", "2"], "belong to the Fashion-MNIST recipe"),
    (["--calib", "calib.npz"], "apply to your own model"),
    (["--no-speed-guard"], "apply to your own model"),
    (["--model", "missing.pt2", "--calib", "calib.npz"], "no such file"),
    (["--model", "corrupt.pt2", "--calib", "calib.npz"], "Cannot load the torch.export program"),
    (["--model", "user_models:nope", "--calib", "calib.npz"], 'has no callable "nope"'),
    (["--model", "user_models:", "--calib", "calib.npz"], "should be module:factory"),
    (["--model", "user_models:tiny", "--calib", "calib.npz", "--size", "16"], "--size expects H,W"),
    (["--model", "user_models:tiny", "--calib", "calib.npz", "--size", "16,16"], "apply to image folders only"),
    (["--model", "user_models:tiny", "--calib", "calib.npz", "--distill", "--steps", "0"],
     "steps must be a positive integer"),
])
def test_cli_user_model_errors(tmp_path, monkeypatch, capsys, argv, message) -> None:
    (tmp_path / "user_models.py").write_text(FACTORY, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    np.savez(tmp_path / "calib.npz", input=images(10).numpy())
    (tmp_path / "corrupt.pt2").write_bytes(b"not a zip archive")
    assert cli_main(["quantize", "qat", *argv, "-o", "x.onnx"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_fixed_batch_program_is_refused_with_the_fix() -> None:
    program = torch.export.export(build("convnet").eval(), (images(2),))
    with pytest.raises(ConfigError, match=r"fixed batch size 2.*Dim\('batch'\)"):
        qat.prepare(program, images(2))
