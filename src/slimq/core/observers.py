"""Activation observers as (per-batch reduction) x (aggregation across batches).

A :class:`TensorObserver` keeps only what its algorithm needs:
running min/max, the per-batch abs-max series (sum and count), and for the
histogram algorithms a streaming histogram of |x| with a fixed number of bins
that re-bins by powers of two when the range grows. Memory per tensor is
O(bins), never O(activations).

Each algorithm turns those statistics into a clipping threshold T on |x|;
the final range is the observed [min, max] clipped to [-T, T].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from slimq.core.errors import CalibrationDataError, ConfigError, unknown_choice


class StreamingHistogram:
    """Histogram of the magnitudes |x| over [0, R] with `bins` bins, kept separately for x >= 0
    (`counts`) and x < 0 (`neg_counts`); R doubles as needed (bins merge pairwise)."""

    def __init__(self, bins: int = 2048) -> None:
        if bins < 16 or bins & (bins - 1):
            raise ValueError(f"histogram bins must be a power of two >= 16, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.neg_counts = np.zeros(bins, dtype=np.int64)
        self.upper = 0.0

    @property
    def abs_counts(self) -> np.ndarray:
        return self.counts + self.neg_counts

    def update(self, x: np.ndarray) -> None:
        absx = np.abs(x).ravel()
        m = float(absx.max(initial=0.0))
        if m <= 0.0 and self.upper == 0.0:
            self.counts[0] += absx.size
            return
        if self.upper == 0.0:
            self.upper = m
        elif m > self.upper:
            self._grow(m)
        idx = np.minimum((absx * (self.bins / self.upper)).astype(np.int64), self.bins - 1)
        neg = x.ravel() < 0
        if neg.any():
            self.neg_counts += np.bincount(idx[neg], minlength=self.bins)
            idx = idx[~neg]
        self.counts += np.bincount(idx, minlength=self.bins)

    def _grow(self, m: float) -> None:
        factor = 2 ** int(np.ceil(np.log2(m / self.upper)))
        self.upper *= factor
        for counts in (self.counts, self.neg_counts):
            if factor >= self.bins:
                total = counts.sum()
                counts[:] = 0
                counts[0] = total
                continue
            merged = counts.reshape(-1, factor).sum(axis=1)
            counts[:] = 0
            counts[: merged.size] = merged

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.upper, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2


class TensorObserver:
    """Streaming statistics of one tensor across calibration batches."""

    def __init__(self, histogram_bins: int | None = None) -> None:
        self.min = np.inf
        self.max = -np.inf
        self.absmax_sum = 0.0
        self.batches = 0
        self.values = 0
        self.samples = 0
        self.hist = StreamingHistogram(histogram_bins) if histogram_bins else None

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        x = np.asarray(x, dtype=np.float32)
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CalibrationDataError(
                "An intermediate tensor became NaN or Inf during calibration. "
                "Check the calibration data preprocessing (value range, dtype) and that the FP32 model is healthy."
            )
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.absmax_sum += max(-lo, hi)
        self.batches += 1
        self.values += x.size
        self.samples += x.shape[0] if x.ndim >= 2 else 1  # axis 0 is the batch
        if self.hist is not None:
            self.hist.update(x)

    @property
    def seen(self) -> bool:
        return self.batches > 0

    @property
    def histogram(self) -> StreamingHistogram:
        """The |x| histogram; only observers made for a histogram algorithm keep one."""
        if self.hist is None:
            raise ConfigError(
                "This observer keeps no histogram, but a histogram algorithm (hist, KL, mse, emd) needs one. "
                "Create it with make_observer(algorithm, settings) for that algorithm."
            )
        return self.hist


@dataclass(frozen=True)
class ObserverSettings:
    """Algorithm parameters (only `hist` reads hist_percent)."""

    hist_percent: float = 0.9999
    bins: int = 2048
    levels: int = 256  # integer levels of the activation type
    symmetric: bool = False  # symmetric activations spend half the levels on negative values
    # tensors with fewer values per sample (squeeze-excitation vectors, pooled features) are never
    # clipped: their rare large values are persistent channels, not noise (0: always clip)
    min_values_to_clip: int = 0
    # hist/mse on asymmetric types: choose the two clipping points separately instead of one
    # threshold on |x| (off by default: on PP-OCRv4 rec it lost to the |x| threshold)
    two_sided: bool = False


def _levels(obs: "TensorObserver", s: ObserverSettings) -> int:
    """Quantization levels that fall on [0, T] for this tensor."""
    return s.levels if (obs.min >= 0 and not s.symmetric) else s.levels // 2


def _threshold_abs_max(obs: TensorObserver, _: ObserverSettings) -> float:
    return max(-obs.min, obs.max)


def _threshold_avg(obs: TensorObserver, _: ObserverSettings) -> float:
    return obs.absmax_sum / obs.batches


def _threshold_percentile(obs: TensorObserver, s: ObserverSettings) -> float:
    h = obs.histogram
    return _percentile(h, h.abs_counts, s.hist_percent)


def _percentile(h: StreamingHistogram, counts: np.ndarray, p: float) -> float:
    cdf = np.cumsum(counts) / max(counts.sum(), 1)
    i = int(np.searchsorted(cdf, p))
    return float(h.edges[min(i + 1, h.bins)])


def _candidates(h: StreamingHistogram, start: int, count: int = 128) -> np.ndarray:
    return np.unique(np.linspace(start, h.bins, count).astype(np.int64))


def _threshold_kl(obs: TensorObserver, s: ObserverSettings) -> float:
    """Entropy calibration: minimise KL(P || Q) over clipping points in the upper half of the
    histogram, as PaddleSlim does; starting lower over-clips spiky (ReLU-zero) histograms."""
    h = obs.histogram
    counts = h.abs_counts.astype(np.float64)
    levels = min(_levels(obs, s), h.bins)
    best, best_i = np.inf, h.bins
    for i in _candidates(h, max(levels, h.bins // 2)):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        if p.sum() == 0:
            continue
        chunks = np.array_split(counts[:i], levels)
        q = np.concatenate([_spread(c) for c in chunks])
        kl = _kl(p / p.sum(), q / max(q.sum(), 1e-12))
        if kl < best:
            best, best_i = kl, i
    return float(h.edges[best_i])


def _spread(chunk: np.ndarray) -> np.ndarray:
    nz = chunk > 0
    out = np.zeros_like(chunk)
    if nz.any():
        out[nz] = chunk.sum() / nz.sum()
    return out


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    q = np.where(q > 0, q, 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _qdq_centers(centers: np.ndarray, t: float, levels: int) -> np.ndarray:
    step = t / (levels - 1)
    return np.minimum(np.rint(centers / step) * step, t)


def _threshold_mse(obs: TensorObserver, s: ObserverSettings) -> float:
    """Threshold minimising the expected squared quantization error over the histogram."""
    h = obs.histogram
    counts, c = h.abs_counts.astype(np.float64), h.centers
    levels = _levels(obs, s)
    errs = [(np.sum(counts * (c - _qdq_centers(c, h.edges[i], levels)) ** 2), i) for i in _candidates(h, 8)]
    return float(h.edges[min(errs)[1]])


def _threshold_emd(obs: TensorObserver, s: ObserverSettings) -> float:
    """PaddleSlim's `emd`: match mean and std of the quantized distribution to the original."""
    h = obs.histogram
    counts, c = h.abs_counts.astype(np.float64), h.centers
    levels = _levels(obs, s)
    n = max(counts.sum(), 1.0)
    mean, std = np.sum(counts * c) / n, np.sqrt(np.sum(counts * c**2) / n - (np.sum(counts * c) / n) ** 2)
    best, best_i = np.inf, h.bins
    for i in _candidates(h, 8):
        qc = _qdq_centers(c, h.edges[i], levels)
        qm = np.sum(counts * qc) / n
        qs = np.sqrt(max(np.sum(counts * qc**2) / n - qm**2, 0.0))
        d = abs(qm - mean) + abs(qs - std)
        if d < best:
            best, best_i = d, i
    return float(h.edges[best_i])


