"""The seed's speed table, reproduced: Paddle's published x86 INT8 table, six CNNs, quantized by slimq.

Paddle Inference's x86 table lists FP32 vs INT8 images/s of MobileNet-V1, MobileNet-V2, ResNet-101,
ResNet-50, VGG16 and VGG19 and the ratios 2.92, 2.32, 3.68, 3.78, 3.07, 3.21. Here each network is a
PyTorch definition with random (He-initialised) weights whose BatchNorm statistics are calibrated on random
images (train-mode passes, cumulative averages), so activations have realistic scales; it goes into slimq
as an ``nn.Module`` (slimq.io.source.load_source: the dynamo exporter, checked against PyTorch), is quantized with slimq's defaults
(static PTQ, hist, x86, speed guard on), and is timed FP32 vs INT8 at 1 thread, batch 1, 224 x 224, on
onnxruntime and on the runtime ``backend="auto"`` picks for the INT8 model. Speeds are in process CPU time
(slimq.runtime.select.interleaved_ms): the machine this ran on had 2 cores shared with other jobs.

Usage: python benchmarks/seed_table.py [--models resnet50 ...] [--calib 32] [--json out.json] [--md out.md]
Measured results: docs/models_in.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimq.core.config import StaticConfig
from slimq.graph.passes import preprocess
from slimq.io.source import load_source
from slimq.runtime.cpu import cpu_info
from slimq.runtime.select import RUNTIME_NAMES, choose_runtime, installed_backends, interleaved_ms
from slimq.runtime.session import Predictor
from slimq.static.method import quantize_static

PADDLE_RATIO = {"mobilenet_v1": 2.92, "mobilenet_v2": 2.32, "resnet101": 3.68, "resnet50": 3.78, "vgg16": 3.07,
                "vgg19": 3.21}


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         act())


def mobilenet_v1() -> nn.Module:
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    layers, cin = [conv_bn(3, 32, stride=2)], 32
    for cout, s in cfg:
        layers += [conv_bn(cin, cin, 3, s, groups=cin), conv_bn(cin, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2() -> nn.Module:
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, cin = [conv_bn(3, 32, stride=2, act=nn.ReLU6)], 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    return nn.Sequential(*layers, conv_bn(320, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(1280, 1000))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                  nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def resnet(blocks: tuple[int, ...]) -> nn.Module:
    layers, cin = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for stage, n in enumerate(blocks):
        width = 64 * 2 ** stage
        for i in range(n):
            layers.append(Bottleneck(cin, width, 2 if i == 0 and stage > 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


def vgg(depths: tuple[int, ...]) -> nn.Module:
    layers, cin = [], 3
    for n, cout in zip(depths, (64, 128, 256, 512, 512)):
        for _ in range(n):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 4096),
                         nn.ReLU(), nn.Linear(4096, 1000))


MODELS = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2, "resnet101": lambda: resnet((3, 4, 23, 3)),
          "resnet50": lambda: resnet((3, 4, 6, 3)), "vgg16": lambda: vgg((2, 2, 3, 3, 3)),
          "vgg19": lambda: vgg((2, 2, 4, 4, 4))}


@torch.no_grad()
def with_calibrated_bn(model: nn.Module, seed: int, batches: int = 4) -> nn.Module:
    """He-initialised weights; BatchNorm running statistics from train-mode passes over random images."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.normal_(m.bias, 0, 0.01)
        elif isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative moving average over the calibration passes
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.1)
    model.train()
    for _ in range(batches):
        model(torch.randn(8, 3, 224, 224))
    return model.eval()


def images(n: int, seed: int) -> np.ndarray:
    """Smooth random images (low-frequency noise, like natural images more than white noise), normalised."""
    rng = np.random.default_rng(seed)
    small = rng.standard_normal((n, 3, 28, 28)).astype(np.float32)
    return np.ascontiguousarray(small.repeat(8, axis=2).repeat(8, axis=3))


