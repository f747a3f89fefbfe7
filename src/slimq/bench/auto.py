"""`--backend auto` for benchmarks: run every installed runtime, then say which one is fastest per model."""

from __future__ import annotations

from collections.abc import Sequence

from slimq.bench.results import BenchResult
from slimq.runtime.select import AUTO, RUNTIME_NAMES, installed_backends, missing_note


def expand_auto(names: Sequence[str]) -> tuple[list[str], bool]:
    """Backend names with "auto" replaced by every installed runtime; and whether auto was asked for."""
    if AUTO not in names:
        return list(names), False
    out = [n for n in names if n != AUTO]
    return list(dict.fromkeys([*installed_backends(), *out])), True


def fastest_notes(result: BenchResult) -> list[str]:
    """Per model and thread count: the runtime with the most samples/s, and by how much it beats the others."""
    notes = []
    for model in dict.fromkeys(s.model_name or s.model for s in result.speed):
        for threads in sorted({s.threads for s in result.speed}):
            rows = [s for s in result.speed if (s.model_name or s.model) == model and s.threads == threads]
            if not rows:
                continue
            best = max(rows, key=lambda s: s.samples_per_s)
            others = ", ".join(f"{best.samples_per_s / s.samples_per_s:.2f}x {RUNTIME_NAMES.get(s.backend, s.backend)}"
                               for s in rows if s is not best)
            vs = f" ({others})" if others else ""
            notes.append(f"auto: {model} at {threads} thread(s) runs fastest on "
                         f"{RUNTIME_NAMES.get(best.backend, best.backend)}, {best.samples_per_s:,.1f} samples/s{vs}")
    missing = missing_note()
    return notes + ([f"auto: {missing}"] if missing else [])
