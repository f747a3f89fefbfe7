import numpy as np
import pytest

from slimq.core import qmath


def test_asymmetric_uint8_matches_reference():
    s, z = qmath.scale_zero_point(-1.0, 3.0, qmath.UINT8, symmetric=False)
    assert s == pytest.approx(4.0 / 255)
    assert int(z) == round(1.0 / (4.0 / 255))
    x = np.linspace(-1, 3, 101, dtype=np.float32)
    y = qmath.fake_quantize(x, s, z, qmath.UINT8)
    assert np.abs(x - y).max() <= s / 2 + 1e-6


def test_range_always_contains_zero():
    s, z = qmath.scale_zero_point(2.0, 5.0, qmath.UINT8, symmetric=False)
    assert int(z) == 0 and s == pytest.approx(5.0 / 255)
    q = qmath.quantize(np.zeros(3, np.float32), s, z, qmath.UINT8)
    assert (qmath.dequantize(q, s, z) == 0).all()


def test_symmetric_int8_and_uint8():
    s, z = qmath.scale_zero_point(-2.0, 1.0, qmath.INT8, symmetric=True)
    assert s == pytest.approx(2.0 / 127) and int(z) == 0
    s, z = qmath.scale_zero_point(-2.0, 1.0, qmath.UINT8, symmetric=True)
    assert int(z) == 128 and s == pytest.approx(4.0 / 255)


def test_quantize_saturates_and_rounds_half_even():
    q = qmath.quantize(np.array([0.5, 1.5, 2.5, 1000, -1000], np.float32), np.float32(1.0), np.int8(0), qmath.INT8)
    assert q.tolist() == [0, 2, 2, 127, -128]


def test_per_channel_weight_matches_numpy_reference():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * np.array([1, 10, 0.1, 0], np.float32)[:, None, None, None]
    qt = qmath.quantize_weight(w, qmath.INT8.narrow(), axis=0)
    ref_scale = np.abs(w).reshape(4, -1).max(1) / 127
    ref_scale[ref_scale == 0] = 1.0
    np.testing.assert_allclose(qt.scale, ref_scale, rtol=1e-6)
    assert qt.data.dtype == np.int8 and qt.data.min() >= -127
    ref_q = np.clip(np.rint(w / ref_scale[:, None, None, None]), -127, 127)
    np.testing.assert_array_equal(qt.data, ref_q)
    err = np.abs(qmath.dequantize(qt.data, qt.scale, qt.zero_point, 0) - w)
    assert (err <= qt.scale[:, None, None, None] / 2 + 1e-7).all()


def test_per_tensor_weight():
    w = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
    qt = qmath.quantize_weight(w, qmath.INT8.narrow(), axis=None)
    assert qt.axis is None and qt.scale == pytest.approx(4.0 / 127)
    assert qt.data[0, 1] == -127


def test_bias_int32_uses_product_of_scales():
    b = np.array([0.3, -1.2], np.float32)
    qt = qmath.quantize_bias(b, 0.02, np.array([0.01, 0.5], np.float32))
    np.testing.assert_allclose(qt.scale, [0.0002, 0.01], rtol=1e-6)
    assert qt.data.dtype == np.int32 and qt.data.tolist() == [1500, -120]


def test_reduce_range_and_int4():
    r = qmath.INT8.narrow().reduced()
    assert (r.qmin, r.qmax) == (-64, 63)
    packed = qmath.pack_int4(np.array([1, -2, 7], np.int8))
    assert packed.tolist() == [0x01 | (0x0E << 4), 0x07]


def test_sqnr_and_cosine():
    a = np.array([1.0, 2.0, 3.0])
    assert qmath.sqnr_db(a, a) == float("inf")
    assert qmath.sqnr_db(a, a + 0.1) == pytest.approx(10 * np.log10(14 / 0.03))
    assert qmath.cosine(a, 2 * a) == pytest.approx(1.0)
    assert qmath.cosine(a, -a) == pytest.approx(-1.0)


def test_grid_through_puts_the_constant_on_a_nearby_grid():
    s = qmath.grid_through(-0.8635, 0.2183)  # c/s = -3.96: 4 steps of a 1 % finer grid
    assert s is not None and abs(0.8635 / s - 4) < 1e-9 and 0.98 * 0.2183 <= s < 0.2183
    s = qmath.grid_through(0.0615, 0.0309)  # 1.99 steps
    assert s is not None and abs(0.0615 / s - 2) < 1e-9
    s = qmath.grid_through(0.1402, 0.0427)  # 3.28 steps: 3 steps of a coarser grid, not 4 of a 14 % finer one
    assert s is not None and abs(0.1402 / s - 3) < 1e-9 and s > 0.0427
    assert qmath.grid_through(-0.0098, 0.0354) is None  # under a step: the grid would change 3.6x
    assert qmath.grid_through(0.5, 0.0) is None
