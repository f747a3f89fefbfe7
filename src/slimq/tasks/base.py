"""The evaluator interface shared by all tasks, and the helpers that drive it.

An evaluator owns a fixed evaluation set. ``inputs()`` yields the model feeds batch by
batch; the caller runs the model on each feed and hands the outputs, in the same order,
to ``score()``, which returns named metrics. The caller never needs to know labels,
preprocessing or decoding, so ``slimq bench`` can compare FP32 and INT8 models of any
task with the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from slimq.core.errors import CalibrationDataError, ConfigError

Feeds = dict[str, np.ndarray]
SessionRun = Callable[[Feeds], Sequence[np.ndarray]]


@runtime_checkable
class Evaluator(Protocol):
    """A fixed evaluation set plus the metric computation for one task."""

    name: str
    primary_metric: str
    higher_is_better: bool

    def inputs(self) -> Iterator[Feeds]:
        """Yield the model feeds, one dict per batch, always in the same order."""
        ...

    def score(self, outputs: list[list[np.ndarray]]) -> dict[str, float]:
        """Return metrics given the model outputs of every batch yielded by ``inputs()``."""
        ...


def collect_outputs(session_run: SessionRun, evaluator: Evaluator) -> list[list[np.ndarray]]:
    """Run ``session_run`` on every batch of ``evaluator`` and return the outputs in order."""
    outputs = []
    for feeds in evaluator.inputs():
        result = session_run(feeds)
        outputs.append([np.asarray(r) for r in result])
    return outputs


def evaluate(session_run: SessionRun, evaluator: Evaluator) -> dict[str, float]:
    """Run a model over an evaluator's data and return its metrics.

    ``session_run`` maps a feed dict to the list of model outputs, e.g.
    ``lambda feeds: session.run(None, feeds)`` for an onnxruntime session.
    """
    return evaluator.score(collect_outputs(session_run, evaluator))


def degradation(
    evaluator: Evaluator, reference: dict[str, float], other: dict[str, float]
) -> float:
    """How much worse ``other`` is than ``reference`` on the primary metric (> 0 is worse)."""
    key = evaluator.primary_metric
    for metrics in (reference, other):
        if key not in metrics:
            raise ConfigError(
                f'Metric "{key}" of evaluator "{evaluator.name}" is missing; '
                f"got {sorted(metrics)}. Pass the dicts returned by evaluate()."
            )
    diff = reference[key] - other[key]
    return diff if evaluator.higher_is_better else -diff


def check_batch_count(name: str, outputs: list[list[np.ndarray]], expected: int) -> None:
    """Raise CalibrationDataError unless there is one output list per yielded batch."""
    if len(outputs) != expected:
        raise CalibrationDataError(
            f"Evaluator {name} yielded {expected} batches but score() got outputs for "
            f"{len(outputs)}. Run the model on every feed of inputs(), in order."
        )
    for i, out in enumerate(outputs):
        if len(out) == 0:
            raise CalibrationDataError(
                f"Evaluator {name}: the model returned no outputs for batch {i}."
            )


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Split ``range(n)`` into consecutive slices of at most ``batch_size`` items."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
