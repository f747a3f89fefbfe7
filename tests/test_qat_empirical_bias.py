"""Empirical bias correction in QAT calibration (slimq.qat.empirical_bias): each layer's mean output shift
against FP32, removed layer by layer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import slimq.qat as qat  # noqa: E402
from slimq.core.errors import ConfigError  # noqa: E402
from slimq.qat.fidelity import float_network  # noqa: E402
from slimq.qat.modules import QATConv, QATLinear  # noqa: E402
from slimq.qat.testing_models import build  # noqa: E402


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def calibrated(mode, x: torch.Tensor, bits: int = 4):
    """TinyMobileNet calibrated with ``bias_correction=mode``. 4-bit grids (simulation) by default: at 8 bits
    the tiny model's shifts are already at the rounding floor (1e-5)."""
    model = build("mobilenet", seed=3)
    qm = qat.prepare(model, x[:2], qat.QATConfig(weight_bits=bits, act_bits=bits))
    qat.calibrate(qm, [x[i:i + 16] for i in range(0, len(x), 16)], algo="hist", bias_correction=mode)
    return model, qm.eval()


def layer_shifts(qm, x: torch.Tensor) -> dict[str, float]:
    """Mean |per-channel mean output difference| of each quantized layer against the FP32 reference (outputs
    compared inside the layer's output grid, as the correction measures them)."""
    from slimq.qat.bias_correction import channel_sums
    from slimq.qat.empirical_bias import _bounds

    out: dict[str, float] = {}
    for name, module in qm.net.named_modules():
        if not isinstance(module, (QATConv, QATLinear)):
            continue
        bounds = _bounds(module)
        means = []
        for net in (qm.net, float_network(qm)):
            seen = []
            handle = net.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
            with torch.no_grad():
                net(x)
            handle.remove()
            y = seen[0].clamp(*bounds) if bounds is not None else seen[0]
            sums, n = channel_sums(y, isinstance(module, QATLinear))
            means.append(sums / n)
        out[name] = float((means[0] - means[1]).abs().mean())
    return out


def test_empirical_correction_removes_the_mean_shift_and_keeps_the_reference():
    x = images(64)
    _, plain = calibrated(True, x)
    model, corrected = calibrated("empirical", x)
    before, after = layer_shifts(plain, x), layer_shifts(corrected, x)
    assert set(before) == set(after) and len(before) == 5
    # the calibration samples: every layer's remaining shift is tiny, and much smaller in total
    assert sum(after.values()) < 0.3 * sum(before.values()), (before, after)
    assert max(after.values()) < 0.25 * max(before.values())
    # the shifts are recorded, so the FP32 reference (and the distillation teacher) is still the FP32 model
    assert corrected.bias_corrections
    with torch.no_grad():
        torch.testing.assert_close(float_network(corrected)(x), model(x), rtol=1e-4, atol=1e-4)


def test_empirical_correction_brings_the_output_closer_on_new_samples():
    x, held = images(64), images(64, seed=9)
    model, plain = calibrated(True, x)
    _, corrected = calibrated("empirical", x)
    with torch.no_grad():
        ref = model(held)
        err_plain = float(((plain(held) - ref) ** 2).mean())
        err_corrected = float(((corrected(held) - ref) ** 2).mean())
    assert err_corrected < 0.6 * err_plain  # measured 0.37


def test_export_of_a_corrected_model_stays_within_one_step(tmp_path):
    x = images(64)
    _, qm = calibrated("empirical", x, bits=8)
    result = qat.convert(qm, tmp_path / "m.onnx", samples=images(32, seed=5))
    assert result.artifacts["export_agreement"].fraction_within_step >= 0.999
    assert result.report.details["calibration"] == {"algo": "hist", "bias_correction": "empirical", "batches": "4"}


@pytest.mark.parametrize("mode", ["weights", 1, None])
def test_unknown_bias_correction_is_refused(mode):
    qm = qat.prepare(build("resnet"), images(2))
    with pytest.raises(ConfigError, match="bias_correction must be False, True or \"empirical\""):
        qat.calibrate(qm, [images(4)], bias_correction=mode)
