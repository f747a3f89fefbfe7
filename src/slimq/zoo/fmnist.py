"""The two Fashion-MNIST demo architectures shipped with slimq, and their ONNX export.

This module imports torch; import it only when torch is installed (``slimq[qat]``).
Both models take normalised float32 input of shape (N, 1, 28, 28) (see
:func:`slimq.io.fashion_mnist.preprocess`) and return (N, 10) logits.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from onnx_ir.passes.common import IdentityEliminationPass, LiftConstantsToInitializersPass
from torch import nn

from slimq.core.errors import unknown_choice
from slimq.zoo.cache import save_cached

NUM_CLASSES = 10


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 conv-BN shortcut, ReLU after the add."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout, 3)
        )
        needs_proj = stride != 1 or cin != cout
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if needs_proj else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class FmnistResNet(nn.Module):
    """Small ResNet: conv-BN-ReLU stem at 28x28, three strided stages (14, 7, 4), GAP, linear."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), stem: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(1, stem, 3), nn.ReLU(inplace=True))
        blocks, cin = [], stem
        for width in widths:
            blocks.append(BasicBlock(cin, width, stride=2))
            cin = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 project-BN, residual add."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            *_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, cout, 1),
        )
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


# (expand ratio, output channels, stride) per block.
MOBILENET_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 24, 2), (4, 24, 1),
    (4, 48, 2), (4, 48, 1),
    (4, 96, 2), (4, 96, 1),
)


class FmnistMobileNet(nn.Module):
    """Small MobileNetV2: conv stem, inverted residual blocks down to 4x4, 1x1 head, GAP, linear."""

    def __init__(
        self,
        blocks: tuple[tuple[int, int, int], ...] = MOBILENET_BLOCKS,
        stem: int = 16,
        head: int = 256,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(1, stem, 3), nn.ReLU6(inplace=True)]
        cin = stem
        for expand, cout, stride in blocks:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        layers += [*_conv_bn(cin, head, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))


_BUILDERS = {"fmnist_resnet": FmnistResNet, "fmnist_mobilenet": FmnistMobileNet}


def build_model(name: str) -> nn.Module:
    """Return a freshly initialised demo model by zoo name."""
    if name not in _BUILDERS:
        raise unknown_choice("zoo model", name, _BUILDERS)
    return _BUILDERS[name]()


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Export ``model`` in eval mode to ONNX with a dynamic batch dimension, atomically.

    Uses the TorchScript exporter (``dynamo=False``) which gives the cleanest graph here:
    Conv (BatchNorm folded into the conv weights), Relu, Clip (ReLU6), Add,
    GlobalAveragePool, Flatten, Gemm; Clip bounds are moved from Constant nodes into
    initializers. Input is named "input", output "logits". (The dynamo exporter gives
    ReduceMean + Reshape instead and cannot down-convert to opset 17.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="slimq-export-") as tmp:
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (dummy,), f"{tmp}/model.onnx", opset_version=opset, dynamo=False,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
            proto = constants_to_initializers(onnx.load(f"{tmp}/model.onnx"))
        onnx.checker.check_model(proto)
        save_cached(proto, path)
    finally:
        model.train(was_training)
    return path


def constants_to_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Top-level Constant nodes, and Identity nodes of initializers, become initializers.

    The TorchScript exporter emits Clip bounds as Constant nodes and deduplicates equal weights
    through Identity nodes; onnx-ir's passes lift and remove them.
    """
    model = ir.from_proto(proto)
    IdentityEliminationPass()(model)
    LiftConstantsToInitializersPass(size_limit=0)(model)
    return ir.to_proto(model)
