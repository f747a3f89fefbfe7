"""Small inline-SVG charts for the HTML report: no scripts, no external resources.

Every chart is one ``<svg>`` string with a viewBox (it scales with the page); hover text comes from
``<title>`` elements. All text passed in is escaped here, so callers hand over raw strings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

BLUE, GREEN, GREY, ORANGE, RED, INK, MUTED, GRID = (
    "#2563eb", "#16a34a", "#9ca3af", "#ea580c", "#dc2626", "#1f2937", "#6b7280", "#e5e7eb")


@dataclass(frozen=True)
class Scale:
    """Linear map from data [lo, hi] to pixels [p0, p1]; values outside are clamped to the ends."""

    lo: float
    hi: float
    p0: float
    p1: float

    def __call__(self, v: float) -> float:
        span = (self.hi - self.lo) or 1.0
        return self.p0 + (min(max(v, self.lo), self.hi) - self.lo) / span * (self.p1 - self.p0)


@dataclass(frozen=True)
class Frame:
    """A chart's size and the margins around its plot area."""

    width: float
    height: float
    left: float = 64.0
    right: float = 16.0
    top: float = 16.0
    bottom: float = 44.0

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:
        return self.height - self.bottom

    @property
    def y1(self) -> float:
        return self.top


@dataclass(frozen=True)
class Marker:
    """A labelled vertical or horizontal reference line."""

    at: float
    label: str
    colour: str = RED
    dashed: bool = False
    legend: str = ""  # the legend entry for this kind of line, where a chart shows a legend instead of labels


@dataclass(frozen=True)
class Point:
    """One plotted value; `y` None means "no finite value" (drawn at the top, in grey)."""

    x: float
    y: float | None
    title: str
    style: str = "plain"  # plain | meets | fails | chosen
    tag: str = ""  # a short label drawn beside the point (scatter charts)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 10) for k in range(first, first + n * 3) if k * step <= hi + step * 1e-9]


def padded(lo: float, hi: float, frac: float = 0.06) -> tuple[float, float]:
    """A range slightly wider than [lo, hi] (and never empty)."""
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * frac
    return lo - pad, hi + pad


def fmt(v: float, digits: int = 3) -> str:
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.{digits}g}"
    return f"{v:.1e}"


def text(x: float, y: float, s: str, anchor: str = "start", size: int = 12, colour: str = INK,
         extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{colour}"{extra}>'
            f"{escape(s)}</text>")


def line(x1: float, y1: float, x2: float, y2: float, colour: str, width: float = 1.0, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
            f'stroke-width="{width}"{dash}/>')


