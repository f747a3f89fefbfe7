"""Style and tolerant value readers for the HTML report (:mod:`slimq.report.html`).

The report's ``details`` come from JSON written by any slimq version (or edited by hand), so the
readers here never raise: a value that is not what a section expects reads as absent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from importlib import metadata
from typing import Any

METHODS = {"static": "static PTQ", "dynamic": "dynamic PTQ", "qat": "QAT"}

# System fonts only: nothing is fetched.
CSS = """
:root { --ink:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --blue:#2563eb; --red:#dc2626;
        --green:#16a34a; --orange:#ea580c; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 40px; }
header h1 { margin:0 0 2px; font-size:26px; }
header .target { margin:0 0 10px; color:var(--muted); }
nav { display:flex; flex-wrap:wrap; gap:6px 16px; padding-bottom:12px; border-bottom:1px solid var(--line); }
nav a { color:var(--blue); text-decoration:none; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:16px 20px; margin:18px 0; }
h2 { font-size:19px; margin:0 0 8px; }
h3 { font-size:15px; margin:16px 0 6px; }
p { margin:6px 0; }
.lead { color:var(--muted); }
.absent { color:var(--muted); font-style:italic; }
.warnings { background:#fef2f2; border:2px solid var(--red); border-radius:8px; padding:12px 20px; margin:18px 0; }
.warnings h2 { color:var(--red); }
.warnings li { margin:4px 0; }
.ok { background:#f0fdf4; border:1px solid #86efac; color:#166534; border-radius:8px; padding:10px 16px; margin:18px 0; }
.cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(200px, 1fr)); gap:12px; margin:4px 0 12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:#fcfcfd; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .value { font-size:20px; font-weight:600; }
.card .value.long { font-size:16px; padding-top:4px; }
.card .sub { color:var(--muted); font-size:12px; overflow-wrap:anywhere; }
.card.bad { border-color:var(--red); } .card.bad .value { color:var(--red); }
.card.good .value { color:var(--green); }
table { border-collapse:collapse; width:100%; margin:6px 0; font-size:13px; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f3f4f6; font-weight:600; position:sticky; top:0; }
td { overflow-wrap:break-word; }
td.num, th.num { white-space:nowrap; text-align:right; }
td code { overflow-wrap:anywhere; }
tr.chosen td { background:#fff7ed; font-weight:600; }
tr.probe td { color:var(--muted); }
code { font-family:ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size:12px; }
details summary { cursor:pointer; color:var(--blue); white-space:nowrap; }
ul.names { columns:3 260px; margin:6px 0; padding-left:18px; font-size:12px; }
ul.notes li { margin:3px 0; }
.scroll { max-height:520px; overflow:auto; border:1px solid var(--line); border-radius:6px; }
.scroll table { margin:0; }
svg.chart { width:100%; height:auto; display:block; margin:6px 0; font-family:inherit; }
.grid { display:grid; grid-template-columns:repeat(auto-fit, minmax(480px, 1fr)); gap:14px; }
figure { margin:0; border:1px solid var(--line); border-radius:6px; padding:8px 10px; }
figcaption { font-size:13px; overflow-wrap:anywhere; }
footer { color:var(--muted); font-size:12px; margin-top:24px; }
"""


def num(x: Any) -> float | None:
    """A number from a JSON value ("inf"/"nan" strings included); None for anything else."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        v = float(x)
    elif isinstance(x, str):
        try:
            v = float(x)
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(v) else v


def records(x: Any) -> list[Mapping[str, Any]]:
    """The mapping entries of a JSON list (anything else: none)."""
    if not isinstance(x, (list, tuple)):
        return []
    return [e for e in x if isinstance(e, Mapping)]


def version() -> str:
    try:
        return metadata.version("slimq")
    except metadata.PackageNotFoundError:
        return "(version unknown)"
