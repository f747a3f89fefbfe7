"""Image classification evaluator: top-1 and top-5 accuracy in percent."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from slimq.core.errors import CalibrationDataError
from slimq.tasks.base import Feeds, batch_slices, check_batch_count


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percentage of rows of ``logits`` (N x C) whose label is among the k largest scores.

    Ties are broken in favour of the lower class index; k is capped at C.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise CalibrationDataError(
            f"Expected logits of shape (N, C) with N={labels.shape[0]} labels, got {logits.shape}."
        )
    if labels.size == 0:
        raise CalibrationDataError("Cannot compute accuracy over zero samples.")
    k = min(k, logits.shape[1])
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hits = (order == labels[:, None]).any(axis=1)
    return float(hits.mean() * 100.0)


class ClassificationEvaluator:
    """Top-1/top-5 accuracy of a classifier with one (N, C) logits output.

    ``images`` are already preprocessed float32 NCHW tensors; ``labels`` are class indices.
    """

    name = "classification"
    primary_metric = "top1"
    higher_is_better = True

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int = 256,
        input_name: str = "input",
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels).reshape(-1)
        if images.ndim != 4 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
            raise CalibrationDataError(
                f"Expected N>0 NCHW images and N labels, got images {images.shape} and "
                f"labels {labels.shape}."
            )
        if images.dtype != np.float32:
            raise CalibrationDataError(
                f"Images must be float32 (preprocessed), got {images.dtype}."
            )
        if not np.isfinite(images).all():
            raise CalibrationDataError("Evaluation images contain NaN or Inf values.")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.input_name = input_name
        self._slices = batch_slices(len(labels), batch_size)

    def inputs(self) -> Iterator[Feeds]:
        """Yield ``{input_name: images[batch]}`` for each batch."""
        for s in self._slices:
            yield {self.input_name: self.images[s]}

    def score(self, outputs: list[list[np.ndarray]]) -> dict[str, float]:
        """Return {"top1": %, "top5": %} from the first output of every batch."""
        check_batch_count(self.name, outputs, len(self._slices))
        logits = np.concatenate([np.asarray(o[0]).reshape(o[0].shape[0], -1) for o in outputs])
        return {
            "top1": topk_accuracy(logits, self.labels, 1),
            "top5": topk_accuracy(logits, self.labels, 5),
        }


class LabeledEvaluator:
    """Top-1/top-5 accuracy (percent) of a classifier on arrays of any input layout.

    ``arrays`` maps every model input name to an array whose first axis indexes samples.
    """

    name = "classification"
    primary_metric = "top1"
    higher_is_better = True

    def __init__(self, arrays: Mapping[str, np.ndarray], labels: np.ndarray, batch_size: int = 64) -> None:
        labels = np.asarray(labels).reshape(-1)
        counts = {k: len(v) for k, v in arrays.items()}
        if any(n != len(labels) for n in counts.values()) or not len(labels):
            raise CalibrationDataError(f"Got {len(labels)} labels for inputs with {counts} samples; "
                                       "give exactly one label per sample.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise CalibrationDataError(f"Labels must be integer class indices, got dtype {labels.dtype}.")
        self.arrays, self.labels = dict(arrays), labels.astype(np.int64)
        self._slices = batch_slices(len(labels), batch_size)

    def inputs(self) -> Iterator[Feeds]:
        for s in self._slices:
            yield {k: v[s] for k, v in self.arrays.items()}

    def score(self, outputs: list[list[np.ndarray]]) -> dict[str, float]:
        """Return {"top1": %, "top5": %} from the first output of every batch."""
        check_batch_count(self.name, outputs, len(self._slices))
        logits = np.concatenate([np.asarray(o[0]).reshape(len(np.asarray(o[0])), -1) for o in outputs])
        return {"top1": topk_accuracy(logits, self.labels, 1), "top5": topk_accuracy(logits, self.labels, 5)}
