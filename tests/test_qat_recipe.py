"""The Fashion-MNIST QAT recipe, shortened to a few steps (the full run takes minutes)."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

import slimq.qat as qat  # noqa: E402
from slimq.errors import SlimqError  # noqa: E402


def _assets_available() -> bool:
    try:
        from slimq.datasets.fashion_mnist import find_split_dir
        from slimq.zoo import asset_path

        asset_path("fmnist_resnet", ".pt")
        asset_path("fmnist_resnet", ".onnx")
        find_split_dir("train")
        find_split_dir("test")
    except (SlimqError, ImportError):
        return False
    return True


def test_shipped_recipe_loads() -> None:
    recipe = qat.load_recipe()
    assert recipe.model in ("fmnist_resnet", "fmnist_mobilenet")
    assert recipe.epochs <= 1 and recipe.lr <= 0.01  # short, low-LR fine-tuning
    assert recipe.qat_config().freeze_bn_step == recipe.freeze_bn_step


@pytest.mark.skipif(not _assets_available(), reason="needs the fmnist_resnet assets and Fashion-MNIST")
def test_short_recipe_run_keeps_accuracy(tmp_path) -> None:
    from slimq.qat.fmnist_recipe import run_qat_recipe

    recipe = dataclasses.replace(qat.load_recipe(), model="fmnist_resnet", train_limit=256, epochs=1.0,
                                 batch_size=64, calib_batches=2, freeze_bn_step=2, freeze_observer_step=3)
    result = run_qat_recipe(recipe, out_dir=tmp_path)
    assert result["steps"] == 4
    assert result["fp32_top1"] > 0.9
    assert result["int8_top1"] >= result["fp32_top1"] - 0.005, result  # full recipe: >= FP32 - 0.1 pt
    assert result["agreement_within_step"] >= 0.999
    assert result["ort_qlinear_conv"] > 0 and result["ort_float_conv"] == 0
    assert result["int8_size_bytes"] < 0.35 * result["fp32_size_bytes"]
    assert (tmp_path / "fmnist_resnet.qat-ste.int8.onnx").is_file()
