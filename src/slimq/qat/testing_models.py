"""Tiny models for QAT tests and examples (inputs: 1x16x16 images, 10 classes).

``FunctionalNet`` is built like the pretrained CNNs users download (EfficientNet/timm ports): custom
same-padding modules calling ``F.conv2d``, matmuls between activations, a functional linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """3x3 Conv (no bias) + BatchNorm2d."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class TinyConvNet(nn.Module):
    """conv-BN-ReLU, max-pool, conv-BN-ReLU, global average pool, flatten, linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block with identity shortcut and functional residual add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class TinyResNet(nn.Module):
    """Stem conv-BN-ReLU, two residual blocks, average pool, linear."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, width, stride=2), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(width), BasicBlock(width))
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear project, add."""

    def __init__(self, channels: int, expand: int = 2) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(*conv_bn(hidden, hidden, groups=hidden), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class TinyMobileNet(nn.Module):
    """Stem conv-BN-ReLU6, one inverted residual block with depthwise conv, pool, linear."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, width, stride=2), nn.ReLU6())
        self.block = InvertedResidual(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x)))
        return self.fc(self.dropout(self.flatten(x)))


class NetWithUnsupported(nn.Module):
    """A quantizable conv followed by a ConvTranspose2d and a sigmoid that stay in float."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sigmoid(self.up(F.relu(self.conv(x)))))


class Gate(nn.Module):
    """A block with data-dependent Python control flow (not traceable by torch.fx)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class UntraceableNet(nn.Module):
    """Conv followed by :class:`Gate`: prepare() must name ``gate`` in its error."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(x))


class SamePadConv2d(nn.Conv2d):
    """TF "SAME" convolution as EfficientNet/timm ports write it: ``nn.ZeroPad2d`` then ``F.conv2d``
    (module swapping cannot see it; torch.export can)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, size: int = 16) -> None:
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)
        out = -(-size // stride)
        pad = max((out - 1) * stride + k - size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class FunctionalBlock(nn.Module):
    """Inverted residual of SamePadConv2d + BatchNorm + ReLU6 (depthwise in the middle), residual add."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        hidden = 2 * channels
        self.expand, self.bn0 = SamePadConv2d(channels, hidden, 1, size=size), nn.BatchNorm2d(hidden)
        self.depthwise = SamePadConv2d(hidden, hidden, 3, groups=hidden, size=size)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.project, self.bn2 = SamePadConv2d(hidden, channels, 1, size=size), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn0(self.expand(x)))
        y = F.relu6(self.bn1(self.depthwise(y)))
        return x + self.bn2(self.project(y))


class FunctionalNet(nn.Module):
    """Every convolution an ``F.conv2d`` behind asymmetric zero padding (stride-2 stem), BatchNorm,
    ReLU6, a residual add, token mixing by two matmuls between activations and a functional linear head."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = SamePadConv2d(1, width, 3, stride=2, size=16)
        self.bn = nn.BatchNorm2d(width)
        self.block = FunctionalBlock(width, 8)
        self.head_weight = nn.Parameter(torch.randn(classes, width) * 0.3)
        self.head_bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(F.relu6(self.bn(self.stem(x))))
        tokens = x.flatten(2).transpose(1, 2)  # (N, 64, C)
        mixed = torch.matmul(torch.matmul(tokens, tokens.transpose(1, 2)) / 64.0, tokens)
        return F.linear(mixed.mean(1), self.head_weight, self.head_bias)


MODELS = {"convnet": TinyConvNet, "resnet": TinyResNet, "mobilenet": TinyMobileNet, "functional": FunctionalNet}


def build(name: str, seed: int = 0) -> nn.Module:
    """A seeded tiny model with non-trivial BatchNorm statistics (running stats randomised)."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def teacher_labels(x: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """Learnable synthetic labels: argmax of a fixed random linear map of the input.

    (Random labels would make "predict uniformly" optimal, which learned ranges reach by
    shrinking the logits' scale to zero.)
    """
    gen = torch.Generator().manual_seed(1234)
    proj = torch.randn(x[0].numel(), classes, generator=gen)
    return (x.flatten(1) @ proj).argmax(1)
