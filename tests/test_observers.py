import numpy as np
import pytest

from slimq.core.errors import CalibrationDataError, ConfigError
from slimq.core.observers import (
    ALGORITHMS,
    ObserverSettings,
    StreamingHistogram,
    TensorObserver,
    compute_range,
    get_algorithm,
)

RNG = np.random.default_rng(0)
BATCHES = [RNG.standard_normal((4, 64)).astype(np.float32) * (1 + i) for i in range(6)]
ALL = np.concatenate([b.ravel() for b in BATCHES])


def observe(algo: str, batches=BATCHES, **kw):
    a = get_algorithm(algo)
    s = ObserverSettings(**kw)
    obs = TensorObserver(s.bins if a.needs_histogram else None)
    for b in batches:
        obs.update(b)
    return compute_range(obs, a, s), obs


def test_min_max_and_abs_max_match_numpy():
    (lo, hi), _ = observe("min_max")
    assert (lo, hi) == (ALL.min(), ALL.max())
    (lo, hi), _ = observe("abs_max")
    t = np.abs(ALL).max()
    assert lo == pytest.approx(max(ALL.min(), -t)) and hi == pytest.approx(min(ALL.max(), t))


def test_avg_is_mean_of_batch_absmax():
    (lo, hi), _ = observe("avg")
    t = np.mean([np.abs(b).max() for b in BATCHES])
    assert hi == pytest.approx(min(ALL.max(), t), rel=1e-6)
    assert lo == pytest.approx(max(ALL.min(), -t), rel=1e-6)


def test_streaming_histogram_equals_one_shot_histogram():
    h = StreamingHistogram(256)
    for b in BATCHES:
        h.update(np.abs(b))
    ref, _ = np.histogram(np.abs(ALL), bins=256, range=(0, h.upper))
    assert h.counts.sum() == ALL.size
    # re-binning by powers of two can move a value by at most one bin at the edges
    assert np.abs(np.cumsum(h.counts) - np.cumsum(ref)).max() <= 0.01 * ALL.size


def test_hist_percentile_matches_numpy_quantile():
    (_, hi), _ = observe("hist", hist_percent=0.99)
    ref = np.quantile(np.abs(ALL), 0.99)
    assert hi == pytest.approx(ref, rel=0.03)


# 5000 standard-normal values and one outlier at 60. The data has negative values, so u8's 256
# levels put 128 on [0, T]: step T / 127. The search algorithms try clip points about upper/127 apart.
GAUSS_OUTLIER = np.concatenate([np.random.default_rng(1).standard_normal(5000), [60.0]]).astype(np.float32)
CANDIDATE_STEP = 60.0 / 127


def qdq_magnitudes(ax: np.ndarray, t: float, levels: int = 128) -> np.ndarray:
    """|x| rounded to `levels` levels on [0, t] and clipped at t (the grid the observers assume)."""
    step = t / (levels - 1)
    return np.minimum(np.rint(ax / step) * step, t)


def test_mse_keeps_a_lone_outlier_where_the_closed_form_says():
    # Clipping the outlier at T costs (60 - T)^2 per value; rounding costs the 5000 bulk values about
    # step^2 / 12 each. Minimising 5000 (T/127)^2 / 12 + (60 - T)^2 gives T* = 60 / (1 + 5000 / (12 * 127^2)):
    # 58.49, not a clip to the bulk (clipping at 4 would cost 56^2 / 5001 = 0.63 vs 0.018 of rounding).
    (lo, hi), _ = observe("mse", [GAUSS_OUTLIER])
    t_star = 60 / (1 + 5000 / (12 * 127**2))
    assert abs(hi - t_star) <= CANDIDATE_STEP, hi
    assert lo == GAUSS_OUTLIER.min()  # the negative side never reaches -T


def test_emd_matches_mean_and_std_like_brute_force():
    ax = np.abs(GAUSS_OUTLIER).astype(np.float64)

    def distance(t):
        q = qdq_magnitudes(ax, t)
        return abs(q.mean() - ax.mean()) + abs(q.std() - ax.std())

    grid = np.linspace(1.0, 60.0, 6000)
    t_ref = grid[np.argmin([distance(t) for t in grid])]
    (lo, hi), _ = observe("emd", [GAUSS_OUTLIER])
    assert abs(hi - t_ref) <= CANDIDATE_STEP, (hi, t_ref)
    assert lo == GAUSS_OUTLIER.min()


