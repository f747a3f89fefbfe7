"""Accuracy budgets: how close to FP32 a quantized model must stay, and how long slimq may search.

Label-free measures need no labels: ``min_cosine`` (every output's cosine to FP32 on held-back
samples) and ``min_agreement`` (top-1 agreement, for outputs that are class scores). With labels,
``max_drop`` bounds the drop of a task metric (``metric``: a built-in name such as ``top1``, ``cer``,
``f1``, or in the Python API any callable). Several budgets can be combined; all must hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from slimq.core.errors import ConfigError, did_you_mean

DEFAULT_TIME_BUDGET = 600.0
DEFAULT_MIN_INT8_SHARE = 0.5


def _fraction(name: str, value: Any, allow_one: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}.")
    if not 0.0 < value <= 1.0 or (value == 1.0 and not allow_one):
        raise ConfigError(f"{name} must be in (0, 1], got {value}; e.g. 0.99.")


@dataclass(frozen=True)
class Budget:
    """What the quantized model must meet; the search stops at the fastest model that meets it."""

    min_cosine: float | None = None
    min_agreement: float | None = None  # top-1 agreement with FP32 on class-score outputs
    max_drop: float | None = None  # drop of `metric` in its own unit (e.g. CER points, top-1 points)
    metric: str | None = None
    time_budget: float = DEFAULT_TIME_BUDGET  # seconds for the whole search
    min_int8_share: float = DEFAULT_MIN_INT8_SHARE  # never float so much that less of the MACs stay int8

    def __post_init__(self) -> None:
        for name in ("min_cosine", "min_agreement"):
            if getattr(self, name) is not None:
                _fraction(name, getattr(self, name))
        if self.max_drop is not None:
            v = self.max_drop
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"max_drop must be a number >= 0 (in the metric's unit), got {v!r}.")
            if self.metric is None:
                raise ConfigError("max_drop needs a metric (--metric top1|cer|f1|...) and evaluation data (--eval).")
        if self.metric is not None and not isinstance(self.metric, str):
            raise ConfigError(f"metric must be a metric name, got {self.metric!r}.")
        t = self.time_budget
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"time_budget must be a positive number of seconds, got {t!r}.")
        s = self.min_int8_share
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
            raise ConfigError(f"min_int8_share must be in [0, 1], got {s!r}.")
        if not self.active:
            raise ConfigError("A budget needs at least one of min_cosine, min_agreement or max_drop (with metric).")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.min_cosine, self.min_agreement, self.max_drop))

    def describe(self) -> str:
        parts = []
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine}")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement >= {self.min_agreement * 100:g} %")
        if self.max_drop is not None:
            parts.append(f"{self.metric} drop <= {self.max_drop:g}")
        return ", ".join(parts)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Budget:
        valid = [f.name for f in fields(cls)]
        for k in d:
            if k not in valid:
                raise ConfigError(f'Unknown budget key "{k}".{did_you_mean(str(k), valid)} '
                                  f"Valid keys: {', '.join(valid)}.")
        return cls(**d)


BUDGET_KEYS = tuple(f.name for f in fields(Budget))
