"""Prototype of the proposed KL fix, registered at run time as the extra algorithm "KL_fixed".

Nothing in slimq is edited: ``register()`` adds an entry to ``slimq.core.observers.ALGORITHMS``
in this process only, so the benchmarks can show the fix next to the shipped KL with the
same command. The fix (see docs/static_ptq.md, "KL collapses"):

1. search clipping points only in the upper half of the histogram, as PaddleSlim's
   ``cal_kl_threshold`` does (slimq starts at ``levels`` bins, i.e. 1/8 of the range for
   non-negative tensors, and KL then over-clips spiky histograms: ReLU zeros, flat backgrounds);
2. never clip tensors with few values per sample (squeeze-excitation vectors): their rare
   large values are persistent channels, not noise.
"""

from __future__ import annotations

import numpy as np

from slimq.core import observers
from slimq.core.observers import Algorithm, ObserverSettings, TensorObserver

MIN_VALUES_TO_CLIP = 1024  # per sample


def _kl_upper_half(obs: TensorObserver, s: ObserverSettings, batch_size: int) -> float:
    h, counts = obs.hist, obs.hist.counts.astype(np.float64)
    if counts.sum() / max(obs.batches * batch_size, 1) < MIN_VALUES_TO_CLIP:
        return max(-obs.min, obs.max)
    levels = min(observers._levels(obs, s), h.bins)
    best, best_i = np.inf, h.bins
    for i in observers._candidates(h, max(levels, h.bins // 2)):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        if p.sum() == 0:
            continue
        q = np.concatenate([observers._spread(c) for c in np.array_split(counts[:i], levels)])
        kl = observers._kl(p / p.sum(), q / max(q.sum(), 1e-12))
        if kl < best:
            best, best_i = kl, i
    return float(h.edges[best_i])


def register(batch_size: int = 8) -> str:
    """Add "KL_fixed" to slimq's algorithm table for this process; returns its name."""
    observers.ALGORITHMS["KL_fixed"] = Algorithm(
        "KL_fixed", True, lambda obs, s: _kl_upper_half(obs, s, batch_size))
    return "KL_fixed"
