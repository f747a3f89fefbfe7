#!/usr/bin/env python
"""Train the shipped Fashion-MNIST demo models reproducibly and write their assets.

For each model writes ``<name>.onnx`` (FP32, dynamic batch), ``<name>.pt`` (state_dict,
loadable with ``torch.load(..., weights_only=True)``) and ``<name>.json`` (metrics and
provenance) into ``--out-dir``. Example::

    python scripts/train_fashion_mnist.py --model all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from slimq.io.fashion_mnist import (
    FMNIST_MEAN,
    FMNIST_STD,
    load_fashion_mnist,
    preprocess,
)
from slimq.zoo import ZOO_MODELS
from slimq.zoo.fmnist import build_model, export_onnx

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "slimq" / "assets"
# Epochs that fit the ~6 minute per-model budget on 2 CPU cores.
DEFAULT_EPOCHS = {"fmnist_resnet": 8, "fmnist_mobilenet": 6}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    model: str
    epochs: int = 8
    batch_size: int = 128
    max_lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    crop_padding: int = 2
    hflip: bool = True
    seed: int = 0
    threads: int = 2


def seed_everything(seed: int, threads: int) -> torch.Generator:
    """Fix all seeds, thread count and deterministic kernels; return the data generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def augment(images: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a uint8 (B, 28, 28) batch."""
    b, h, w = images.shape
    p = cfg.crop_padding
    if p > 0:
        padded = F.pad(images, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b, 1, 1), generator=gen)
        ox = torch.randint(0, 2 * p + 1, (b, 1, 1), generator=gen)
        rows = oy + torch.arange(h).view(1, h, 1)
        cols = ox + torch.arange(w).view(1, 1, w)
        images = padded[torch.arange(b).view(b, 1, 1), rows, cols]
    if cfg.hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        images = torch.where(flip.view(b, 1, 1), images.flip(-1), images)
    return images


def to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """Normalise a uint8 (B, 28, 28) batch like :func:`preprocess`, in channels_last layout."""
    x = (images_u8.float().unsqueeze(1) / 255.0 - FMNIST_MEAN) / FMNIST_STD
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` in eval mode on uint8 images."""
    model.eval()
    correct = 0
    for start in range(0, len(images), 1000):
        logits = model(to_input(images[start:start + 1000]))
        correct += int((logits.argmax(1) == labels[start:start + 1000]).sum())
    return correct / len(images)


def train_epoch(model, opt, sched, images, labels, cfg: TrainConfig, gen) -> float:
    """One pass over the shuffled training set; returns the mean loss."""
    model.train()
    order = torch.randperm(len(images), generator=gen)
    total, batches = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        x = to_input(augment(images[idx], cfg, gen))
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total, batches = total + loss.item(), batches + 1
    return total / batches


def train(cfg: TrainConfig, data: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, float]:
    """Train ``cfg.model``; return the model (eval mode) and training seconds."""
    gen = seed_everything(cfg.seed, cfg.threads)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.max_lr, momentum=0.9,
                          nesterov=True, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(data["x_train"]) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        loss = train_epoch(model, opt, sched, data["x_train"], data["y_train"], cfg, gen)
        acc = evaluate(model, data["x_test"], data["y_test"])
        print(f"[{cfg.model}] epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} "
              f"test top-1 {acc:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    return model.to(memory_format=torch.contiguous_format), seconds


def onnx_top1(path: Path, images_u8: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX classifier on the test set with onnxruntime."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    preds = [sess.run(None, {"input": preprocess(images_u8[i:i + 1000])})[0].argmax(1)
             for i in range(0, len(images_u8), 1000)]
    return float((np.concatenate(preds) == labels).mean())


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_assets(cfg: TrainConfig, model, seconds: float, acc: float, out_dir: Path, test) -> dict:
    """Write the .onnx, .pt and .json files of a trained model; return the metadata."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, out_dir / f"{cfg.model}.onnx")
    write_atomic(out_dir / f"{cfg.model}.pt", lambda tmp: torch.save(model.state_dict(), tmp))
    meta = {
        "model": cfg.model,
        "fp32_test_top1": round(acc, 4),
        "onnx_test_top1": round(onnx_top1(onnx_path, *test), 4),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "train_seconds": round(seconds, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "config": asdict(cfg),
        "normalisation": {"mean": FMNIST_MEAN, "std": FMNIST_STD},
    }
    text = json.dumps(meta, indent=2) + "\n"
    write_atomic(out_dir / f"{cfg.model}.json", lambda tmp: Path(tmp).write_text(text))
    return meta


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*ZOO_MODELS, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default per model: {DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder with the Fashion-MNIST *-ubyte.gz files (default: search)")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    x_train, y_train = load_fashion_mnist("train", args.data_root)
    x_test, y_test = load_fashion_mnist("test", args.data_root)
    data = {"x_train": torch.from_numpy(x_train), "y_train": torch.from_numpy(y_train),
            "x_test": torch.from_numpy(x_test), "y_test": torch.from_numpy(y_test)}
    names = ZOO_MODELS if args.model == "all" else (args.model,)
    for name in names:
        epochs = args.epochs or DEFAULT_EPOCHS[name]
        cfg = TrainConfig(model=name, epochs=epochs, seed=args.seed)
        model, seconds = train(cfg, data)
        acc = evaluate(model, data["x_test"], data["y_test"])
        meta = save_assets(cfg, model, seconds, acc, args.out_dir, (x_test, y_test))
        print(f"[{name}] FP32 test top-1 {meta['fp32_test_top1']:.4f} (torch), "
              f"{meta['onnx_test_top1']:.4f} (onnxruntime); trained in {seconds:.0f} s; "
              f"wrote {args.out_dir}/{name}.{{onnx,pt,json}}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
