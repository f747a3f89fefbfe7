"""The benchmark models, their calibration data and their evaluators.

* ResNet-50 and MobileNetV2 at 224x224, written here in plain torch (torchvision is not
  needed), with RANDOM WEIGHTS from a fixed seed. Their BatchNorm statistics are
  re-estimated on real images so activations have realistic ranges; accuracy is
  meaningless, so they are scored by agreement with FP32 (top-1 agreement, cosine).
  Exported once to ONNX into the cache folder (``~/.cache/slimq/bench`` or ``--cache``).
* PP-OCRv4 det and rec from the rapidocr-onnxruntime wheel: rec is scored by CER on
  rendered text lines, det by box F1 against the rendered ground truth and by
  probability-map IoU against FP32.
* The shipped Fashion-MNIST models (real accuracy on the 10k test images).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimq.bench.data import AgreementEvaluator, fashion_mnist_arrays
from slimq.io.spec import Feeds
from slimq.runtime.session import Predictor
from slimq.tasks.base import Evaluator, collect_outputs

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
SEED = 0
ARCH_VERSION = 1  # bump when an architecture or the export changes: the cache file name includes it


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slimq" / "bench"


@dataclass
class BenchModel:
    """One benchmark case: the FP32 model, calibration feeds, an evaluator, and notes for the report."""

    name: str
    fp32: Path
    calib: list[Feeds]
    evaluator: Evaluator
    notes: list[str] = field(default_factory=list)
    target: str = ""  # speed/accuracy target at 1 thread, batch 1


# ---------------------------------------------------------------- architectures (plain torch)

def _torch():
    import torch
    from torch import nn

    return torch, nn


def resnet50():
    """ResNet-50 v1.5 (stride in the 3x3 conv), 1000 classes, torchvision-style init."""
    torch, nn = _torch()

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            out = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
            self.down = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                         if stride != 1 or cin != out else nn.Identity())
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.down(x))

    layers: list = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))
    return _init(model)


def mobilenet_v2():
    """MobileNetV2 (width 1.0), 1000 classes, torchvision-style init."""
    torch, nn = _torch()

    def cbr(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                *([nn.ReLU6(inplace=True)] if act else [])]

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
            super().__init__()
            hid = cin * t
            body = (cbr(cin, hid, 1) if t != 1 else []) + cbr(hid, hid, 3, stride, hid) + cbr(hid, cout, 1, act=False)
            self.body = nn.Sequential(*body)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    layers, cin = cbr(3, 32, 3, 2), 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            layers.append(Inverted(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += cbr(cin, 1280, 1)
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 1000))
    return _init(model)


def _init(model):
    torch, nn = _torch()
    torch.manual_seed(SEED)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def recalibrate_bn(model, images: np.ndarray, batch: int = 16) -> None:
    """Re-estimate BatchNorm running statistics on `images` (cumulative average), then eval mode."""
    torch, nn = _torch()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(torch.from_numpy(images[i:i + batch]))
    model.eval()


def export_onnx(model, path: Path, size: int = 224) -> Path:
    """TorchScript ONNX export (opset 17, dynamic batch, input "input", output "logits"), atomically."""
    import onnx
    import torch

    from slimq.zoo.fmnist import constants_to_initializers

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), tmp, opset_version=17, dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
        proto = constants_to_initializers(onnx.load(tmp))
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------- data

def imagenet_like(split: str, start: int, n: int, size: int = 224) -> np.ndarray:
    """Fashion-MNIST images upscaled to size x size, as RGB, ImageNet-normalised NCHW float32."""
    from slimq.io.fashion_mnist import load_fashion_mnist
    from slimq.tasks.ocr_rec import resize_bilinear

    images, _ = load_fashion_mnist(split)
    out = np.empty((n, 3, size, size), np.float32)
    for i, img in enumerate(images[start:start + n]):
        big = resize_bilinear(img[:, :, None], size, size)[:, :, 0].astype(np.float32) / 255.0
        out[i] = ((big[None] - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None])
    return out


def _split_feeds(arrays: np.ndarray, batch: int, name: str = "input") -> list[Feeds]:
    return [{name: arrays[i:i + batch]} for i in range(0, len(arrays), batch)]


def _agreement(fp32: Path, images: np.ndarray, batch: int = 10) -> AgreementEvaluator:
    pred = Predictor(fp32, threads="all")
    ref = [pred.run({"input": images[i:i + batch]})[0] for i in range(0, len(images), batch)]
    return AgreementEvaluator({"input": images}, ref, batch)


def imagenet_case(name: str, build: Callable, cache: Path, n_calib: int, n_eval: int, target: str) -> BenchModel:
    path = cache / f"{name}_v{ARCH_VERSION}_seed{SEED}.onnx"
    if not path.is_file():
        model = build()
        recalibrate_bn(model, imagenet_like("train", 30000, 64))
        export_onnx(model, path)
    calib = imagenet_like("train", 0, n_calib)
    images = imagenet_like("test", 0, n_eval)
    notes = [f"RANDOM WEIGHTS (seed {SEED}; BatchNorm statistics re-estimated on 64 upscaled Fashion-MNIST "
             "images): accuracy is meaningless, so INT8 is scored by agreement with FP32 "
             f"on {n_eval} upscaled Fashion-MNIST test images."]
    return BenchModel(name, path, _split_feeds(calib, 8), _agreement(path, images), notes, target)


class DetWithReference:
    """DetEvaluator metrics plus the probability-map IoU against the FP32 model's maps."""

    def __init__(self, det, fp32_outputs: list[list[np.ndarray]]) -> None:
        self.det, self.ref = det, fp32_outputs
        self.name, self.primary_metric, self.higher_is_better = det.name, det.primary_metric, det.higher_is_better

    def inputs(self):
        return self.det.inputs()

    def score(self, outputs: list[list[np.ndarray]]) -> dict[str, float]:
        from slimq.tasks.ocr_det import mean_prob_map_iou

        return {**self.det.score(outputs), "map_iou": mean_prob_map_iou(self.ref, outputs)}