def kl_reference(x: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    """Entropy calibration by brute force: for 128 clip points evenly spaced over the upper half of the
    |x| histogram, KL(P || Q) with P the histogram clipped there (tail added to its last bin) and Q its
    unclipped part merged into `levels` groups, each spread evenly over its non-empty bins."""
    counts, edges = np.histogram(np.abs(x).astype(np.float64), bins=bins, range=(0.0, float(np.abs(x).max())))
    best = (np.inf, bins)
    for i in sorted({int(v) for v in np.linspace(bins // 2, bins, 128)}):
        p = counts[:i].astype(np.float64)
        p[-1] += counts[i:].sum()
        q = np.zeros(i)
        for group in np.array_split(np.arange(i), levels):
            nonempty = group[counts[group] > 0]
            q[nonempty] = counts[group].sum() / max(len(nonempty), 1)
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        kl = float(np.sum(p[m] * np.log(p[m] / np.where(q[m] > 0, q[m], 1e-12))))
        best = min(best, (kl, i))
    return float(edges[best[1]])


def test_kl_threshold_is_the_brute_force_minimum():
    (lo, hi), _ = observe("KL", [GAUSS_OUTLIER])
    assert hi == pytest.approx(kl_reference(GAUSS_OUTLIER), abs=1e-9)
    assert 30.0 <= hi < 60.0  # searched in the upper half of the histogram, the outlier clipped
    assert lo == GAUSS_OUTLIER.min()


def test_mse_threshold_minimises_error_against_brute_force():
    x = np.random.default_rng(4).laplace(size=20000).astype(np.float32)
    ax = np.abs(x).astype(np.float64)
    (_, t), obs = observe("mse", [x])

    def err(th):
        return np.mean((ax - qdq_magnitudes(ax, th)) ** 2)

    grid = np.linspace(0.5, ax.max(), 4000)
    errors = np.array([err(g) for g in grid])
    best = grid[errors.argmin()]
    step = obs.hist.upper / 127  # distance between the thresholds mse tries
    assert abs(t - best) <= step, (t, best)
    # better than being one whole candidate step off the optimum (about +0.5 % here)
    assert err(t) < min(err(best - step), err(best + step)), (err(t) / errors.min())
    assert best < ax.max() - 5 * step  # the optimum really clips: the test is not a max-abs test


def test_histogram_memory_is_bounded():
    rng = np.random.default_rng(5)
    _, obs = observe("hist", [rng.standard_normal(100000).astype(np.float32) for _ in range(3)])
    assert obs.hist.counts.size == 2048


def test_nan_activation_is_a_clear_error():
    obs = TensorObserver()
    with pytest.raises(CalibrationDataError, match="NaN"):
        obs.update(np.array([1.0, np.nan], np.float32))


def test_unknown_algorithm_suggests_closest():
    with pytest.raises(ConfigError, match='Did you mean "hist"'):
        get_algorithm("histo")
    assert set(ALGORITHMS) == {"abs_max", "min_max", "avg", "hist", "KL", "mse", "emd"}
    assert get_algorithm("kl").name == "KL"


def _min_over_grid(err, a_range, b_range, n=(24, 48), rounds=3):
    """Brute-force minimum of err(a, b) on a grid, refined around the best cell `rounds` times."""
    (a0, a1), (b0, b1) = a_range, b_range
    for _ in range(rounds):
        A, B = np.linspace(a0, a1, n[0]), np.linspace(b0, b1, n[1])
        E = np.array([[err(a, b) for b in B] for a in A])
        i, j = np.unravel_index(E.argmin(), E.shape)
        da, db = A[1] - A[0], B[1] - B[0]
        a0, a1, b0, b1 = max(A[0], A[i] - da), min(A[-1], A[i] + da), max(B[0], B[j] - db), min(B[-1], B[j] + db)
    return E.min(), A[i], B[j]


@pytest.mark.parametrize("levels", [16, 256])
def test_two_sided_mse_matches_brute_force_on_skewed_data(levels):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.exponential(1.0, 20000), -rng.exponential(0.25, 5000)]).astype(np.float32)
    xd = x.astype(np.float64)
    (lo, hi), _ = observe("mse", [x], two_sided=True, levels=levels)

    def err(a, b):
        step = (b - a) / (levels - 1)
        zp = np.rint(-a / step)
        q = (np.clip(np.rint(xd / step) + zp, 0, levels - 1) - zp) * step
        return np.mean((xd - q) ** 2)

    best, _, _ = _min_over_grid(err, (float(x.min()), -0.01), (0.1, float(x.max())))
    # coordinate descent (3 rounds) over clip points upper/127 apart on a 2048-bin histogram: within 1 %
    assert err(lo, hi) <= best * 1.01, (lo, hi, err(lo, hi) / best)
    assert x.min() < lo and hi < x.max()  # both sides clipped, each at its own point
    (slo, shi), _ = observe("mse", [x], levels=levels)  # one |x| threshold: 128 levels a side, worse
    assert err(lo, hi) < err(slo, shi) and err(lo, hi) < err(float(x.min()), float(x.max()))


def test_two_sided_hist_takes_each_sides_percentile():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.exponential(1.0, 50000), -rng.exponential(0.1, 50000)]).astype(np.float32)
    (lo, hi), _ = observe("hist", [x], two_sided=True, hist_percent=0.99)
    assert hi == pytest.approx(np.quantile(x[x >= 0], 0.99), rel=0.03)
    assert lo == pytest.approx(-np.quantile(-x[x < 0], 0.99), rel=0.03)
