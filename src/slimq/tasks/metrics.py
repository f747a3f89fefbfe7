"""Task metrics by name, for accuracy budgets (``--eval DATA --metric NAME --max-drop D``).

A :class:`Metric` scores a model through a ``predict(feeds) -> outputs`` callable. Built-in names
build the task's evaluator from the evaluation data:

* ``top1``, ``top5``: classification; DATA is an .npz with one array per model input plus ``labels``,
  or ``fashion-mnist``;
* ``cer``, ``line_acc``: PP-OCR text recognition on rendered lines; DATA is ``ocr-rec`` or
  ``ocr-rec:N`` (N lines, held out from anything used for calibration);
* ``f1``, ``precision``, ``recall``, ``mean_iou``: PP-OCR text detection on rendered pages
  (``ocr-det`` or ``ocr-det:N``).

In the Python API any callable ``metric(predict) -> float`` works (``Metric(fn, higher_is_better)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimq.core.errors import CalibrationDataError, ConfigError, unknown_choice
from slimq.tasks.base import Evaluator, evaluate

Feeds = dict[str, np.ndarray]
Predict = Callable[[Feeds], Sequence[np.ndarray]]

# metric name -> (task, higher is better)
BUILTIN_METRICS: dict[str, tuple[str, bool]] = {
    "top1": ("classification", True), "top5": ("classification", True),
    "cer": ("ocr-rec", False), "line_acc": ("ocr-rec", True),
    "f1": ("ocr-det", True), "precision": ("ocr-det", True), "recall": ("ocr-det", True),
    "mean_iou": ("ocr-det", True),
}
LABEL_KEYS = ("labels", "label", "y")


@dataclass(frozen=True)
class Metric:
    """A task metric: `fn(predict) -> float`, and which direction is better."""

    name: str
    fn: Callable[[Predict], float]
    higher_is_better: bool = True

    def __call__(self, predict: Predict) -> float:
        value = float(self.fn(predict))
        if not np.isfinite(value):
            raise CalibrationDataError(f'Metric "{self.name}" returned {value}; it must be a finite number.')
        return value

    def drop(self, reference: float, value: float) -> float:
        """How much worse `value` is than `reference` (> 0 is worse), in the metric's unit."""
        return reference - value if self.higher_is_better else value - reference


def _from_evaluator(name: str, evaluator: Evaluator, higher: bool) -> Metric:
    def fn(predict: Predict) -> float:
        scores = evaluate(predict, evaluator)
        if name not in scores:
            raise ConfigError(f'Evaluator {evaluator.name} has no metric "{name}"; it reports {sorted(scores)}.')
        return scores[name]
    return Metric(name, fn, higher)


def _count(data: str, default: int) -> int:
    _, _, n = data.partition(":")
    if not n:
        return default
    if not n.isdigit() or int(n) < 1:
        raise ConfigError(f'Evaluation data "{data}": the count after ":" must be a positive integer.')
    return int(n)


def _classification(data: object, input_names: Sequence[str]) -> Evaluator:
    from slimq.tasks.classification import LabeledEvaluator

    if data == "fashion-mnist":
        from slimq.io.fashion_mnist import load_fashion_mnist, preprocess

        images, labels = load_fashion_mnist("test")
        return LabeledEvaluator({input_names[0]: preprocess(images)}, labels)
    path = Path(str(data))
    if path.suffix != ".npz" or not path.is_file():
        raise CalibrationDataError(f"Classification metrics need labelled data: an .npz with one array per model "
                                   f"input and `labels` (or fashion-mnist); got {data}.")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    if label_key is None:
        raise CalibrationDataError(f"{path} has no labels array (one of {', '.join(LABEL_KEYS)}).")
    labels = arrays.pop(label_key)
    if len(input_names) == 1 and len(arrays) == 1:
        arrays = {input_names[0]: next(iter(arrays.values()))}
    return LabeledEvaluator(arrays, labels)


def builtin_metric(name: str, data: object, model_path: str | Path | None, input_names: Sequence[str],
                   seed: int = 1000) -> Metric:
    """The built-in metric `name` on evaluation data `data` (see the module docstring)."""
    if name not in BUILTIN_METRICS:
        raise unknown_choice("metric", name, BUILTIN_METRICS)
    task, higher = BUILTIN_METRICS[name]
    if data is None:
        raise ConfigError(f'Metric "{name}" needs evaluation data (--eval): '
                          f"{'an .npz with labels' if task == 'classification' else task}.")
    if task == "classification":
        return _from_evaluator(name, _classification(data, input_names), higher)
    text = str(data)
    if not text.startswith(task):
        raise ConfigError(f'Metric "{name}" is a {task} metric: pass --eval {task} or {task}:N, got "{data}".')
    if task == "ocr-rec":
        from slimq.tasks.ocr_rec import RecEvaluator

        return _from_evaluator(name, RecEvaluator(model_path, n_lines=_count(text, 200), seed=seed), higher)
    from slimq.tasks.ocr_det import DetEvaluator

    return _from_evaluator(name, DetEvaluator(model_path, n_pages=_count(text, 16), seed=seed), higher)
