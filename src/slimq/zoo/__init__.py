"""Demo models shipped with slimq: names and the location of their files (no torch needed).

The architectures themselves live in :mod:`slimq.zoo.fmnist`, which imports torch.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from slimq.core.errors import ModelLoadError, unknown_choice

ZOO_MODELS: tuple[str, ...] = ("fmnist_resnet", "fmnist_mobilenet")
ASSET_SUFFIXES: tuple[str, ...] = (".onnx", ".pt", ".json")


def asset_path(name: str, suffix: str = ".onnx") -> Path:
    """Return the path of a shipped model file, e.g. ``asset_path("fmnist_resnet", ".pt")``."""
    if name not in ZOO_MODELS:
        raise unknown_choice("zoo model", name, ZOO_MODELS)
    if suffix not in ASSET_SUFFIXES:
        raise unknown_choice("zoo asset suffix", suffix, ASSET_SUFFIXES)
    path = Path(str(resources.files("slimq") / "assets" / f"{name}{suffix}"))
    if not path.is_file():
        raise ModelLoadError(
            f"Shipped model file {path} is missing. Reinstall slimq, or regenerate it with "
            f"`python scripts/train_fashion_mnist.py --model {name}`."
        )
    return path


__all__ = ["ASSET_SUFFIXES", "ZOO_MODELS", "asset_path"]
