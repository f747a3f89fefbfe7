"""`slimq demo --quick` end to end (shipped models when present; random-weight stand-ins otherwise)."""

from __future__ import annotations

import json

import pytest

import slimq.zoo as zoo
from slimq.cli.main import main
from slimq.core.errors import ConfigError, ModelLoadError
from slimq.demo import DemoConfig, run_demo


def _assets_present() -> bool:
    try:
        return all(zoo.asset_path(n).is_file() for n in zoo.ZOO_MODELS)
    except ModelLoadError:
        return False


@pytest.mark.skipif(not _assets_present(), reason="Fashion-MNIST demo models are not in src/slimq/assets yet")
def test_demo_quick_with_shipped_models(tmp_path, capsys):
    out = tmp_path / "demo-out"
    # QAT fine-tuning alone takes ~40 s even in quick mode; its recipe has its own tests.
    assert main(["demo", "--quick", "--methods", "static,dynamic", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"outputs go to {out.resolve()}/" in captured.err
    # both requested methods ran: neither may drop out of the demo silently
    assert "INT8 static PTQ: yes" in captured.err and "INT8 dynamic PTQ: yes" in captured.err
    assert "skipped" not in captured.err
    labels = ("FP32", "INT8 static PTQ", "INT8 dynamic PTQ")
    for name in zoo.ZOO_MODELS:
        assert f"| {name} FP32 | " in captured.out
        assert f"| {name} INT8 static PTQ | 1 |" in captured.out and f"| {name} INT8 dynamic PTQ | 1 |" in captured.out
        assert (out / f"{name}.static.int8.onnx").is_file() and (out / f"{name}.dynamic.int8.onnx").is_file()
    payload = json.loads((out / "demo.json").read_text())
    assert len(payload["results"]) == len(zoo.ZOO_MODELS)
    for name, result in zip(zoo.ZOO_MODELS, payload["results"]):
        assert [m["name"] for m in result["models"]] == [f"{name} {label}" for label in labels]
        acc = result["accuracy"]
        fp32, static, dynamic = (acc[f"{name} {label}"]["top1"] for label in labels)
        assert fp32 > 80  # trained models
        assert abs(static - fp32) < 3 and abs(dynamic - fp32) < 3
    assert (out / "demo.md").read_text().strip() == captured.out.strip()
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def stand_in_models(tmp_path, monkeypatch):
    """Random-weight versions of the demo architectures, served in place of the shipped assets."""
    torch = pytest.importorskip("torch")
    from slimq.zoo.fmnist import build_model, export_onnx

    torch.manual_seed(0)
    folder = tmp_path / "assets"
    for name in zoo.ZOO_MODELS:
        export_onnx(build_model(name), folder / f"{name}.onnx")
    monkeypatch.setattr(zoo, "asset_path", lambda name, suffix=".onnx": folder / f"{name}{suffix}")
    return folder


def test_demo_pipeline_on_stand_in_models(stand_in_models, tmp_path, capsys):
    cfg = DemoConfig(out=tmp_path / "o", models=("fmnist_mobilenet",), methods=("static",), quick=True)
    results = run_demo(cfg)
    assert len(results) == 1 and [m.name for m in results[0].models] == [
        "fmnist_mobilenet FP32", "fmnist_mobilenet INT8 static PTQ"]
    assert set(results[0].accuracy["fmnist_mobilenet FP32"]) == {"top1", "top5"}
    assert (cfg.out / "fmnist_mobilenet.static.int8.onnx").is_file()
    assert not (cfg.out / "fmnist_resnet.static.int8.onnx").exists()
    assert "### Speed" in (cfg.out / "demo.md").read_text()


def test_demo_rejects_unknown_method_and_model(tmp_path):
    with pytest.raises(ConfigError, match='Did you mean "static"'):
        run_demo(DemoConfig(out=tmp_path, methods=("statc",)))
    assert main(["demo", "--models", "fmnist_resnett", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