def svg(frame: Frame, label: str, body: Sequence[str]) -> str:
    return (f'<svg class="chart" viewBox="0 0 {frame.width:.0f} {frame.height:.0f}" '
            f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>{"".join(body)}</svg>')


def _yticks(ys: Scale, log_y: bool) -> list[tuple[float, str]]:
    if log_y:  # values are log10(count): ticks at powers of ten
        return [(float(k), f"{10 ** k:,}") for k in range(0, int(math.floor(ys.hi)) + 1)]
    return [(t, fmt(t)) for t in nice_ticks(ys.lo, ys.hi)]


def axes(f: Frame, xs: Scale, ys: Scale, xlabel: str, ylabel: str, *, integer_x: bool = False,
         log_y: bool = False) -> list[str]:
    """Grid lines, tick labels and axis titles for a plot area."""
    out = [f'<rect x="{f.x0:.1f}" y="{f.y1:.1f}" width="{f.x1 - f.x0:.1f}" height="{f.y0 - f.y1:.1f}" '
           f'fill="#fff" stroke="{GRID}"/>']
    for t, label in _yticks(ys, log_y):
        y = ys(t)
        out += [line(f.x0, y, f.x1, y, GRID), text(f.x0 - 6, y + 4, label, "end", 11, MUTED)]
    for t in nice_ticks(xs.lo, xs.hi, 8):
        if integer_x and t != int(t):
            continue
        x = xs(t)
        out += [line(x, f.y0, x, f.y0 + 4, MUTED), text(x, f.y0 + 17, fmt(t), "middle", 11, MUTED)]
    out.append(text((f.x0 + f.x1) / 2, f.height - 6, xlabel, "middle", 12, MUTED))
    cy = (f.y0 + f.y1) / 2
    out.append(text(14, cy, ylabel, "middle", 12, MUTED, f' transform="rotate(-90 14 {cy:.1f})"'))
    return out


def legend(f: Frame, items: Sequence[tuple[str, str]]) -> list[str]:
    """A row of coloured squares with labels, right-aligned above the plot area."""
    out, x, y = [], f.x1, f.y1 - 20
    for colour, label in reversed(items):
        x -= 6.5 * len(label) + 30
        out += [f'<rect x="{x:.1f}" y="{y:.1f}" width="10" height="10" fill="{colour}"/>',
                text(x + 14, y + 9, label, "start", 11, INK)]
    return out


def vmarkers(f: Frame, xs: Scale, markers: Sequence[Marker], labels: bool = True) -> list[str]:
    out = []
    for i, m in enumerate(markers):
        x = xs(m.at)
        out.append(line(x, f.y0, x, f.y1, m.colour, 1.5, m.dashed))
        out.append(f"<g><title>{escape(m.label)}: {fmt(m.at, 4)}</title>"
                   f'<rect x="{x - 3:.1f}" y="{f.y1:.1f}" width="6" height="{f.y0 - f.y1:.1f}" fill="transparent"/></g>')
        if labels and m.label and i < 4:
            right = x > (f.x0 + f.x1) / 2
            out.append(text(x - 4 if right else x + 4, f.y1 + 14 + 13 * i, m.label, "end" if right else "start", 10,
                            m.colour))
    return out


def hbar_chart(items: Sequence[tuple[str, float]], xlabel: str, width: float = 1100, label_px: float = 330) -> str:
    """Horizontal bars, one row per (label, value), labels on the left (long ones shortened)."""
    row = 20.0
    f = Frame(width, 30 + row * len(items) + 44, left=label_px, top=20)
    lo, hi = min(0.0, *(v for _, v in items)), max(0.0, *(v for _, v in items))
    xs = Scale(lo, hi if hi > lo else lo + 1.0, f.x0, f.x1 - 60)
    out = [text((f.x0 + f.x1) / 2, f.height - 6, xlabel, "middle", 12, MUTED)]
    for t in nice_ticks(xs.lo, xs.hi, 6):
        out += [line(xs(t), f.y1, xs(t), f.y0, GRID), text(xs(t), f.y0 + 16, fmt(t), "middle", 11, MUTED)]
    for i, (name, v) in enumerate(items):
        y = f.y1 + 4 + i * row
        a, b = sorted((xs(0.0), xs(v)))
        short = name if len(name) <= 46 else name[:21] + "…" + name[-22:]
        out.append(f"<g><title>{escape(name)}: {fmt(v, 4)}</title>"
                   f'<rect x="{a:.1f}" y="{y:.1f}" width="{max(b - a, 1):.1f}" height="{row - 6:.1f}" fill="{BLUE}"/>'
                   + text(f.x0 - 8, y + row - 9, short, "end", 12)
                   + text(b + 4, y + row - 9, fmt(v, 3), "start", 11, MUTED) + "</g>")
    out.append(line(xs(0.0), f.y1, xs(0.0), f.y0, INK))
    return svg(f, xlabel, out)


def series_chart(points: Sequence[Point], xlabel: str, ylabel: str, cap: float = 80.0, width: float = 1100) -> str:
    """Values along an ordered axis (x = position), a line through the finite ones; every position
    has a full-height hover target with its title. Values above `cap` are drawn at the cap."""
    f = Frame(width, 300, top=34)
    finite = [p.y for p in points if p.y is not None]
    lo, hi = padded(min(finite, default=0.0), min(max(finite, default=1.0), cap))
    xs, ys = Scale(-0.5, len(points) - 0.5, f.x0, f.x1), Scale(lo, hi, f.y0, f.y1)
    out = axes(f, xs, ys, xlabel, ylabel, integer_x=True)
    path = " ".join(f"{xs(i):.1f},{ys(p.y):.1f}" for i, p in enumerate(points) if p.y is not None)
    out.append(f'<polyline points="{path}" fill="none" stroke="{BLUE}" stroke-width="1.2" opacity="0.6"/>')
    col = (f.x1 - f.x0) / max(len(points), 1)
    for i, p in enumerate(points):
        x, y = xs(i), f.y1 + 4 if p.y is None else ys(p.y)
        colour = GREY if p.y is None else RED if p.style == "fails" else BLUE
        out.append(f"<g><title>{escape(p.title)}</title>"
                   f'<rect x="{x - col / 2:.2f}" y="{f.y1:.1f}" width="{col:.2f}" height="{f.y0 - f.y1:.1f}" '
                   f'fill="transparent"/><circle cx="{x:.1f}" cy="{y:.1f}" r="{3.2 if p.style == "fails" else 2.2}" '
                   f'fill="{colour}"/></g>')
    out += legend(f, [(BLUE, ylabel), (RED, "worst"), (GREY, "identical to FP32")])
    return svg(f, f"{ylabel} by {xlabel}", out)


def histogram_chart(counts: Sequence[float], upper: float, markers: Sequence[Marker], label: str) -> str:
    """Bars of log10(count) over [-upper, upper] (bins in order), with vertical reference lines."""
    f = Frame(540, 240, left=70, top=28, bottom=40)
    logs = [math.log10(c) if c >= 1 else None for c in counts]
    top = max((v for v in logs if v is not None), default=1.0)
    xs, ys = Scale(-upper, upper, f.x0, f.x1), Scale(-0.3, max(top, 1.0) * 1.08, f.y0, f.y1)
    out = axes(f, xs, ys, "activation value", "count (log)", log_y=True)
    w, step = (f.x1 - f.x0) / max(len(counts), 1), 2 * upper / max(len(counts), 1)
    for i, v in enumerate(logs):
        if v is None:
            continue
        y = ys(v)
        out.append(f"<g><title>[{fmt(-upper + i * step, 4)}, {fmt(-upper + (i + 1) * step, 4)}): "
                   f'{counts[i]:,.0f}</title><rect x="{f.x0 + i * w:.2f}" y="{y:.1f}" width="{max(w - 0.6, 0.6):.2f}" '
                   f'height="{f.y0 - y:.1f}" fill="{BLUE}" opacity="0.75"/></g>')
    keys = list(dict.fromkeys((m.colour, m.legend) for m in markers if m.legend))
    return svg(f, label, out + vmarkers(f, xs, markers, labels=False) + legend(f, keys))


def _dot(x: float, y: float, style: str) -> str:
    if style == "chosen":
        return (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" stroke="{ORANGE}" stroke-width="2.5"/>'
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{ORANGE}"/>')
    colour = GREEN if style == "meets" else GREY
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}" fill-opacity="0.8" stroke="#fff"/>'


def _tags(tags: Sequence[tuple[float, float, str]], cell: float = 10.0) -> list[str]:
    """Point labels; points that land on (nearly) the same pixel share one label ("3, 5, 7")."""
    groups: dict[tuple[int, int], list[tuple[float, float, str]]] = {}
    for x, y, tag in tags:
        groups.setdefault((round(x / cell), round(y / cell)), []).append((x, y, tag))
    out = []
    for members in groups.values():
        x, y, _ = members[0]
        names = [t for _, _, t in members]
        label = ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} +{len(names) - 3}"
        out.append(text(x + 9, y - 7, label, "start", 10, MUTED))
    return out


