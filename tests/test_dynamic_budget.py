"""Accuracy control for dynamic PTQ (slimq.dynamic.budget): the per-layer fallback driven by the same Budget and
measure as static PTQ's search, its trace in the report, the best model written when a budget cannot be met."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_dynamic import DYN, fragile_row

from slimq import testing
from slimq.cli.main import main
from slimq.core.budget import Budget
from slimq.core.errors import ConfigError
from slimq.dynamic.graph import Choice
from slimq.dynamic.method import DynamicConfig, quantize_dynamic
from slimq.report.html import render_html


def test_budget_drives_the_fallback_and_the_trace_is_in_the_report(tmp_path):
    cfg = DynamicConfig(mode="dynamic-activation", measure_kernels=False, budget=Budget(min_cosine=0.99))
    res = quantize_dynamic(fragile_row(), cfg, tmp_path / "q.onnx")
    assert {d.node: d.choice for d in res.decisions} == {"mm1": Choice.DYNAMIC, "mm2": Choice.WEIGHT_ONLY}
    assert not res.report.warnings  # the budget is met: exit 0
    search = json.loads((tmp_path / "q.onnx.report.json").read_text())["details"]["search"]
    assert search["met"] is True and search["budget"] == Budget(min_cosine=0.99).describe()
    trace = search["trace"]
    assert trace[0]["phase"] == "configured" and trace[0]["meets"] is False and trace[0]["cosine"] < 0.99
    assert search["chosen"]["meets"] is True and search["chosen"]["cosine"] >= 0.99
    assert len(trace) >= 3 and search["candidates"] == len(trace)
    assert "budget met" in render_html(res.report)  # the HTML page shows the dynamic search like the static one


def test_a_task_metric_with_max_drop_is_met_by_demotion():
    x = np.random.default_rng(3).standard_normal((64, 1, 8, 16)).astype(np.float32)
    fp32_pred = None

    def agreement(predict) -> float:  # top-1 agreement (%) of row-wise argmax with the FP32 model's
        nonlocal fp32_pred
        pred = np.stack([predict({"x": s})[0].argmax(-1) for s in x])
        fp32_pred = pred if fp32_pred is None else fp32_pred
        return float((pred == fp32_pred).mean() * 100)

    cfg = replace_budget(Budget(max_drop=1.0, metric="agreement"))
    res = quantize_dynamic(fragile_row(), cfg, metric=agreement)
    search = res.report.details["search"]
    assert search["met"] and search["trace"][0]["metric_drop"] > 1.0 and search["chosen"]["metric_drop"] <= 1.0
    assert res.demotions and not res.report.warnings


def replace_budget(budget: Budget) -> DynamicConfig:
    return DynamicConfig(mode=DYN.mode, measure_kernels=False, budget=budget)


def test_an_unmeetable_budget_writes_the_best_model_found_and_says_so(tmp_path):
    out = tmp_path / "q.onnx"
    cfg = DynamicConfig(weight_bits=4, budget=Budget(min_cosine=0.9999999))
    res = quantize_dynamic(testing.matmul_net(), cfg, out)
    assert out.exists() and res.report.details["search"]["met"] is False
    assert res.report.warnings and "budget NOT met" in res.report.warnings[0]
    assert any(d.choice is not Choice.FLOAT for d in res.decisions)  # never "nothing"


def test_cli_budget_flags_and_exit_codes(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(testing.matmul_net().SerializeToString())
    rc = main(["quantize", "dynamic", str(model), "-o", str(tmp_path / "q.onnx"), "--weight-bits", "4",
               "--min-cosine", "0.9999999", "--min-agreement", "0.5"])
    assert rc == 3
    search = json.loads((tmp_path / "q.onnx.report.json").read_text())["details"]["search"]
    assert search["met"] is False and "agreement" in search["budget"]
    with pytest.raises(ConfigError, match="--time-budget is not used by dynamic PTQ"):
        from slimq.cli.dynamic import dynamic_config
        from slimq.cli.main import build_parser
        dynamic_config(build_parser().parse_args(["quantize", "dynamic", str(model), "-o", "x.onnx",
                                                  "--time-budget", "5"]))
