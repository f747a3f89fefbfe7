"""Datasets used for calibration, evaluation and the demo models."""

from slimq.datasets.fashion_mnist import (
    FMNIST_CLASSES,
    FMNIST_MEAN,
    FMNIST_STD,
    load_fashion_mnist,
    preprocess,
)

__all__ = ["FMNIST_CLASSES", "FMNIST_MEAN", "FMNIST_STD", "load_fashion_mnist", "preprocess"]
