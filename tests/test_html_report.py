"""The HTML report (<output>.report.html): written beside the JSON for every method, self-contained,
escaped, every section present or saying why not; and rendered by headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import slimq
from slimq import testing
from slimq.core.budget import Budget
from slimq.report.agreement import tensor_errors
from slimq.report.html import render_html
from slimq.report.schema import FloatOp, Report
from slimq.report.svg import Scale, nice_ticks
from slimq.runtime.exposed import ExposedRunner

ROOT = Path(__file__).resolve().parents[1]
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr"}
SVG_LEAVES = {"rect", "circle", "line", "polyline", "path"}  # written self-closing (<rect .../>)
HEADINGS = ("Summary", "Ops left in float", "Sensitivity", "SQNR along the network", "Activation histograms",
            "Accuracy vs speed")


class Page(HTMLParser):
    """Checks that every element is closed in order, and collects headings, text, titles and tags."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.headings: list[str] = []
        self.titles: list[str] = []
        self.feed(html)
        self.close()
        assert self.stack == [], f"unclosed elements: {self.stack}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in SVG_LEAVES | VOID, f"unexpected self-closing <{tag}/>"
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.stack and self.stack[-1] in ("h1", "h2", "h3"):
            self.headings.append(data)
        if self.stack and self.stack[-1] == "title":
            self.titles.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def _quiet(**kw) -> slimq.StaticConfig:
    return slimq.StaticConfig(show_progress=False, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, slimq.QuantResult]:
    d = tmp_path_factory.mktemp("html")
    conv, mlp = testing.conv_net(), testing.matmul_net()
    met = _quiet(budget=Budget(min_cosine=0.9999, time_budget=20))
    unmet = _quiet(budget=Budget(min_cosine=0.99999, time_budget=20))  # mixed precision, still not met
    return {"static": slimq.quantize(conv, met, testing.random_inputs(conv, 32), d / "conv.onnx"),
            "unmet": slimq.quantize(mlp, unmet, testing.random_inputs(mlp, 32), d / "mlp.onnx"),
            "dynamic": slimq.quantize(mlp, slimq.DynamicConfig(), None, d / "dyn.onnx")}


def _page_of(result: slimq.QuantResult) -> tuple[str, Page]:
    path = result.path.with_name(result.path.name + ".report.html")
    html = path.read_text(encoding="utf-8")
    return html, Page(html)


def _no_network(html: str) -> None:
    low = html.lower()
    for ref in ("http://", "https://", "<script", "<link", "<img", "@import", "url(", "src="):
        assert ref not in low, ref


@pytest.mark.parametrize("name", ["static", "unmet", "dynamic"])
def test_every_method_writes_a_self_contained_page_beside_the_json(runs, name):
    result = runs[name]
    html, page = _page_of(result)
    assert result.report_path.is_file() and html.startswith("<!DOCTYPE html>")
    _no_network(html)
    for heading in HEADINGS:
        assert any(h.startswith(heading) for h in page.headings), (heading, page.headings)
    assert html == render_html(result.report)  # the page is the report's, sizes included
    assert f"{result.report.sizes.quantized_bytes / 1e3:.1f} kB" in page.all_text
    for row in result.report.agreement:
        shown = f"{row.cosine:.6f}" if 0.9999 <= row.cosine < 1 else f"{row.cosine:.4f}"  # never "1.0000" if not 1
        assert shown in page.all_text and row.output in page.all_text


def test_static_search_page_shows_the_trade_off_and_the_trace(runs):
    report = runs["static"].report
    search = report.details["search"]
    _, page = _page_of(runs["static"])
    # SQNR along the network + the worst tensors' histograms + the trade-off scatter (met at once: no sensitivity)
    assert page.count("svg") == 2 + len(report.details["histograms"])
    assert "budget met" in page.all_text and search["budget"] in page.all_text
    assert "no layer was probed" in page.all_text
    chosen_rows = [a for t, a in page.tags if t == "tr" and a.get("class") == "chosen"]
    assert len(chosen_rows) == 1
    assert search["chosen"]["change"] in page.all_text
    trace_rows = [a for t, a in page.tags if t == "tr"]
    assert len(trace_rows) >= len(search["trace"]) + 1  # header + one row per candidate (+ agreement table)
    assert any(t.startswith(f"step {search['chosen']['step']} ") for t in page.titles)
    assert report.details["tensor_errors"][0]["tensor"] in page.all_text


def test_unmet_budget_page_has_prominent_warning_and_sensitivity_chart(runs):
    report = runs["unmet"].report
    search = report.details["search"]
    assert not search["met"] and search["sensitivity"] and report.warnings
    html, page = _page_of(runs["unmet"])
    assert html.index('class="warnings"') < html.index('id="summary"')  # warnings come first
    assert "budget NOT met" in page.all_text
    # sensitivity bars + trade-off scatter + SQNR line + histograms
    assert page.count("svg") == 3 + len(report.details["histograms"])
    for entry in search["sensitivity"]:
        assert any(t.startswith(entry["unit"] + ":") for t in page.titles)
    timed = [t for t in search["trace"] if t["latency_ms"] is not None]
    dots = [t for t in page.titles if t.startswith("step ")]
    assert len(dots) == len(timed)
    assert search["chosen"]["change"] in page.all_text


def test_dynamic_page_says_why_search_sections_are_empty(runs):
    _, page = _page_of(runs["dynamic"])
    assert page.count("svg") == 0
    assert page.all_text.count("dynamic PTQ runs no accuracy search") == 2  # sensitivity, trade-off
    assert "Not recorded: this report has no per-tensor errors." in page.all_text
    assert "onnxruntime" in page.all_text  # where the int8 share was measured


