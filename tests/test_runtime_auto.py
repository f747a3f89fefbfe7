"""The fastest runtime, measured: Predictor(backend="auto"), bench --backend auto, and `slimq cpu`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimq import testing
from slimq.cli.main import main
from slimq.runtime import select
from slimq.runtime.backends import BackendError, openvino_available
from slimq.runtime.cpu import RUNTIME_NOTES, CpuInfo
from slimq.runtime.select import choose_runtime, interleaved_ms, timing_feed
from slimq.runtime.session import Predictor

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="OpenVINO is not installed")


def _fake_loader(ms: dict[str, float], fail: tuple[str, ...] = ()):
    """Runs that take `ms[backend]` of CPU time (busy loops), or raise BackendError for `fail`."""
    import time

    def load(model, backend, threads):
        if backend in fail:
            raise BackendError(f"{backend} cannot compile it")

        def run(feeds):
            end = time.process_time() + ms[backend] / 1e3
            while time.process_time() < end:
                pass
        return run
    return load


def test_choose_runtime_picks_the_fastest():
    m = testing.conv_net()
    choice = choose_runtime(m, _fake_loader({"ort": 4.0, "openvino": 1.0}), backends=("ort", "openvino"))
    assert choice.backend == "openvino" and choice.ms["ort"] > 2 * choice.ms["openvino"]
    assert choice.line().startswith("runs fastest on OpenVINO")
    choice = choose_runtime(m, _fake_loader({"ort": 1.0, "openvino": 4.0}), backends=("ort", "openvino"))
    assert choice.backend == "ort"


def test_a_runtime_that_cannot_load_the_model_is_skipped():
    choice = choose_runtime(testing.conv_net(), _fake_loader({"ort": 1.0}, fail=("openvino",)),
                            backends=("ort", "openvino"))
    assert choice.backend == "ort" and not choice.ms and "only one runtime" in choice.note


def test_without_openvino_auto_falls_back_to_onnxruntime_with_a_note(monkeypatch):
    monkeypatch.setattr(select, "openvino_available", lambda: False)
    p = Predictor(testing.conv_net(), backend="auto")
    assert p.backend == "ort" and p.choice is not None
    assert "OpenVINO is not installed" in p.choice.note and "pip install" in p.choice.note


@needs_openvino
def test_predictor_auto_measures_both_and_runs():
    m = testing.conv_net()
    feeds = testing.random_inputs(m, 1)[0]
    p = Predictor(m, backend="auto", example=feeds)
    assert p.choice is not None and set(p.choice.ms) == {"ort", "openvino"}
    assert p.backend == min(p.choice.ms, key=p.choice.ms.get)
    ref = Predictor(m).run(feeds)[0]
    np.testing.assert_allclose(p.run(feeds)[0], ref, rtol=1e-3, atol=1e-4)


def test_timing_feed_and_cpu_clock():
    m = testing.conv_net()
    feed = timing_feed(m)
    assert feed["input"].shape == (1, 3, 16, 16)
    run = Predictor(m).run
    (wall,), (cpu,) = interleaved_ms([run], feed, rounds=1, min_time=0), interleaved_ms([run], feed, rounds=1,
                                                                                         min_time=0, clock="cpu")
    assert wall > 0 and cpu >= 0


def _bench(tmp_path, capsys, backend: str) -> str:
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    import onnx

    from slimq.core.config import StaticConfig
    from slimq.static.method import quantize_static

    m = testing.conv_net()
    onnx.save(m, fp32)
    quantize_static(str(fp32), testing.random_inputs(m, 20), StaticConfig(show_progress=False), int8)
    capsys.readouterr()
    assert main(["bench", str(fp32), str(int8), "--backend", backend, "--threads", "1", "--min-time", "0",
                 "--iters", "3", "--rounds", "1", "--warmup", "1"]) == 0
    return capsys.readouterr().out


@needs_openvino
def test_bench_auto_runs_every_runtime_and_names_the_fastest(tmp_path, capsys):
    out = _bench(tmp_path, capsys, "auto")
    assert "| openvino |" in out and "| ort |" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("- auto: int8 at 1 thread(s) runs fastest on")]
    assert len(lines) == 1 and ("OpenVINO" in lines[0] or "onnxruntime" in lines[0])


def test_bench_auto_without_openvino_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(select, "openvino_available", lambda: False)
    out = _bench(tmp_path, capsys, "auto")
    assert "- auto: OpenVINO is not installed" in out and "| openvino |" not in out


@pytest.mark.parametrize("flags,cls", [(dict(amx=True, vnni=True, avx512=True), "AMX"),
                                       (dict(vnni=True, avx512=True), "AVX-512 VNNI"),
                                       (dict(vnni=True), "AVX-VNNI"), (dict(avx2=True), "AVX2 (no VNNI)"),
                                       (dict(arm_dot=True), "ARM dot product"), ({}, "no int8 SIMD")])
def test_cpu_class_and_what_it_means_per_runtime(flags, cls):
    base = dict(model="test cpu", cores=4, avx2=False, avx512=False, vnni=False, amx=False, arm_dot=False)
    info = CpuInfo(**{**base, **flags})
    assert info.cpu_class == cls
    assert set(info.runtimes) == {"onnxruntime", "OpenVINO"} and info.runtimes == RUNTIME_NOTES[cls]
    text = info.format()
    assert text.splitlines()[0] == f"test cpu (4 cores): {cls}" and "OpenVINO:" in text


def test_cpu_command(capsys):
    assert main(["cpu"]) == 0
    assert ": " in capsys.readouterr().out.splitlines()[0]
    assert main(["cpu", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["cpu_class"] in RUNTIME_NOTES and "onnxruntime" in d["runtimes"]


def test_bench_cpu_clock(tmp_path, capsys):
    from slimq.bench.results import TimingConfig
    from slimq.core.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown clock"):
        TimingConfig(clock="sundial")
    fp32 = tmp_path / "fp32.onnx"
    import onnx

    onnx.save(testing.conv_net(), fp32)
    assert main(["bench", str(fp32), "--threads", "1", "--clock", "cpu", "--min-time", "0", "--iters", "3",
                 "--rounds", "1", "--warmup", "0"]) == 0
    assert "timing in process CPU time" in capsys.readouterr().out
