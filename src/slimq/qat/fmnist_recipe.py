"""QAT fine-tuning of the shipped Fashion-MNIST models, end to end (recipe ``qat_fmnist.yaml``).

Loads the FP32 weights (``torch.load(weights_only=True)``), calibrates activation ranges,
fine-tunes briefly with fake quantization at a low learning rate, exports QDQ ONNX and
compares FP32 (the shipped ONNX) and QAT INT8 top-1 in onnxruntime on the 10k test set.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slimq.core.errors import ModelLoadError
from slimq.io.fashion_mnist import load_fashion_mnist, preprocess
from slimq.qat.config import QATRecipe
from slimq.qat.export import convert, onnx_io_names
from slimq.qat.model import QATModel, calibrate, param_groups, prepare
from slimq.qat.verify import check_agreement, ort_optimized_ops, ort_session
from slimq.zoo import asset_path


def load_fp32_model(name: str) -> torch.nn.Module:
    """Build a zoo model and load its shipped FP32 weights (tensors only)."""
    from slimq.zoo.fmnist import build_model

    model = build_model(name)
    path = asset_path(name, ".pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, KeyError) as exc:
        raise ModelLoadError(f"Cannot load the FP32 weights {path}: {exc}") from exc
    return model.eval()


def _batches(
    x: np.ndarray, y: np.ndarray, batch: int, gen: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches."""
    while True:
        order = gen.permutation(len(x))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch]
            yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def ort_top1(onnx_path: str | Path, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of an ONNX classifier in onnxruntime (CPU)."""
    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        logits = sess.run(None, {name: x[i:i + batch]})[0]
        correct += int((logits.argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)


def train_qat(qmodel: QATModel, recipe: QATRecipe, x: np.ndarray, y: np.ndarray) -> int:
    """Fine-tune for ``recipe.epochs`` epochs of (x, y) with SGD and cosine decay; returns steps."""
    steps = max(1, math.ceil(recipe.epochs * len(x) / recipe.batch_size))
    opt = torch.optim.SGD(param_groups(qmodel, recipe.lr), momentum=recipe.momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    batches = _batches(x, y, recipe.batch_size, np.random.default_rng(recipe.seed + 1))
    qmodel.train()
    for _ in range(steps):
        xb, yb = next(batches)
        loss = F.cross_entropy(qmodel(xb), yb, label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return steps


def _train_data(recipe: QATRecipe) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_fashion_mnist("train")
    if recipe.train_limit is not None:
        pick = np.random.default_rng(recipe.seed).permutation(len(images))[: recipe.train_limit]
        images, labels = images[pick], labels[pick]
    return preprocess(images), labels


def default_output_name(recipe: QATRecipe) -> str:
    """File name of the recipe's INT8 model, e.g. ``fmnist_resnet.qat-ste.int8.onnx``."""
    return f"{recipe.model}.qat-{recipe.variant}.int8.onnx"


def run_qat_recipe(recipe: QATRecipe, output: str | Path | None = None) -> dict[str, Any]:
    """Run a recipe; returns FP32/INT8 top-1 (ORT, 10k test set), timings and graph facts.

    The INT8 model is written to ``output`` (an .onnx path) when given, otherwise to a
    temporary folder that is removed afterwards.
    """
    torch.manual_seed(recipe.seed)
    x_train, y_train = _train_data(recipe)
    x_test_u8, y_test = load_fashion_mnist("test")
    x_test = preprocess(x_test_u8)
    qmodel = prepare(load_fp32_model(recipe.model), torch.from_numpy(x_train[:2]), recipe.qat_config())
    start = time.perf_counter()
    gen = np.random.default_rng(recipe.seed)
    calib = [torch.from_numpy(x_train[gen.choice(len(x_train), recipe.batch_size, replace=False)])
             for _ in range(recipe.calib_batches)]
    if calib:
        calibrate(qmodel, calib)
    steps = train_qat(qmodel, recipe, x_train, y_train)
    train_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="slimq-qat-recipe-") as tmp:
        path = Path(output) if output is not None else Path(tmp) / default_output_name(recipe)
        inputs, outputs = onnx_io_names(asset_path(recipe.model, ".onnx"))
        result = convert(qmodel, path, input_names=inputs, output_names=outputs,
                         samples=torch.from_numpy(x_test[:256]))
        fp32 = ort_top1(asset_path(recipe.model, ".onnx"), x_test, y_test)
        int8 = ort_top1(path, x_test, y_test)
        agreement = check_agreement(qmodel, path, torch.from_numpy(x_test[:1000]))
        ops = ort_optimized_ops(path)
    report = result.report
    if report is None:  # convert() always attaches it; ConvertResult only types it as optional
        raise RuntimeError("slimq.qat.convert returned no fidelity report; please report this bug.")
    return {
        "model": recipe.model, "variant": recipe.variant, "target": recipe.target,
        "fp32_top1": fp32, "int8_top1": int8, "delta_pt": round(100 * (int8 - fp32), 3),
        "steps": steps, "train_seconds": round(train_seconds, 1),
        "onnx_path": str(path) if output is not None else None,
        "int8_size_bytes": result.size_bytes,
        "fp32_size_bytes": asset_path(recipe.model, ".onnx").stat().st_size,
        "agreement_within_step": agreement.fraction_within_step,
        "ort_qlinear_conv": ops.get("com.microsoft:QLinearConv", 0),
        "ort_float_conv": ops.get("Conv", 0) + ops.get("com.microsoft:FusedConv", 0),
        "float_ops": [f"{u.name} ({u.op})" for u in qmodel.report.unsupported],
        "int8_mac_share": report.int8_mac_share,
        "fidelity_warnings": report.warnings,
    }