def _side_errors(counts: np.ndarray, centers: np.ndarray, steps: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Squared rounding + clipping error of one side of the histogram, for each (step, limit) pair."""
    q = np.minimum(np.rint(centers[None, :] / steps[:, None]) * steps[:, None], limits[:, None])
    return np.sum(counts[None, :] * (centers[None, :] - q) ** 2, axis=1)


def _magnitude_candidates(h: StreamingHistogram, bound: float) -> np.ndarray:
    c = h.edges[_candidates(h, 8)]
    return np.append(c[c < bound], bound)


def _range_mse_asymmetric(obs: TensorObserver, s: ObserverSettings) -> tuple[float, float]:
    """[lo, hi] minimising the expected squared error of `levels` levels spread over [lo, hi]
    (asymmetric grids: the two clipping points are chosen separately, alternating three times)."""
    h = obs.histogram
    c = h.centers
    pos, neg = h.counts.astype(np.float64), h.neg_counts.astype(np.float64)
    hi_c, lo_c = _magnitude_candidates(h, max(obs.max, 0.0)), _magnitude_candidates(h, max(-obs.min, 0.0))
    hi, lo = hi_c[-1], lo_c[-1]
    if hi + lo <= 0.0:
        return obs.min, obs.max
    for _ in range(3):
        his = hi_c[hi_c + lo > 0]
        steps = (his + lo) / (s.levels - 1)
        hi = his[np.argmin(_side_errors(pos, c, steps, his) + _side_errors(neg, c, steps, np.full_like(his, lo)))]
        los = lo_c[lo_c + hi > 0]
        steps = (los + hi) / (s.levels - 1)
        lo = los[np.argmin(_side_errors(neg, c, steps, los) + _side_errors(pos, c, steps, np.full_like(los, hi)))]
    return -float(lo), float(hi)


def _range_percentile_asymmetric(obs: TensorObserver, s: ObserverSettings) -> tuple[float, float]:
    """The `hist_percent` percentile of each side's magnitudes, for asymmetric grids."""
    h = obs.histogram
    hi = _percentile(h, h.counts, s.hist_percent) if h.counts.any() else 0.0
    lo = -_percentile(h, h.neg_counts, s.hist_percent) if h.neg_counts.any() else 0.0
    return lo, hi


@dataclass(frozen=True)
class Algorithm:
    """A calibration algorithm: which statistics it needs and how it picks the range.

    `threshold` gives a clipping magnitude T (range [-T, T] within the observed one);
    `asymmetric_range`, where given, is used instead for asymmetric integer types (u8) when
    `ObserverSettings.two_sided` is set,
    whose grid need not be centred on zero.
    """

    name: str
    needs_histogram: bool
    threshold: Callable[[TensorObserver, ObserverSettings], float] | None  # None: plain min/max
    asymmetric_range: Callable[[TensorObserver, ObserverSettings], tuple[float, float]] | None = None


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("abs_max", False, _threshold_abs_max),
        Algorithm("min_max", False, None),
        Algorithm("avg", False, _threshold_avg),
        Algorithm("hist", True, _threshold_percentile, _range_percentile_asymmetric),
        Algorithm("KL", True, _threshold_kl),
        Algorithm("mse", True, _threshold_mse, _range_mse_asymmetric),
        Algorithm("emd", True, _threshold_emd),
    )
}


def get_algorithm(name: str) -> Algorithm:
    """Look up an algorithm by name (case-insensitive), with a did-you-mean error."""
    by_lower = {k.lower(): v for k, v in ALGORITHMS.items()}
    if name.lower() not in by_lower:
        raise unknown_choice("calibration algorithm", name, ALGORITHMS)
    return by_lower[name.lower()]


def make_observer(algo: Algorithm, settings: ObserverSettings) -> TensorObserver:
    return TensorObserver(settings.bins if algo.needs_histogram else None)


def compute_range(obs: TensorObserver, algo: Algorithm, settings: ObserverSettings) -> tuple[float, float]:
    """The calibrated real range [rmin, rmax] of a tensor."""
    if not obs.seen:
        raise CalibrationDataError("A tensor was never observed during calibration; is the data set empty?")
    if algo.threshold is None or obs.values < settings.min_values_to_clip * obs.samples:
        return obs.min, obs.max
    if algo.asymmetric_range is not None and settings.two_sided and not settings.symmetric:
        lo, hi = algo.asymmetric_range(obs, settings)
        return max(obs.min, lo), min(obs.max, hi)
    t = algo.threshold(obs, settings)
    return max(obs.min, -t), min(obs.max, t)
