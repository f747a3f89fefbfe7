"""Data for `slimq bench`: the timing feed and, where labels exist, an evaluator.

Sources: an .npz with one array per model input (or a single array for a single-input
model) plus optional ``labels``; .npy files, folders, arrays and feed lists (no labels);
the built-in name ``fashion-mnist`` (test split, labelled); or an evaluator of any task
(e.g. PP-OCR rec CER), whose first batch then also serves as the timing feed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimq.core.errors import CalibrationDataError, did_you_mean, unknown_choice
from slimq.core.fields import require_int
from slimq.io.samples import load_samples, validate_feeds
from slimq.io.spec import Feeds, InputSpec, static_batch
from slimq.tasks.base import Evaluator, batch_slices, check_batch_count
from slimq.tasks.classification import LabeledEvaluator

BUILTIN_DATA = ("fashion-mnist",)
TASKS = ("auto", "classification", "ocr-rec", "ocr-det", "none")
LABEL_KEYS = ("labels", "label", "y")


class AgreementEvaluator:
    """For models without labels (e.g. random weights): agreement of each model with reference outputs.

    ``reference`` holds the first output of the reference (FP32) model for every batch of ``arrays``.
    Metrics: "top1_agree" (percent of rows whose argmax matches) and "cosine" (over all values).
    """

    name = "agreement"
    primary_metric = "top1_agree"
    higher_is_better = True

    def __init__(self, arrays: Mapping[str, np.ndarray], reference: Sequence[np.ndarray], batch_size: int) -> None:
        self.arrays, self.batch_size = dict(arrays), batch_size
        self._slices = batch_slices(len(next(iter(self.arrays.values()))), batch_size)
        if len(reference) != len(self._slices):
            raise CalibrationDataError(f"{len(reference)} reference outputs for {len(self._slices)} batches.")
        self.reference = [np.asarray(r, np.float64) for r in reference]

    def inputs(self) -> Iterator[Feeds]:
        for s in self._slices:
            yield {k: v[s] for k, v in self.arrays.items()}

    def score(self, outputs: list[list[np.ndarray]]) -> dict[str, float]:
        check_batch_count(self.name, outputs, len(self._slices))
        ref = np.concatenate([r.reshape(len(r), -1) for r in self.reference])
        out = np.concatenate([np.asarray(o[0], np.float64).reshape(len(o[0]), -1) for o in outputs])
        cos = float(ref.ravel() @ out.ravel() / max(np.linalg.norm(ref) * np.linalg.norm(out), 1e-30))
        return {"top1_agree": float((ref.argmax(1) == out.argmax(1)).mean() * 100), "cosine": cos}


@dataclass
class BenchInputs:
    """What a benchmark runs: one timing feed (batch dim = batch) and an optional evaluator."""

    feeds: Feeds
    evaluator: Evaluator | None
    source: str


def fashion_mnist_arrays(split: str = "test", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed Fashion-MNIST images (N, 1, 28, 28) float32 and labels (N,)."""
    from slimq.io.fashion_mnist import load_fashion_mnist, preprocess

    images, labels = load_fashion_mnist(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return preprocess(images), labels


def _npz_arrays(path: Path, inputs: Sequence[InputSpec]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise CalibrationDataError(f"Cannot read {path}: {e}. Save arrays with numpy.savez.") from None
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels = arrays.pop(label_key) if label_key else None
    names = [s.name for s in inputs]
    if len(names) == 1 and len(arrays) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}  # e.g. key "input" or "x" for a single-input model
    return arrays, labels


def _add_batch_axis(arrays: dict[str, np.ndarray], inputs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    ranks = {s.name: len(s.shape) for s in inputs}
    return {k: (v[None] if k in ranks and v.ndim == ranks[k] - 1 else v) for k, v in arrays.items()}


def timing_feed(samples: Sequence[Feeds], inputs: Sequence[InputSpec], batch: int, source: str) -> Feeds:
    """Stack the first `batch` samples (repeating them when there are fewer) into one feed."""
    fixed = static_batch(inputs)
    if fixed is not None and fixed != batch:
        raise CalibrationDataError(f"The model has a fixed batch size of {fixed}; run the benchmark with --batch {fixed}.")
    if not samples:
        raise CalibrationDataError(f"The data {source} holds no samples.")
    picked = [samples[i % len(samples)] for i in range(batch)]
    feed = {k: np.concatenate([s[k] for s in picked], axis=0) for k in picked[0]}
    return validate_feeds(feed, inputs, source)


def _first_samples(feeds: Feeds, n: int) -> list[Feeds]:
    count = len(next(iter(feeds.values())))
    return [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(min(n, count))]


def random_feed(inputs: Sequence[InputSpec], batch: int, seed: int = 0) -> Feeds:
    """Standard-normal data for models without data; dynamic dims other than the batch need real data."""
    fixed = static_batch(inputs)
    if fixed is not None and fixed != batch:
        raise CalibrationDataError(f"The model has a fixed batch size of {fixed}; run the benchmark with --batch {fixed}.")
    rng = np.random.default_rng(seed)
    feed: Feeds = {}
    for s in inputs:
        dims = _timing_shape(s, batch)
        floating = np.issubdtype(s.dtype, np.floating)
        feed[s.name] = rng.standard_normal(dims).astype(s.dtype) if floating else np.zeros(dims, s.dtype)
    return feed


def _timing_shape(s: InputSpec, batch: int) -> list[int]:
    """The input's shape with a dynamic batch dim set to `batch`; other dynamic dims are an error."""
    dims: list[int] = []
    for i, d in enumerate(s.shape):
        d = batch if i == 0 and not (isinstance(d, int) and d > 0) else d
        if not (isinstance(d, int) and d > 0):
            raise CalibrationDataError(f'Input "{s.name}" has dynamic dimensions {s.shape}; pass --data with real '
                                       "samples so the benchmark knows the shape to time.")
        dims.append(d)
    return dims


def _eval_batch(inputs: Sequence[InputSpec]) -> int:
    return static_batch(inputs) or 64


def _labelled(arrays: dict[str, np.ndarray], labels: np.ndarray | None, task: str, inputs: Sequence[InputSpec],
              batch: int, source: str) -> BenchInputs:
    arrays = _add_batch_axis(arrays, inputs)
    validate_feeds({k: v[:1] for k, v in arrays.items()}, inputs, source)
    samples = _first_samples(arrays, batch)
    feed = timing_feed(samples, inputs, batch, source)
    if task == "classification" and labels is None:
        raise CalibrationDataError(f"--task classification needs labels: {source} has no `labels` array.")
    if labels is None or task == "none":
        return BenchInputs(feed, None, source)
    return BenchInputs(feed, LabeledEvaluator(arrays, labels, _eval_batch(inputs)), source)


def _from_evaluator(evaluator: Evaluator, inputs: Sequence[InputSpec], batch: int) -> BenchInputs:
    first = next(iter(evaluator.inputs()), None)
    if first is None:
        raise CalibrationDataError(f"Evaluator {evaluator.name} yields no data.")
    source = f"{evaluator.name} evaluation set"
    validate_feeds(first, inputs, source)
    return BenchInputs(timing_feed(_first_samples(first, batch), inputs, batch, source), evaluator, source)


def task_evaluator(task: str, model_path: str | Path | None, limit: int | None = None) -> Evaluator | None:
    """The built-in evaluator of a task name ("ocr-rec", "ocr-det"; None for others)."""
    if task == "ocr-rec":
        from slimq.tasks.ocr_rec import RecEvaluator

        return RecEvaluator(model_path, n_lines=limit or 200)
    if task == "ocr-det":
        from slimq.tasks.ocr_det import DetEvaluator

        return DetEvaluator(model_path, n_pages=limit or 16)
    return None


def resolve_inputs(data, inputs: Sequence[InputSpec], batch: int = 1, task: str = "auto",
                   evaluator: Evaluator | None = None, model_path: str | Path | None = None,
                   limit: int | None = None) -> BenchInputs:
    """Turn the `data` argument of benchmark() into a timing feed and an optional evaluator."""
    if task not in TASKS:
        raise unknown_choice("task", task, TASKS)
    if batch < 1:
        raise CalibrationDataError(f"batch must be >= 1, got {batch}.")
    if limit is not None:
        require_int("--limit", limit, 1)
    evaluator = evaluator or task_evaluator(task, model_path, limit)
    if task == "classification" and evaluator is None and data is None:
        raise CalibrationDataError("--task classification needs labels: pass --data with an .npz holding the inputs "
                                   "and a `labels` array (or `fashion-mnist`).")
    if evaluator is not None and data is None:
        return _from_evaluator(evaluator, inputs, batch)
    if isinstance(data, (str, Path)) and str(data) not in BUILTIN_DATA and not Path(data).exists():
        raise CalibrationDataError(f"Benchmark data not found: {data}.{did_you_mean(str(data), BUILTIN_DATA)} Pass an "
                                   f".npz/.npy file, a folder, or a built-in data name ({', '.join(BUILTIN_DATA)}).")
    if isinstance(data, str) and data in BUILTIN_DATA:
        images, image_labels = fashion_mnist_arrays("test", limit)
        name = inputs[0].name if len(inputs) == 1 else "input"
        return _with(evaluator, _labelled({name: images}, image_labels, task, inputs, batch, data))
    if isinstance(data, (str, Path)) and Path(data).suffix == ".npz" and Path(data).is_file():
        arrays, labels = _npz_arrays(Path(data), inputs)
        if limit is not None:
            arrays = {k: v[:limit] for k, v in arrays.items()}
            labels = None if labels is None else labels[:limit]
        return _with(evaluator, _labelled(arrays, labels, task, inputs, batch, str(data)))
    if data is None:
        return BenchInputs(random_feed(inputs, batch), None, "random normal data (no --data given)")
    samples = load_samples(data, inputs)
    if task == "classification":
        raise CalibrationDataError("--task classification needs labels: pass an .npz with `labels` "
                                   "(or `fashion-mnist`).")
    feeds = [samples.sample(i) for i in range(min(batch, len(samples)))]
    return _with(evaluator, BenchInputs(timing_feed(feeds, inputs, batch, samples.source), None, samples.source))


def _with(evaluator: Evaluator | None, bi: BenchInputs) -> BenchInputs:
    """An explicit evaluator wins over the one built from labels; the data still gives the timing feed."""
    return bi if evaluator is None else BenchInputs(bi.feeds, evaluator, bi.source)