def ocr_rec_case(n_lines: int, n_calib_batches: int) -> BenchModel:
    from slimq.tasks.ocr_rec import RecEvaluator, rapidocr_model_path

    path = rapidocr_model_path("rec")
    ev = RecEvaluator(path, n_lines=n_lines)
    notes = [f"CER (percent, spaces ignored) on {n_lines} rendered Chinese/Latin text lines; "
             f"calibration on {n_calib_batches * ev.batch_size} other rendered lines."]
    return BenchModel("ppocrv4_rec", path, ev.calibration_batches(n_calib_batches), ev, notes,
                      ">= 2.0x, CER drop <= 0.3 pt")


def ocr_det_case(n_pages: int, n_calib: int) -> BenchModel:
    from slimq.tasks.ocr_det import DetEvaluator
    from slimq.tasks.ocr_rec import rapidocr_model_path

    path = rapidocr_model_path("det")
    det = DetEvaluator(path, n_pages=n_pages)
    ref = collect_outputs(Predictor(path, threads="all").run, det)
    notes = [f"Box precision/recall/F1 (IoU >= 0.5) against the ground truth of {n_pages} rendered 736x960 pages; "
             "map_iou: IoU of the binarised probability map with FP32's. "
             f"Calibration on {n_calib} other rendered pages."]
    return BenchModel("ppocrv4_det", path, det.calibration_batches(n_calib), DetWithReference(det, ref), notes,
                      ">= 2.0x, boxes matching FP32")


def fmnist_case(name: str, n_test: int | None) -> BenchModel:
    from slimq.demo import calibration_images
    from slimq.tasks.classification import ClassificationEvaluator
    from slimq.zoo import asset_path

    images, labels = fashion_mnist_arrays("test", n_test)
    notes = [f"Trained weights: top-1/top-5 on {len(labels)} Fashion-MNIST test images; calibration on 256 "
             "training images."]
    return BenchModel(name, asset_path(name), _split_feeds(calibration_images(), 8),
                      ClassificationEvaluator(images, labels, 250), notes)


CASES = ("fmnist_resnet", "fmnist_mobilenet", "resnet50", "mobilenetv2", "ppocrv4_rec", "ppocrv4_det")


def build_case(name: str, cache: Path, quick: bool = False) -> BenchModel:
    """Build one benchmark case by name (quick: fewer calibration and evaluation samples)."""
    if name in ("fmnist_resnet", "fmnist_mobilenet"):
        return fmnist_case(name, 1000 if quick else None)
    if name == "resnet50":
        return imagenet_case(name, resnet50, cache, 32 if quick else 128, 20 if quick else 100, ">= 4.0x")
    if name == "mobilenetv2":
        return imagenet_case(name, mobilenet_v2, cache, 32 if quick else 128, 20 if quick else 100, ">= 2.6x")
    if name == "ppocrv4_rec":
        return ocr_rec_case(40 if quick else 200, 4 if quick else 32)
    if name == "ppocrv4_det":
        return ocr_det_case(4 if quick else 16, 2 if quick else 8)
    from slimq.core.errors import unknown_choice

    raise unknown_choice("benchmark case", name, CASES)