def speeds(fp32, int8, feed: dict, backend: str) -> tuple[float, float]:
    """(FP32, INT8) images/s at 1 thread on `backend`, interleaved, CPU time."""
    runs = [Predictor(m, threads=1, backend=backend).run for m in (fp32, int8)]
    ms = interleaved_ms(runs, feed, rounds=3, min_time=1.0, warmup=2, min_runs=3, clock="cpu")
    return 1e3 / ms[0], 1e3 / ms[1]


def run(name: str, n_calib: int) -> dict:
    t0 = time.perf_counter()
    model = with_calibrated_bn(MODELS[name](), seed=0)
    data = images(n_calib + 8, seed=1)
    src = load_source((model, (torch.from_numpy(data[:1]),)), data)  # dynamo export, checked against PyTorch
    res = quantize_static(src.model, data, StaticConfig(show_progress=False))
    fp32 = src.model
    feed = {fp32.graph.input[0].name: data[:1]}
    assert src.conversion is not None
    out = {"model": name, "quantize_s": round(time.perf_counter() - t0, 1),
           "export_max_abs_diff": src.conversion.max_abs_diff,
           "int8_mac_share": round(res.report.int8_mac_share, 4), "worst_cosine": round(res.report.worst_cosine, 4),
           "notes": list(res.report.notes), "paddle_ratio": PADDLE_RATIO[name]}
    ort_fp32, ort_int8 = speeds(fp32, res.model, feed, "ort")
    out["ort"] = {"fp32_ips": ort_fp32, "int8_ips": ort_int8, "ratio": ort_int8 / ort_fp32}
    pre_fp32, _ = speeds(preprocess(fp32), res.model, feed, "ort")
    out["ort"]["fp32_preprocessed_ips"] = pre_fp32
    choice = choose_runtime(res.model, lambda m, b, t: Predictor(m, threads=t, backend=b).run, feed, 1)
    out["auto"] = {"backend": choice.backend, "ms": dict(choice.ms), "note": choice.note}
    if choice.backend != "ort":
        a_fp32, a_int8 = speeds(fp32, res.model, feed, choice.backend)
        out["auto"].update({"fp32_ips": a_fp32, "int8_ips": a_int8, "ratio": a_int8 / a_fp32})
    else:
        out["auto"].update({k: out["ort"][k] for k in ("fp32_ips", "int8_ips", "ratio")})
    return out


def markdown(rows: list[dict]) -> str:
    head = ("| model | ORT FP32 img/s | ORT INT8 img/s | ORT ratio | auto runtime | auto FP32 img/s | auto INT8 img/s | "
            "auto ratio | Paddle's ratio | int8 MACs | worst cosine |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        o, a = r["ort"], r["auto"]
        lines.append(f"| {r['model']} | {o['fp32_ips']:.1f} | {o['int8_ips']:.1f} | {o['ratio']:.2f}x | "
                     f"{RUNTIME_NAMES.get(a['backend'], a['backend'])} | {a['fp32_ips']:.1f} | {a['int8_ips']:.1f} | "
                     f"{a['ratio']:.2f}x | {r['paddle_ratio']:.2f}x | {r['int8_mac_share'] * 100:.1f} % | "
                     f"{r['worst_cosine']:.4f} |")
    cpu = cpu_info()
    lines.append(f"\n{cpu.model} ({cpu.cores} cores, {cpu.cpu_class}); 1 thread, batch 1, 224x224; runtimes: "
                 f"{', '.join(RUNTIME_NAMES[b] for b in installed_backends())}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--calib", type=int, default=32, help="calibration images per model")
    ap.add_argument("--json", help="write all results to this JSON file")
    ap.add_argument("--md", help="write the markdown table to this file")
    args = ap.parse_args()
    rows = []
    for name in args.models:
        rows.append(run(name, args.calib))
        r = rows[-1]
        print(f"{name}: ORT {r['ort']['ratio']:.2f}x, auto={r['auto']['backend']} {r['auto']['ratio']:.2f}x "
              f"(Paddle {r['paddle_ratio']:.2f}x), {r['quantize_s']} s", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    table = markdown(rows)
    print(table)
    if args.md:
        Path(args.md).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
