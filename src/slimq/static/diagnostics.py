"""What the HTML report draws for static PTQ: per-tensor SQNR along the network and, for the worst
tensors, their calibration histograms with the range that was chosen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from slimq.graph.plan import QuantPlan
from slimq.report.agreement import tensor_errors
from slimq.static.calibrate import Calibration

Feeds = dict[str, np.ndarray]
HIST_BINS = 64  # per side


def _signed_histogram(obs: Any) -> tuple[float, list[int]] | None:
    h = getattr(obs, "hist", None)
    if h is None or h.upper <= 0:
        return None
    factor = h.bins // HIST_BINS
    pos = h.counts.reshape(HIST_BINS, factor).sum(axis=1)
    neg = h.neg_counts.reshape(HIST_BINS, factor).sum(axis=1)
    return float(h.upper), [int(c) for c in np.concatenate([neg[::-1], pos])]


def diagnostics(fp32: onnx.ModelProto, int8: onnx.ModelProto, plan: QuantPlan, calib: Calibration,
                feeds: Sequence[Feeds], worst: int = 6) -> dict[str, Any]:
    """{"tensor_errors": [...in graph order], "histograms": [...worst calibrated tensors]}."""
    errors = tensor_errors(fp32, int8, list(feeds)[:4])
    rows = [{"tensor": e.tensor, "producer": e.producer, "sqnr_db": round(e.sqnr_db, 2) if np.isfinite(e.sqnr_db)
             else None, "cosine": round(e.cosine, 6)} for e in errors]
    roots = {t: plan.activations[t] for t in plan.activations}
    ranked = sorted((e for e in errors if roots.get(e.tensor) in calib.observers and np.isfinite(e.sqnr_db)),
                    key=lambda e: e.sqnr_db)
    hists: list[dict[str, Any]] = []
    seen: set[str] = set()
    for e in ranked:
        root = roots[e.tensor]
        if root in seen or len(hists) >= worst:
            continue
        seen.add(root)
        obs, params = calib.observers[root], plan.params.get(root)
        hist = _signed_histogram(obs)
        if hist is None or params is None:
            continue
        upper, counts = hist
        hists.append({"tensor": root, "sqnr_db": round(e.sqnr_db, 2), "upper": upper, "counts": counts,
                      "observed": [float(obs.min), float(obs.max)], "range": [params.rmin, params.rmax]})
    return {"tensor_errors": rows, "histograms": hists}
