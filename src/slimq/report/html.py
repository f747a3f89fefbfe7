"""The quantization report as one self-contained HTML page (``<output>.report.html``).

:func:`render_html` turns a :class:`~slimq.report.schema.Report` into a page with no network
references at all (inline CSS, inline SVG drawn by :mod:`slimq.report.svg`, no scripts, no fonts to
fetch): the summary (int8 share, sizes, agreement with FP32, warnings, notes), the ops left in float
and why, and, where the run recorded them in ``details``, the per-layer sensitivity, the SQNR of every
tensor along the network, activation histograms with the chosen clipping, and the accuracy–speed
trade-off of the candidates the accuracy search tried. A section whose data is absent says so.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from slimq.report import svg
from slimq.report.html_style import CSS, METHODS, num, records, version
from slimq.report.schema import Report

SENSITIVITY_TOP = 30
WORST_TENSORS = 10
MAX_HISTOGRAMS = 8


def render_html(report: Report) -> str:
    """One self-contained HTML page for `report` (every text escaped; no external resources)."""
    d: Mapping[str, Any] = report.details if isinstance(report.details, Mapping) else {}
    found = d.get("search")
    search: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    body = [_header(report), _warnings(report), _summary(report, search), _float_ops(report),
            _sensitivity(search, report.method), _tensor_errors(d.get("tensor_errors")),
            _histograms(d.get("histograms")), _tradeoff(search, report.method), _footer(report)]
    title = f"slimq {METHODS.get(report.method, report.method)} report"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


# -- building blocks -------------------------------------------------------------------------------
def _section(anchor: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{escape(lead)}</p>' if lead else ""
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{lead_html}{body}</section>'


def _absent(why: str) -> str:
    return f'<p class="absent">{escape(why)}</p>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], row_classes: Sequence[str] = (),
           numeric: Sequence[int] = ()) -> str:
    """A table; `rows` hold HTML fragments (callers escape text), headers are escaped here.
    Columns in `numeric` are right-aligned and never wrap."""
    cls = [' class="num"' if i in numeric else "" for i in range(len(headers))]
    head = "".join(f"<th{c}>{escape(h)}</th>" for h, c in zip(headers, cls))
    classes = list(row_classes) + [""] * (len(rows) - len(row_classes))
    body = "".join(f'<tr class="{rc}">' + "".join(f"<td{c}>{cell}</td>" for cell, c in zip(r, cls)) + "</tr>"
                   for r, rc in zip(rows, classes))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _f(x: Any, pattern: str = "{:.4f}", none: str = "—") -> str:
    v = num(x)
    if v is None:
        return none
    return "∞" if math.isinf(v) else pattern.format(v)


def _cos(x: Any) -> str:
    """A cosine with enough digits to tell it from 1 (0.999994 is not 1.0000)."""
    v = num(x)
    return _f(v, "{:.6f}" if v is not None and 0.9999 <= v < 1.0 else "{:.4f}")


def _ms(x: Any) -> str:
    return _f(x, "{:.3g}")


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _card(label: str, value: str, sub: str = "", cls: str = "") -> str:
    sub_html = f'<div class="sub">{escape(sub)}</div>' if sub else ""
    size = " long" if len(value) > 12 else ""
    return (f'<div class="card {cls}"><div class="label">{escape(label)}</div>'
            f'<div class="value{size}">{escape(value)}</div>{sub_html}</div>')


def _names(names: Sequence[str], summary: str) -> str:
    items = "".join(f"<li><code>{escape(n)}</code></li>" for n in names)
    return f'<details><summary>{escape(summary)}</summary><ul class="names">{items}</ul></details>'


# -- sections ----------------------------------------------------------------------------------------
def _header(r: Report) -> str:
    nav = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in (
        ("summary", "Summary"), ("float-ops", "Float ops"), ("sensitivity", "Sensitivity"),
        ("sqnr", "SQNR along the network"), ("histograms", "Histograms"), ("tradeoff", "Accuracy vs speed")))
    return (f'<header><h1>slimq report: {escape(METHODS.get(r.method, r.method))}</h1>'
            f'<p class="target">{escape(r.target)}</p><nav>{nav}</nav></header>')


def _warnings(r: Report) -> str:
    if not r.warnings:
        return '<div class="ok">No warnings: the quantized model passed the fidelity check.</div>'
    items = "".join(f"<li>{escape(w)}</li>" for w in r.warnings)
    return f'<div class="warnings" role="alert"><h2>Warnings ({len(r.warnings)})</h2><ul>{items}</ul></div>'


def _cards(r: Report, search: Mapping[str, Any]) -> str:
    m, s = r.macs, r.sizes
    share = f"{m.int8_share * 100:.1f} %" if m.measured else "no MACs found"
    size_from = f"from {_mb(s.fp32_bytes)} FP32" if s.fp32_bytes else ""
    size_from += "" if s.ratio is None else f" ({s.ratio:.3f}×)"
    cards = [_card("Method", METHODS.get(r.method, r.method)),
             _card("INT8 share of MACs", share, f"measured by {m.runtime}"),
             _card("Size", _mb(s.quantized_bytes), size_from),
             _card("Worst output cosine", _cos(r.worst_cosine), f"on {r.agreement_samples} {r.agreement_inputs}")]
    if search:
        met = bool(search.get("met"))
        cards.append(_card("Accuracy search", "budget met" if met else "budget NOT met",
                           str(search.get("budget", "")), "good" if met else "bad"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _agreement(r: Report) -> str:
    rows = [[f"<code>{escape(a.output)}</code>", escape(a.kind.replace("_", " ")), _cos(a.cosine), _f(a.sqnr_db, "{:.1f} dB"),
             _f(a.top1_agreement, "{:.1%}") if a.kind == "class_scores" else "n/a (not class scores)"]
            for a in r.agreement]
    zero = [a.output for a in r.agreement if a.reference_is_zero]
    caption = (f"<p>FP32 vs quantized on {r.agreement_samples} {escape(r.agreement_inputs)}"
               f"{' (in-sample: optimistic)' if r.agreement_in_sample else ''}.</p>")
    note = _absent(f"FP32 output all zero (cosine/SQNR meaningless): {', '.join(zero)}") if zero else ""
    table = _table(["output", "kind", "cosine", "SQNR", "top-1 agreement"], rows, numeric=(2, 3)) if rows else _absent(
        "No agreement was measured.")
    return f"<h3>Agreement with FP32</h3>{caption}{table}{note}"


def _summary(r: Report, search: Mapping[str, Any]) -> str:
    m = r.macs
    where = f"<p>INT8 share measured by <b>{escape(m.runtime)}</b>: {escape(m.note)}</p>" if m.note else ""
    if m.float_mac_nodes:
        where += _names(list(m.float_mac_nodes), f"{len(m.float_mac_nodes)} conv/matmul kernel(s) still in float")
    q = " · ".join(f"{escape(op)} ×{n}" for op, n in sorted(r.quantized_ops.items(), key=lambda kv: -kv[1]))
    quant = f"<p>Quantized ops: {q}</p>" if q else ""
    notes = "".join(f"<li>{escape(n)}</li>" for n in r.notes)
    notes_html = f'<h3>Notes</h3><ul class="notes">{notes}</ul>' if notes else ""
    return _section("summary", "Summary", _cards(r, search) + where + quant + _agreement(r) + notes_html)


def _float_ops(r: Report) -> str:
    groups: dict[str, list[Any]] = defaultdict(list)
    for f in r.float_ops:
        groups[f.reason].append(f)
    rows = []
    for reason, ops in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        kinds = " · ".join(f"{escape(t)} ×{n}" for t, n in Counter(f.op_type for f in ops).most_common())
        names = [f.node + (f" ({f.module})" if f.module else "") for f in ops]
        rows.append([f"<b>{len(ops)}</b>", kinds, escape(reason), _names(names, "node names")])
    body = _table(["count", "op types", "why it stays float", "nodes"], rows, numeric=(0,)) if rows else _absent(
        "No op on the data path was reported as left in float.")
    return _section("float-ops", f"Ops left in float ({len(r.float_ops)})", body,
                    "Grouped by reason; open a group for its node names.")


def _no_search(method: str) -> str:
    if method != "static":
        return f"Not measured: {METHODS.get(method, method)} runs no accuracy search (static PTQ with a budget does)."
    return "Not measured: no accuracy budget was given, so no search ran (give --min-cosine, --min-agreement or --max-drop)."


def _sensitivity(search: Mapping[str, Any], method: str) -> str:
    title = "Sensitivity: recovery from keeping one layer float"
    if not search:
        return _section("sensitivity", title, _absent(_no_search(method)))
    items = [(str(e.get("unit", e.get("node", "?"))), v) for e in records(search.get("sensitivity"))
             if (v := num(e.get("recovery"))) is not None and math.isfinite(v)]
    if not items:
        return _section("sensitivity", title, _absent(
            "Not needed: the search met the budget without mixed precision, so no layer was probed."))
    items.sort(key=lambda kv: -kv[1])
    shown = items[:SENSITIVITY_TOP]
    lead = (f"How much of the budget deficit each layer wins back when it alone stays float (higher: more "
            f"sensitive). Top {len(shown)} of {len(items)} layers probed.")
    return _section("sensitivity", title, svg.hbar_chart(shown, "recovery (deficit reduction)"), lead)


def _tensor_errors(raw: Any) -> str:
    title = "SQNR along the network"
    rows = records(raw)
    if not rows:
        return _section("sqnr", title, _absent("Not recorded: this report has no per-tensor errors."))
    values = [num(e.get("sqnr_db")) for e in rows]
    finite = sorted((v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v))
    worst = {i for _, i in finite[:5]}
    points = [svg.Point(i, v if v is not None and math.isfinite(v) else None, _tensor_title(e, v),
                        "fails" if i in worst else "plain") for i, (e, v) in enumerate(zip(rows, values))]
    chart = svg.series_chart(points, "tensor (graph order)", "SQNR (dB)")
    worst_rows = [[str(i), f"<code>{escape(str(rows[i].get('tensor', '?')))}</code>",
                   escape(str(rows[i].get("producer", ""))), _f(v, "{:.1f} dB"), _cos(rows[i].get("cosine"))]
                  for v, i in finite[:WORST_TENSORS]]
    table = _table(["#", "tensor", "producer", "SQNR", "cosine"], worst_rows, numeric=(0, 3, 4))
    lead = ("FP32 vs quantized for every tensor both graphs share, in graph order (hover a point for its "
            "tensor). A drop shows where quantization error enters.")
    return _section("sqnr", title, chart + f"<h3>Lowest SQNR</h3>{table}", lead)


def _tensor_title(e: Mapping[str, Any], v: float | None) -> str:
    sqnr = "identical to FP32" if v is None or math.isinf(v) else f"SQNR {v:.1f} dB"
    return f"{e.get('tensor', '?')} ({e.get('producer', '?')}): {sqnr}, cosine {_cos(e.get('cosine'))}"


def _histogram(h: Mapping[str, Any]) -> str:
    counts = [max(num(c) or 0.0, 0.0) for c in h.get("counts", ()) if not isinstance(c, (list, dict))]
    upper = num(h.get("upper"))
    if not counts or upper is None or not math.isfinite(upper) or upper <= 0:
        return ""
    markers = [svg.Marker(v, label, colour, dashed, legend) for key, labels, colour, dashed, legend in (
        ("observed", ("observed min", "observed max"), svg.INK, True, "observed min/max (dashed)"),
        ("range", ("range min", "range max"), svg.RED, False, "chosen int8 range"))
        for v, label in zip(_pair(h.get(key)), labels)]
    name, rng = str(h.get("tensor", "?")), _pair(h.get("range"))
    chart = svg.histogram_chart(counts, upper, markers, f"activation histogram of {name}")
    chosen = f" · range [{rng[0]:.4g}, {rng[1]:.4g}]" if rng else ""
    return (f'<figure><figcaption><code>{escape(name)}</code> · SQNR {_f(h.get("sqnr_db"), "{:.1f} dB", "∞")}'
            f"{escape(chosen)}</figcaption>{chart}</figure>")


def _pair(x: Any) -> tuple[float, ...]:
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        return ()
    a, b = num(x[0]), num(x[1])
    return () if a is None or b is None else (a, b)


def _histograms(raw: Any) -> str:
    title = "Activation histograms and the chosen clipping"
    figures = [f for f in (_histogram(h) for h in records(raw)[:MAX_HISTOGRAMS]) if f]
    if not figures:
        return _section("histograms", title, _absent("Not recorded: this report has no activation histograms."))
    lead = ("The tensors with the lowest SQNR: calibration values (log count) with the observed min/max "
            "(dashed) and the int8 range chosen (red). Values outside the red lines are clipped.")
    return _section("histograms", title, f'<div class="grid">{"".join(figures)}</div>', lead)


def _tradeoff(search: Mapping[str, Any], method: str) -> str:
    title = "Accuracy vs speed of the candidates tried"
    if not search:
        return _section("tradeoff", title, _absent(_no_search(method)))
    trace = records(search.get("trace"))
    picked = search.get("chosen")
    chosen: Mapping[str, Any] = picked if isinstance(picked, Mapping) else {}
    body = _search_line(search, chosen) + _tradeoff_chart(trace, chosen, search) + _trace_table(trace, chosen)
    return _section("tradeoff", title, body)


def _search_line(search: Mapping[str, Any], chosen: Mapping[str, Any]) -> str:
    met = "met" if search.get("met") else "NOT met"
    head = (f"Budget <b>{escape(str(search.get('budget', '?')))}</b>: <b>{met}</b> after "
            f"{escape(str(search.get('candidates', '?')))} candidates in {_f(search.get('seconds'), '{:.0f}')} s.")
    lat, fp32 = num(chosen.get("latency_ms")), num(search.get("fp32_latency_ms"))
    speed = "" if not (lat and fp32) else (f", {fp32 / lat:.2f}× faster than FP32 ({_ms(fp32)} ms)" if fp32 >= lat
                                           else f", {lat / fp32:.2f}× slower than FP32 ({_ms(fp32)} ms)")
    pick = (f" Chosen: step {escape(str(chosen.get('step', '?')))}, <b>{escape(str(chosen.get('change', '')))}</b> "
            f"({escape(str(chosen.get('setting', '')))}), {_f(chosen.get('int8_share'), '{:.1%}')} of MACs int8, "
            f"{_ms(lat)} ms{speed}.") if chosen else ""
    floats = [str(f) for f in search.get("float_layers", ()) or ()]
    names = _names(floats, f"{len(floats)} layer(s) kept float") if floats else ""
    return f"<p>{head}{pick}</p>{names}"


def _tradeoff_chart(trace: list[Mapping[str, Any]], chosen: Mapping[str, Any], search: Mapping[str, Any]) -> str:
    timed = [t for t in trace if num(t.get("latency_ms")) is not None]
    if not timed:
        return _absent("No candidate was timed.")
    by_metric = all(num(t.get("metric_drop")) is not None for t in timed)
    key, ylabel = ("metric_drop", "metric drop vs FP32") if by_metric else ("deficit", "budget deficit (≤ 0 meets)")
    points = [svg.Point(num(t.get("latency_ms")) or 0.0, num(t.get(key)), _trial_title(t, key),
                        "chosen" if chosen and t.get("step") == chosen.get("step") else
                        "meets" if t.get("meets") else "fails", str(t.get("step", "")) if len(timed) <= 60 else "")
              for t in timed]
    fp32 = num(search.get("fp32_latency_ms"))
    vlines = [svg.Marker(fp32, "FP32 latency", svg.INK, True)] if fp32 else []
    hlines = [] if by_metric else [svg.Marker(0.0, "budget: below this line meets it", svg.GREEN, True)]
    chart = svg.scatter_chart(points, "latency (ms, 1 thread)", ylabel, vlines, hlines)
    return chart + ('<p class="lead">Each timed candidate, labelled with its step in the trace below (hover for '
                    'what changed). Left and low is better.</p>')


def _trial_title(t: Mapping[str, Any], key: str) -> str:
    return (f"step {t.get('step')} ({t.get('phase')}): {t.get('change')}; {key} {_f(t.get(key))}, "
            f"cosine {_cos(t.get('cosine'))}, {_ms(t.get('latency_ms'))} ms, "
            f"int8 {_f(t.get('int8_share'), '{:.1%}')}")


def _trace_table(trace: list[Mapping[str, Any]], chosen: Mapping[str, Any]) -> str:
    if not trace:
        return _absent("The search recorded no candidates.")
    rows, classes = [], []
    for t in trace:
        floats = [str(f) for f in t.get("floats", ()) or ()]
        rows.append([escape(str(t.get("step", ""))), escape(str(t.get("phase", ""))), escape(str(t.get("change", ""))),
                     escape(str(t.get("setting", ""))), str(len(floats)), _cos(t.get("cosine")),
                     _f(t.get("agreement"), "{:.1%}"), _f(t.get("metric_drop"), "{:.4g}"), _f(t.get("deficit"), "{:.3f}"),
                     "✔" if t.get("meets") else "✘", _ms(t.get("latency_ms")),
                     _f(t.get("int8_share"), "{:.1%}"), _f(t.get("seconds"), "{:.1f}")])
        classes.append("chosen" if chosen and t.get("step") == chosen.get("step") else
                       "probe" if t.get("phase") == "sensitivity" else "")
    headers = ["step", "phase", "what changed", "setting", "float layers", "cosine", "top-1 agr.", "metric drop",
               "deficit", "meets", "latency ms", "int8 MACs", "s"]
    return f'<h3>Search trace</h3><div class="scroll">{_table(headers, rows, classes, numeric=(0, 4, 5, 6, 7, 8, 10, 11, 12))}</div>'


def _footer(r: Report) -> str:
    return (f"<footer>Written by slimq {escape(version())} ({escape(r.schema)}). Every number here is also in "
            "the JSON report beside this page.</footer>")
