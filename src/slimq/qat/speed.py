"""Never slower than FP32, for QAT too: the layers whose int8 form makes the exported model slower, found
before training.

This is static PTQ's speed guard (:func:`slimq.runtime.speed.place_for_speed`) on QAT's own export. The model
is prepared, calibrated (abs-max: ranges do not change which kernels run) and exported; FP32 and INT8 are timed
side by side on the target's runtime (1 thread, batch 1, process CPU time); then each op class of quantized
layers (depthwise convolutions by kernel size, 1x1 and spatial convolutions, linears) is tried float, each
candidate prepared with those layers in ``QATConfig.skip``, and a change is kept only when the whole model
measures at least 3 % faster. If no INT8 model beats FP32, every layer is listed.

The plan's ``config`` is the given one with those layers added to ``skip``: prepare with it, then calibrate
and train, so the fake-quant model, its export and the speed measured agree (a layer floated only at export
would no longer match what was trained). Timings differ between machines and runs: under DDP, make the plan
once before launching (or on one rank) and give every rank the same ``config``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from torch import nn
from torch.export import ExportedProgram

from slimq.io.spec import Feeds
from slimq.qat.config import QATConfig
from slimq.qat.export import export_pair
from slimq.qat.model import QATModel, QATWarning, as_inputs, calibrate, prepare
from slimq.qat.modules import QATConv, QATLinear
from slimq.runtime.speed import (
    MIN_MACS,
    MIN_TIMED_MS,
    SpeedPlacement,
    Timer,
    backend_timer,
    conv_class,
    place_for_speed,
    timing_window,
)

TIMED_TARGETS = {"x86": "ort"}  # QAT target -> the runtime it deploys with, when this CPU can time it


@dataclass(frozen=True)
class SpeedPlan:
    """Which quantizable layers to keep float for speed, and the measurements behind it.

    ``config``: the given QATConfig with ``keep_float`` added to ``skip`` (prepare with it).
    ``placement``: the timings and trials (``placement.note()`` is one line for logs)."""

    config: QATConfig
    keep_float: tuple[str, ...]
    placement: SpeedPlacement

    def note(self) -> str:
        return self.placement.note("QAT speed plan")

    def prepare(self, model: nn.Module | ExportedProgram, example_inputs: Any) -> QATModel:
        """:func:`slimq.qat.prepare` with the plan's config; the model's report will carry the plan."""
        qm = prepare(model, example_inputs, self.config)
        qm.speed = self.placement
        return qm


def layer_class(module: nn.Module) -> str | None:
    """The kernel family a QAT layer exports to, named as the static guard names op classes."""
    if isinstance(module, QATLinear):
        return "Gemm"
    if not isinstance(module, QATConv):
        return None
    conv = module.conv
    return conv_class("Conv", tuple(conv.kernel_size), conv.groups,
                      depthwise=conv.groups > 1 and conv.in_channels == conv.groups)


def layer_groups(qm: QATModel, names: set[str]) -> list[tuple[str, frozenset[str]]]:
    """QAT layers by op class, largest class first; only layers that ``skip`` can name (in ``names``)."""
    groups: dict[str, set[str]] = {}
    for name, module in qm.net.named_modules():
        key = layer_class(module)
        if key is not None and name in names:
            groups.setdefault(key, set()).add(name)
    return sorted(((k, frozenset(v)) for k, v in groups.items()), key=lambda kv: (-len(kv[1]), kv[0]))


def _feed(fp32: onnx.ModelProto, example: tuple[Any, ...]) -> Feeds:
    """One sample of the example inputs, keyed by the exported graph's input names."""
    constants = {t.name for t in fp32.graph.initializer}
    names = [i.name for i in fp32.graph.input if i.name not in constants]
    return {n: np.ascontiguousarray(t[:1].detach().cpu().numpy()) for n, t in zip(names, example)}


class _Candidates:
    """QAT models prepared with extra layers skipped, calibrated on the same batches, exported."""

    def __init__(self, model: nn.Module | ExportedProgram, example: Any, cfg: QATConfig, data: list[Any]) -> None:
        self.model, self.example, self.cfg, self.data = model, example, cfg, data

    def prepared(self, floats: frozenset[str]) -> QATModel:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", QATWarning)  # the float ops were announced by the first prepare
            # a candidate may float most MACs (it is only timed): no share threshold
            qm = prepare(self.model, self.example, replace(self.cfg, skip=self.cfg.skip + tuple(sorted(floats)),
                                                           min_int8_mac_share=0.0))
        calibrate(qm, self.data, algo="abs_max")
        return qm

    def int8(self, floats: frozenset[str]) -> onnx.ModelProto:
        return export_pair(self.prepared(floats), self.cfg.target)[1]


def speed_plan(model: nn.Module | ExportedProgram, example_inputs: Any, config: QATConfig | None = None,
               batches: Iterable[Any] | None = None, *, timer: Timer | None = None) -> SpeedPlan:
    """Time QAT's export of ``model`` on the target's runtime and name the layers to keep float for speed.

    ``batches``: calibration batches for the candidates (default: the example inputs); ``timer`` replaces the
    runtime timing (tests). Returns a :class:`SpeedPlan`; prepare with its ``config``."""
    cfg = config if config is not None else QATConfig()
    runtime = TIMED_TARGETS.get(cfg.target)
    if runtime is None:
        why = f'target "{cfg.target}" is not timed here (only {", ".join(TIMED_TARGETS)} runs on this CPU)'
        return SpeedPlan(cfg, (), SpeedPlacement(cfg.target, skipped=why))
    data = list(batches) if batches is not None else [as_inputs(example_inputs, "example_inputs")]
    candidates = _Candidates(model, example_inputs, cfg, data)
    first = candidates.prepared(frozenset())
    macs = sum(o.macs for o in first.report.mac_ops) // max(1, len(first.example_inputs[0]))
    if macs < MIN_MACS:
        why = f"a toy model ({macs:,} MACs per sample < {MIN_MACS:,}): not timed"
        return SpeedPlan(cfg, (), SpeedPlacement(runtime, skipped=why))
    fp32, int8 = export_pair(first, cfg.target)
    feed = _feed(fp32, first.example_inputs)
    skipped, timer = _timer(runtime, fp32, feed, timer)
    if timer is None:
        return SpeedPlan(cfg, (), SpeedPlacement(runtime, skipped=skipped))
    source = model.module() if isinstance(model, ExportedProgram) else model
    groups = layer_groups(first, {name for name, _ in source.named_modules() if name})
    best, rec = place_for_speed(fp32, int8, groups, candidates.int8, timer, runtime)
    if best is None:
        rec.floats = {n: g for g, nodes in groups for n in nodes}
    keep = tuple(sorted(rec.floats))
    return SpeedPlan(replace(cfg, skip=cfg.skip + keep), keep, rec)


def _timer(runtime: str, fp32: onnx.ModelProto, feed: Feeds, timer: Timer | None) -> tuple[str, Timer | None]:
    """The timer to use, or why the model is not timed: FP32 too fast to time reliably."""
    if timer is not None:
        return "", timer
    fp32_ms = backend_timer(runtime, feed, min_time=0.05, rounds=1)([fp32])[0]
    if fp32_ms < MIN_TIMED_MS:
        return f"FP32 runs in {fp32_ms:.3f} ms, too fast to time reliably (< {MIN_TIMED_MS} ms)", None
    return "", backend_timer(runtime, feed, min_time=timing_window(fp32_ms))


__all__ = ["SpeedPlan", "layer_class", "layer_groups", "speed_plan"]
