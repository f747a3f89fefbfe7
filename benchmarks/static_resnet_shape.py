"""Static PTQ of a ResNet-50-shaped model: int8 MAC share and 1-thread speed-up.

ResNet-50 (bottleneck blocks 3-4-6-3, 224x224) is written here in plain torch
with random weights from a fixed seed; BatchNorm statistics are re-estimated on
a few random batches so activations have realistic, data-dependent ranges. It is
exported with the legacy TorchScript exporter and with the dynamo exporter (both
cached under ~/.cache/slimq/bench); the script prints which graph is cleaner,
quantizes it with calibration on random images, and times FP32 and INT8 side by
side in one process (1 thread, batch 1, warm-up, interleaved runs, median).

Usage: python benchmarks/static_resnet_shape.py [--runs 30] [--exporter legacy|dynamo] [--algo hist]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from slimq.core.config import StaticConfig
from slimq.runtime.cpu import cpu_info
from slimq.runtime.macs import count_macs
from slimq.runtime.session import Predictor, optimized_graph
from slimq.static.method import quantize_static

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slimq" / "bench"
SEED = 0


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each conv-BN; projection shortcut when needed."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        proj = stride != 1 or cin != cout
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if proj else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * 4
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def build_resnet50() -> ResNet50:
    """Deterministic random ResNet-50 with BN statistics re-estimated on random images (eval mode)."""
    torch.manual_seed(SEED)
    model = ResNet50()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the estimation batches
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        for x in random_images(4, 8, seed=SEED + 1):
            model(torch.from_numpy(x))
    return model.eval()


def random_images(n_batches: int, batch: int, seed: int) -> list[np.ndarray]:
    """Normalised-image-like inputs: smooth random fields plus noise, float32 (B, 3, 224, 224)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        low = rng.normal(0, 1, (batch, 3, 14, 14)).astype(np.float32)
        smooth = np.repeat(np.repeat(low, 16, axis=2), 16, axis=3)
        out.append((smooth + 0.3 * rng.normal(0, 1, smooth.shape)).astype(np.float32))
    return out


def export(model: nn.Module, exporter: str) -> Path:
    """Export once per exporter to the bench cache (atomic)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"resnet50_seed{SEED}_{exporter}.onnx"
    if path.is_file():
        return path
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=CACHE)
    os.close(fd)
    dummy = torch.zeros(1, 3, 224, 224)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                torch.onnx.export(model, (dummy,), tmp, opset_version=17, dynamo=False, input_names=["input"],
                                  output_names=["logits"], do_constant_folding=True)
            else:
                prog = torch.onnx.export(model, (dummy,), dynamo=True, opset_version=18, optimize=True)
                prog.save(tmp)
        proto = onnx.load(tmp, load_external_data=True)
        onnx.save(proto, tmp)  # one self-contained file
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + ".data").unlink(missing_ok=True)
    return path


def op_counts(path: Path) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node).most_common())


def time_side_by_side(fp32: onnx.ModelProto | Path, int8: onnx.ModelProto, x: np.ndarray, runs: int,
                      warmup: int = 5) -> tuple[float, float]:
    """Median latency (ms) of both models at 1 thread, batch 1, runs interleaved in one process."""
    a, b = Predictor(fp32, threads=1), Predictor(int8, threads=1)
    feeds = {a.input_names[0]: x}
    for _ in range(warmup):
        a.run(feeds)
        b.run(feeds)
    ta, tb = [], []
    for _ in range(runs):
        for p, t in ((a, ta), (b, tb)):
            s = time.perf_counter()
            p.run(feeds)
            t.append((time.perf_counter() - s) * 1e3)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    ap.add_argument("--algo", default="hist")
    args = ap.parse_args()
    model = build_resnet50()
    paths = {}
    for kind in ("legacy", "dynamo"):
        try:
            paths[kind] = export(model, kind)
            print(f"{kind} export ops: {op_counts(paths[kind])}")
        except Exception as e:  # report and go on with the other exporter
            print(f"{kind} export failed: {type(e).__name__}: {e}")
    path = paths[args.exporter]
    calib = np.concatenate(random_images(4, 8, seed=SEED + 2))
    t = time.perf_counter()
    res = quantize_static(str(path), calib, StaticConfig(algo=args.algo, max_samples=32, holdout=8,
                                                          show_progress=False))
    print(f"quantized ({args.exporter} export, {args.algo}) in {time.perf_counter() - t:.1f} s")
    print(res.report.format())
    x = random_images(1, 1, seed=SEED + 3)[0]
    macs = count_macs(optimized_graph(res.model, "extended"), {"input": x})
    print(f"int8 MAC share: {macs.int8_share * 100:.2f} % of {(macs.int8_macs + macs.float_macs) / 1e9:.2f} GMACs; "
          f"int8 ops {dict(macs.int8_ops)}; float MAC ops {dict(macs.float_ops)}")
    opt = collections.Counter(n.op_type for n in optimized_graph(res.model, "all").graph.node)
    print(f"INT8 graph as onnxruntime runs it (level all): {dict(opt.most_common())}")
    print(f"cpu: {cpu_info().model}, vnni={cpu_info().vnni}; load average {os.getloadavg()}")
    fp, q = time_side_by_side(path, res.model, x, args.runs)
    print(f"1 thread, batch 1, median of {args.runs} interleaved runs: FP32 {fp:.1f} ms, INT8 {q:.1f} ms, "
          f"speed-up {fp / q:.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
