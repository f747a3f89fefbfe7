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


@pytest.mark.parametrize("algo", ["KL", "mse", "emd"])
def test_search_algorithms_clip_outliers_but_keep_bulk(algo):
    data = [np.concatenate([RNG.standard_normal(5000), [60.0]]).astype(np.float32)]
    (lo, hi), _ = observe(algo, data)
    assert 2.0 < hi < 60.0, (algo, hi)
    assert -60.0 < lo < -2.0


def test_mse_threshold_minimises_error_against_brute_force():
    x = RNG.laplace(size=20000).astype(np.float32)
    (_, t), _ = observe("mse", [x])

    def err(th):
        step = 2 * th / 255
        q = np.clip(np.rint(x / step), -127, 127) * step
        return np.mean((x - q) ** 2)

    grid = np.linspace(0.5, np.abs(x).max(), 200)
    best = grid[np.argmin([err(g) for g in grid])]
    assert err(t) <= err(best) * 1.15


def test_histogram_memory_is_bounded():
    _, obs = observe("hist", [RNG.standard_normal(100000).astype(np.float32) for _ in range(3)])
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


def test_two_sided_mse_beats_brute_force_on_skewed_data():
    x = np.concatenate([RNG.exponential(1.0, 20000), -RNG.exponential(0.05, 5000), [40.0]]).astype(np.float32)
    (lo, hi), _ = observe("mse", [x], two_sided=True)

    def err(a, b):
        step = (b - a) / 255
        zp = np.rint(-a / step)
        q = (np.clip(np.rint(x / step) + zp, 0, 255) - zp) * step
        return np.mean((x - q) ** 2)

    grid = [(a, b) for a in np.linspace(-0.6, -0.02, 15) for b in np.linspace(2, 40, 60)]
    best = min(err(a, b) for a, b in grid)
    assert lo > -1.0 and hi < 40.0  # both sides clipped separately
    assert err(lo, hi) <= best * 1.15
    (slo, shi), _ = observe("mse", [x])  # one |x| threshold: the low side is not clipped tighter than -T
    assert err(lo, hi) <= err(slo, shi)


def test_two_sided_hist_takes_each_sides_percentile():
    x = np.concatenate([RNG.exponential(1.0, 50000), -RNG.exponential(0.1, 50000)]).astype(np.float32)
    (lo, hi), _ = observe("hist", [x], two_sided=True, hist_percent=0.99)
    assert hi == pytest.approx(np.quantile(x[x >= 0], 0.99), rel=0.03)
    assert lo == pytest.approx(-np.quantile(-x[x < 0], 0.99), rel=0.03)
