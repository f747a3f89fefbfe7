"""Markdown tables and a PNG chart of benchmark results."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

from slimq.bench.results import BenchResult
from slimq.core.errors import ConfigError
from slimq.io.atomic import Stage


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table with right-aligned numeric columns (all but the first)."""
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


FRACTION_METRICS = ("cosine", "mean_iou", "map_iou")  # in [0, 1]: shown with 4 decimals


def _fmt(metric: str, x: float, signed: bool = False) -> str:
    digits = 4 if metric in FRACTION_METRICS else 2
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def accuracy_table(results: Sequence[BenchResult]) -> str:
    """Model, each metric, and each metric's difference to the first model of its result."""
    pairs = [(r, r.accuracy) for r in results if r.accuracy]
    if not pairs:
        return ""
    metrics = list(next(iter(pairs[0][1].values())))
    ev = pairs[0][0].evaluator or {}
    if any(list(next(iter(acc.values()))) != metrics for _, acc in pairs):
        return "\n\n".join(accuracy_table([r]) for r, _ in pairs)
    rows = []
    for _, acc in pairs:
        first = next(iter(acc))
        ref = acc[first]
        for name, vals in acc.items():
            diffs = ["—" if name == first else _fmt(m, vals[m] - ref[m], True) for m in metrics]
            rows.append([name, *(_fmt(m, vals[m]) for m in metrics), *diffs])
    better = "higher" if ev.get("higher_is_better", True) else "lower"
    note = f"\n\n{ev.get('name', 'task')}: {ev.get('primary_metric', metrics[0])} is the primary metric ({better} is " \
           f"better); Δ is the difference to the first model of each group, in the metric's units."
    return format_table(["model", *metrics, *(f"Δ {m}" for m in metrics)], rows) + note


def _labels(result: BenchResult) -> list[str]:
    """Row labels in entry order (every model on the first backend, then on the next, ...)."""
    return list(dict.fromkeys(s.model for s in result.speed))


def speed_table(results: Sequence[BenchResult]) -> str:
    """Model, threads, samples/s, p50/p90 batch latency, speed-up vs the first model, size.

    With several backends: a backend column, and the speed-up vs the first model on the same backend.
    """
    multi = any(len(r.backends) > 1 for r in results)
    rows = []
    for r in results:
        sizes, order = {m.name: m.size_bytes for m in r.models}, _labels(r)
        for s in sorted(r.speed, key=lambda s: (s.threads, order.index(s.model))):
            row = [*([s.model_name or s.model, s.backend] if multi else [s.model]), str(s.threads),
                   f"{s.samples_per_s:,.1f}", f"{s.p50_ms:.3f}", f"{s.p90_ms:.3f}", f"{s.ratio:.2f}x"]
            row += [f"{s.backend_ratio:.2f}x"] if multi else []
            rows.append(row + [f"{sizes[s.model_name or s.model] / 1e6:.2f}"])
    first = results[0].models[0].name if results else "first"
    headers = ["model", *(["backend"] if multi else []), "threads", "samples/s", "p50 ms", "p90 ms", "speed-up",
               *([f"vs {first} same backend"] if multi else []), "size MB"]
    return format_table(headers, rows)


def settings_line(result: BenchResult) -> str:
    s, cpu = result.settings, result.machine.get("cpu", {})
    run_on = "" if result.backends == ["ort"] else f"backends: {', '.join(result.backends)}; "
    clock = " in process CPU time" if s.get("clock") == "cpu" else ""
    return (f"batch {s.get('batch')}, data: {s.get('data')}; {run_on}timing{clock}: {s.get('rounds')} "
            f"interleaved rounds of >= {s.get('min_time')} s and >= {s.get('min_iters')} runs per model, "
            f"{s.get('warmup')} warm-up runs; "
            f"{cpu.get('model', '?')} ({cpu.get('cores', '?')} cores), onnxruntime "
            f"{result.machine.get('onnxruntime', '?')}"
            + (f", openvino {result.machine['openvino']}" if result.machine.get("openvino") else "")
            + f", {result.machine.get('date', '')}")


def results_markdown(results: Sequence[BenchResult]) -> str:
    """Accuracy table (if any), speed table and one settings line."""
    parts = []
    acc = accuracy_table(results)
    if acc:
        parts += ["### Accuracy", "", acc, ""]
    parts += ["### Speed", "", speed_table(results), "", settings_line(results[0])]
    failed = [f"- not run: {label}: {why}" for r in results for label, why in r.failed.items()]
    parts += ["", *failed] if failed else []
    notes = [f"- {n}" for r in results for n in r.notes]
    parts += ["", *notes] if notes else []
    return "\n".join(parts)


def result_markdown(result: BenchResult) -> str:
    return results_markdown([result])


def plot_results(results: Sequence[BenchResult], path: str | os.PathLike) -> Path:
    """Bar chart of samples/s per model and thread count, one panel per result, written atomically."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("Drawing the chart needs matplotlib: pip install 'slimq[bench]'.") from None
    path = Path(path)
    fig = Figure(figsize=(max(6.0, 2.2 * max(len(r.models) for r in results)), 3.6 * len(results)))
    FigureCanvasAgg(fig)
    for k, r in enumerate(results):
        ax = fig.add_subplot(len(results), 1, k + 1)
        names = _labels(r)
        counts = sorted({s.threads for s in r.speed})
        width = 0.8 / len(counts)
        for j, t in enumerate(counts):
            xs = [i + (j - (len(counts) - 1) / 2) * width for i in range(len(names))]
            vals = [r.speed_of(n, t).samples_per_s for n in names]
            bars = ax.bar(xs, vals, width, label=f"{t} thread{'s' if t > 1 else ''}")
            for b, n in zip(bars, names):
                ax.annotate(f"{r.speed_of(n, t).ratio:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=8)
        ticks = [textwrap.fill(n.removeprefix(f"{r.title} ") if r.title else n, 18) for n in names]
        ax.set_xticks(range(len(names)), ticks, fontsize=8)
        ax.set_ylabel("samples/s")
        ax.set_title(r.title or f"batch {r.settings.get('batch')}", fontsize=10)
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
    fig.tight_layout()
    with Stage(path) as stage:
        fig.savefig(stage.path(), dpi=110, format="png")
        stage.commit()
    return path