def _histogram(x: np.ndarray, rng: tuple[float, float], sqnr: float, name: str) -> dict:
    upper = float(max(np.abs(x).max(), *np.abs(rng)))
    pos = np.histogram(x[x >= 0], 64, (0, upper))[0]
    neg = np.histogram(-x[x < 0], 64, (0, upper))[0]
    return {"tensor": name, "sqnr_db": sqnr, "upper": upper, "counts": [int(c) for c in neg[::-1]] + pos.tolist(),
            "observed": [float(x.min()), float(x.max())], "range": list(rng)}


def test_per_tensor_sqnr_and_histograms_from_real_tensors(runs):
    result = runs["static"]
    fp32, feeds = testing.conv_net(), testing.random_inputs(testing.conv_net(), 4)
    errs = tensor_errors(fp32, onnx.load(result.path), feeds)
    rows = [{"tensor": e.tensor, "producer": e.producer, "cosine": e.cosine,
             "sqnr_db": None if math.isinf(e.sqnr_db) else e.sqnr_db} for e in errs]
    worst = sorted((e for e in errs if math.isfinite(e.sqnr_db)), key=lambda e: e.sqnr_db)[:2]
    runner = ExposedRunner(fp32, [e.tensor for e in worst], feeds[0], 2**26)
    values = dict(runner.run(feeds[0]))
    hists = [_histogram(values[e.tensor].ravel(), (-1.0, 2.0), e.sqnr_db, e.tensor) for e in worst]
    report = dataclasses.replace(result.report, details={**result.report.details, "tensor_errors": rows,
                                                         "histograms": hists})
    page = Page(render_html(report))
    assert page.count("svg") == 1 + 1 + len(hists)  # trade-off, SQNR line, one per histogram
    for e in errs:  # every tensor has a hover title, in graph order
        assert any(t.startswith(f"{e.tensor} ({e.producer}):") for t in page.titles)
    hover = [t.split(" (")[0] for t in page.titles if ", cosine " in t and not t.startswith("step ")]
    assert hover == [e.tensor for e in errs]
    assert page.all_text.index(worst[0].tensor) < page.all_text.index(worst[1].tensor)  # worst first
    assert sum(t.startswith("chosen int8 range") for t in page.titles) == 0  # legend, not titles
    assert sum(t.startswith("range min:") for t in page.titles) == len(hists)
    assert "range [-1, 2]" in page.all_text


def test_node_names_are_escaped_everywhere(runs):
    evil = "<b>x&y</b>\"'"
    base = runs["unmet"].report
    search = {**base.details["search"], "sensitivity": [{"node": evil, "recovery": 0.5}],
              "chosen": {**base.details["search"]["chosen"], "change": f"keep {evil} float"}}
    details = {**base.details, "search": search, "tensor_errors": [{"tensor": evil, "producer": "Conv",
                                                                     "sqnr_db": 12.0, "cosine": 0.9}]}
    report = dataclasses.replace(base, float_ops=(FloatOp(evil, "Add", f"because {evil}"),), details=details,
                                 warnings=(f"warning about {evil}",), notes=(evil,))
    html = render_html(report)
    assert "<b>x&y" not in html and "&lt;b&gt;x&amp;y&lt;/b&gt;" in html
    page = Page(html)  # still well formed
    assert page.all_text.count(evil) >= 5  # the parser reads the literal name back
    assert not [a for t, a in page.tags if t == "b" and a]


def test_malformed_details_degrade_instead_of_failing(runs):
    base = runs["static"].report
    details = {"search": {"trace": [1, {"step": 0, "latency_ms": "fast"}], "sensitivity": "none", "chosen": 3},
               "tensor_errors": [{"tensor": "t", "sqnr_db": "inf"}, "junk"],
               "histograms": [{"tensor": "h", "counts": [1, 2], "upper": -1}, {"counts": "no"}]}
    page = Page(render_html(dataclasses.replace(base, details=details)))
    assert "No candidate was timed." in page.all_text
    assert "Not recorded: this report has no activation histograms." in page.all_text
    assert any(t.startswith("t (?): identical to FP32") for t in page.titles)
    Page(render_html(dataclasses.replace(base, details={})))
    Page(render_html(dataclasses.replace(base, agreement=(), float_ops=())))


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = nice_ticks(-0.52, 0.21)
    assert ticks[0] >= -0.52 and ticks[-1] <= 0.21 and 0.0 in ticks and len(ticks) >= 3
    assert nice_ticks(5.0, 5.0) and nice_ticks(float("nan"), 1.0) == []
    s = Scale(0.0, 10.0, 100.0, 200.0)
    assert (s(5.0), s(-3.0), s(99.0)) == (150.0, 100.0, 200.0)


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="Chromium is not installed (apt-get install chromium; scripts/setup.sh does it)")
def test_headless_chromium_renders_the_page(runs, tmp_path):
    report = runs["unmet"].report
    src = tmp_path / "m.onnx.report.json"
    src.write_text(report.to_json(), encoding="utf-8")
    assert Report.from_dict(json.loads(src.read_text())).to_json() == report.to_json()
    png = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "report_screenshot.py"), str(src), str(png),
                           "--height", "1600"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert png.is_file() and (tmp_path / "shot.html").read_text(encoding="utf-8") == render_html(report)
    with Image.open(png) as im:
        assert im.size == (1280, 1600)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank"
    assert shutil.which(CHROMIUM)