def scatter_chart(points: Sequence[Point], xlabel: str, ylabel: str, vlines: Sequence[Marker] = (),
                  hlines: Sequence[Marker] = (), width: float = 1100) -> str:
    """Candidates as dots (meets: green, fails: grey, chosen: orange ring), with reference lines."""
    f = Frame(width, 380, top=34)
    xv = [p.x for p in points] + [m.at for m in vlines]
    yv = [p.y for p in points if p.y is not None] + [m.at for m in hlines]
    xs = Scale(*padded(min(xv, default=0.0), max(xv, default=1.0)), f.x0, f.x1)
    ys = Scale(*padded(min(yv, default=0.0), max(yv, default=1.0)), f.y0, f.y1)
    out = axes(f, xs, ys, xlabel, ylabel)
    for m in hlines:
        y = ys(m.at)
        out += [line(f.x0, y, f.x1, y, m.colour, 1.5, m.dashed), text(f.x0 + 6, y - 5, m.label, "start", 10, m.colour)]
    out += vmarkers(f, xs, vlines)
    shown = sorted((p for p in points if p.y is not None), key=lambda p: p.style == "chosen")
    out += [f"<g><title>{escape(p.title)}</title>{_dot(xs(p.x), ys(p.y), p.style)}</g>" for p in shown
            if p.y is not None]
    out += _tags([(xs(p.x), ys(p.y), p.tag) for p in shown if p.tag and p.y is not None])
    out += legend(f, [(GREEN, "meets the budget"), (GREY, "does not"), (ORANGE, "chosen")])
    return svg(f, f"{ylabel} vs {xlabel}", out)
