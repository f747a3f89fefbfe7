"""The QAT model wrapper and the training-time API: prepare, calibrate, freeze, checkpoints."""

from __future__ import annotations

import copy
import dataclasses
import io
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.nn.parallel import DataParallel, DistributedDataParallel

from slimq.core.errors import (
    CalibrationDataError,
    ConfigError,
    ModelLoadError,
    NothingToQuantizeError,
    OutputPathError,
    did_you_mean,
    unknown_choice,
)
from slimq.io.atomic import write_bytes
from slimq.qat.bias_correction import BiasCorrection
from slimq.qat.capture import capture
from slimq.qat.config import QATConfig
from slimq.qat.coverage import probe
from slimq.qat.empirical_bias import MAX_SAMPLES, correct_outputs
from slimq.qat.graph import PrepareReport, is_skipped, swap_modules, trace
from slimq.qat.modules import QATConv
from slimq.qat.placement import insert_quantizers
from slimq.qat.quantizers import CALIBRATION_ALGOS, ActQuantizer, WeightQuantizer
from slimq.qat.reference import reference_network
from slimq.runtime.speed import SpeedPlacement

CHECKPOINT_FORMAT = "slimq-qat-checkpoint-v1"


class QATWarning(UserWarning):
    """Something was left in float or could not be calibrated."""


class QATModel(nn.Module):
    """A fake-quantized copy of a float model; train it like the original.

    Every training-mode forward advances ``step`` (a buffer, so it is checkpointed) and applies
    the config's ``freeze_observer_step``/``freeze_bn_step`` schedule.
    """

    step: torch.Tensor  # buffer

    def __init__(self, net: fx.GraphModule, config: QATConfig, report: PrepareReport,
                 example_inputs: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.report = report
        self.example_inputs = example_inputs
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        # Bias correction's shifts (parameter name in ``net`` -> amount subtracted), so that the FP32
        # reference (:func:`slimq.qat.fidelity.float_network`: the distillation teacher) can undo them.
        self.bias_corrections: dict[str, torch.Tensor] = {}
        # The speed plan this model was prepared from (:meth:`slimq.qat.speed.SpeedPlan.prepare`), for the report.
        self.speed: SpeedPlacement | None = None
        # How calibrate() set the ranges and biases (algorithm, bias correction), for the report.
        self.calibration: dict[str, str] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            with torch.no_grad():
                self.step.add_(1)
            self._apply_schedule(int(self.step))
        return self.net(*args, **kwargs)

    def _apply_schedule(self, step: int) -> None:
        cfg = self.config
        if cfg.freeze_observer_step is not None and step > cfg.freeze_observer_step:
            self.freeze_observers()
        if cfg.freeze_bn_step is not None and step > cfg.freeze_bn_step:
            self.freeze_bn()

    def quantizers(self) -> Iterator[tuple[str, ActQuantizer]]:
        """(name, module) of every activation quantizer."""
        for name, m in self.net.named_modules():
            if isinstance(m, ActQuantizer):
                yield name, m

    def freeze_observers(self) -> None:
        """Stop updating the moving-average activation ranges (STE variant)."""
        for _, q in self.quantizers():
            q.observer_enabled.fill_(False)

    def freeze_bn(self) -> None:
        """Use (and stop updating) BatchNorm running statistics in every folded Conv+BN."""
        for m in self.net.modules():
            if isinstance(m, QATConv) and m.bn is not None:
                m.bn_frozen.fill_(True)


def param_groups(qmodel: nn.Module, lr: float, range_lr_factor: float = 0.01) -> list[dict[str, Any]]:
    """Optimizer parameter groups: learned ranges (PACT alpha, LSQ scales) get ``lr * factor``.

    Ranges are small numbers (scales ~1e-3); at the network's learning rate a few steps can
    drive them to zero, so they train slower. Works for a QATModel or its DDP wrapper.
    """
    range_ids = {
        id(p) for m in qmodel.modules() if isinstance(m, (ActQuantizer, WeightQuantizer))
        for p in m.parameters(recurse=False)
    }
    ranges = [p for p in qmodel.parameters() if id(p) in range_ids]
    others = [p for p in qmodel.parameters() if id(p) not in range_ids]
    groups: list[dict[str, Any]] = [{"params": others, "lr": lr}]
    if ranges:
        groups.append({"params": ranges, "lr": lr * range_lr_factor})
    return groups


def unwrap(model: nn.Module) -> QATModel:
    """Return the QATModel inside a (Distributed)DataParallel wrapper, or the model itself."""
    inner = model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model
    if not isinstance(inner, QATModel):
        raise ConfigError(
            f"Expected a model returned by slimq.qat.prepare, got {type(inner).__name__}."
        )
    return inner


def as_inputs(inputs: Any, what: str) -> tuple[torch.Tensor, ...]:
    """Normalise a tensor or a tuple/list of tensors to a tuple of tensors."""
    items = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise ConfigError(f"{what} must be a tensor or a tuple of tensors, got {type(inputs).__name__}.")
    return items


def _check_skip_patterns(model: nn.Module, patterns: tuple[str, ...]) -> None:
    names = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        if not any(is_skipped(name, (pattern,)) for name in names):
            raise ConfigError(
                f'QATConfig.skip pattern "{pattern}" matches no module of {type(model).__name__}.'
                f"{did_you_mean(pattern, names)} Module names look like: {', '.join(names[:8])}."
            )


def _build(model: nn.Module | ExportedProgram, example: tuple[torch.Tensor, ...], cfg: QATConfig,
           mode: str) -> tuple[fx.GraphModule, PrepareReport]:
    """Capture (fx or export), fold and swap layers, place quantizers, count MACs."""
    if mode == "fx" and isinstance(model, nn.Module):
        gm = trace(copy.deepcopy(model), cfg.skip)
    else:  # a torch.export program is always captured as exported
        gm = capture(model, example, cfg.skip)
    swap_modules(gm, cfg)
    names, quantized, float_ops, skipped = insert_quantizers(gm, cfg)
    if not quantized:
        raise NothingToQuantizeError(
            f"{_name(model)} has no Conv1d/Conv2d/Linear/Add/AvgPool to quantize"
            f"{' outside the skipped modules' if cfg.skip else ''} ({mode} capture).")
    ops = probe(gm, example)
    return gm, PrepareReport(tuple(quantized), tuple(float_ops), tuple(skipped), tuple(names), mode, tuple(ops))


def _name(model: nn.Module | ExportedProgram) -> str:
    return type(model).__name__


def _choose(model: nn.Module | ExportedProgram, example: tuple[torch.Tensor, ...],
            cfg: QATConfig) -> tuple[fx.GraphModule, PrepareReport]:
    """``capture="auto"``: fx when it quantizes every MAC, else the capture reaching the larger int8 MAC share."""
    if isinstance(model, ExportedProgram) or cfg.capture != "auto":
        return _build(model, example, cfg, "fx" if cfg.capture == "fx" else "export")
    fx_result, fx_error = None, None
    try:
        fx_result = _build(model, example, cfg, "fx")
        if fx_result[1].int8_mac_share >= 1.0:
            return fx_result
    except (ModelLoadError, NothingToQuantizeError) as exc:
        fx_error = exc
    try:
        exported = _build(model, example, cfg, "export")
    except (ModelLoadError, NothingToQuantizeError, ConfigError) as exc:
        if fx_result is not None:
            return fx_result
        assert fx_error is not None
        raise type(fx_error)(f"{fx_error} (torch.export graph capture failed too: {exc})") from exc
    if fx_result is None or exported[1].int8_mac_share > fx_result[1].int8_mac_share:
        return exported
    return fx_result


def _check_share(report: PrepareReport, cfg: QATConfig, name: str) -> None:
    share = report.int8_mac_share
    if share >= cfg.min_int8_mac_share:
        return
    total = sum(o.macs for o in report.mac_ops)
    floats = report.float_macs()
    listed = ", ".join(f"{o.name} ({o.op}, {100 * o.macs / total:.1f} % of MACs)" for o in floats[:12])
    more = f" and {len(floats) - 12} more" if len(floats) > 12 else ""
    others = ", ".join(f"{u.name} ({u.op})" for u in report.unsupported[:12])
    raise NothingToQuantizeError(
        f"Only {100 * share:.1f} % of {name}'s multiply-accumulates can run in int8 ({report.capture} capture), "
        f"below QATConfig.min_int8_mac_share={cfg.min_int8_mac_share}. Left in float: {listed}{more}."
        f"{f' Other float ops: {others}.' if others else ''} Remove these layers from QATConfig.skip, "
        f"try QATConfig(capture=\"{'fx' if report.capture == 'export' else 'export'}\"), or lower "
        f"min_int8_mac_share to accept a mostly-float model.")


def prepare(model: nn.Module | ExportedProgram, example_inputs: Any, config: QATConfig | None = None) -> QATModel:
    """Return a fake-quantized copy of ``model`` (the original is left untouched).

    ``model``: a float ``nn.Module`` or a ``torch.export`` program (``torch.export.load`` of a ``.pt2``,
    exported with a dynamic batch dimension). How the graph is captured: ``QATConfig.capture``. Modules
    and ops that have no int8 form are kept in float, listed in ``qmodel.report`` and announced with a
    :class:`QATWarning`; when less than ``QATConfig.min_int8_mac_share`` of the MACs can be quantized,
    prepare raises NothingToQuantizeError listing the float MAC ops.
    """
    cfg = config if config is not None else QATConfig()
    if isinstance(model, (QATModel, DataParallel, DistributedDataParallel)):
        raise ConfigError("prepare() takes the plain float model; call it before wrapping in DDP.")
    if not isinstance(model, (nn.Module, ExportedProgram)):
        raise ConfigError(f"prepare() takes a torch nn.Module or a torch.export ExportedProgram, got "
                          f"{type(model).__name__}.")
    example = tuple(t.detach().clone() for t in as_inputs(example_inputs, "example_inputs"))
    _check_skip_patterns(model.module() if isinstance(model, ExportedProgram) else model, cfg.skip)
    gm, report = _choose(model, example, cfg)
    _check_share(report, cfg, _name(model))
    if report.unsupported:
        ops = ", ".join(f"{op.name} ({op.op})" for op in report.unsupported)
        warnings.warn(f"QAT leaves these ops in float: {ops}.", QATWarning, stacklevel=2)
    qmodel = QATModel(gm, cfg, report, example)
    qmodel.train(model.training if isinstance(model, nn.Module) else False)
    return qmodel


def _batch_inputs(batch: Any) -> tuple[torch.Tensor, ...]:
    inputs = as_inputs(batch, "A calibration batch")
    for t in inputs:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CalibrationDataError("A calibration batch contains NaN or Inf values.")
    return inputs


def calibrate(qmodel: nn.Module, batches: Iterable[Any], max_batches: int | None = None,
              algo: str = "avg", bias_correction: bool | str = False) -> int:
    """Set every activation range from data before training (PaddleSlim's quant_post first).

    Runs the model in eval mode with activations in float. ``algo="avg"``: each quantizer's range
    becomes the mean over batches of the per-batch ``max|x|`` (max over ranks when distributed, so
    every rank must call this with the same number of batches); ``"hist"``, ``"mse"``, ``"KL"``,
    ``"emd"``, ``"abs_max"``: static PTQ's calibration algorithms on each quantizer's grid (better
    when the model is converted without training). ``bias_correction``: True also subtracts each layer's
    mean output shift caused by weight rounding from its bias (:mod:`slimq.qat.bias_correction`);
    ``"empirical"`` then, layer by layer, its whole mean output shift against the FP32 model on the first
    calibration samples (:mod:`slimq.qat.empirical_bias`; one partial forward per layer). Returns the batch
    count.
    """
    if algo not in CALIBRATION_ALGOS:
        raise unknown_choice("QAT calibration algorithm", algo, CALIBRATION_ALGOS)
    if not (isinstance(bias_correction, bool) or bias_correction == "empirical"):
        raise ConfigError(f"bias_correction must be False, True or \"empirical\", got {bias_correction!r}.")
    qm = unwrap(qmodel)
    quantizers = [q for _, q in qm.quantizers()]
    training = qm.training
    qm.eval()
    count = 0
    correction = BiasCorrection(qm.net) if bias_correction else None
    kept: list[tuple[torch.Tensor, ...]] = []  # the samples empirical correction measures on
    try:
        for q in quantizers:
            q.start_calibration(algo)
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and count >= max_batches:
                    break
                inputs = _batch_inputs(batch)
                qm(*inputs)
                count += 1
                if bias_correction == "empirical" and sum(len(b[0]) for b in kept) < MAX_SAMPLES:
                    kept.append(inputs)
        if count == 0:
            raise CalibrationDataError("calibrate() got no batches; pass at least one input batch.")
        missed = [name for name, q in qm.quantizers() if not q.finish_calibration()]
        if correction is not None:
            correction.apply(qm.bias_corrections)
            correction.remove()
        if kept:
            _correct_empirically(qm, kept)
        mode = bias_correction if isinstance(bias_correction, str) else ("weights" if bias_correction else "off")
        qm.calibration = {"algo": algo, "bias_correction": mode, "batches": str(count)}
    finally:
        for q in quantizers:
            q.calibrating, q._calib = False, None
        if correction is not None:
            correction.remove()
        qm.train(training)
    if missed:
        warnings.warn(f"Calibration never reached: {', '.join(missed)}.", QATWarning, stacklevel=2)
    return count


def _correct_empirically(qm: QATModel, kept: list[tuple[torch.Tensor, ...]]) -> None:
    correct_outputs(qm.net, reference_network(qm.net, qm.bias_corrections), kept, qm.bias_corrections)


def save_checkpoint(qmodel: nn.Module, path: str | Path) -> Path:
    """Atomically save config + state_dict (loadable with ``torch.load(weights_only=True)``)."""
    qm = unwrap(qmodel)
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputPathError(f"Folder {path.parent} does not exist; create it first.")
    payload = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(qm.config),
               "state_dict": qm.state_dict(), "bias_corrections": dict(qm.bias_corrections)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes(path, buf.getvalue())


def load_checkpoint(qmodel: nn.Module, path: str | Path) -> QATModel:
    """Load a checkpoint written by :func:`save_checkpoint` into a model prepared the same way."""
    qm = unwrap(qmodel)
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"Cannot load QAT checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path} is not a slimq QAT checkpoint ({CHECKPOINT_FORMAT}).")
    saved = QATConfig.from_dict(payload["config"])
    if saved != qm.config:
        raise ConfigError(f"{path} was trained with {saved}, but the model was prepared with {qm.config}.")
    try:
        qm.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not match the prepared model: {exc}") from exc
    qm.bias_corrections = {k: v.clone() for k, v in payload.get("bias_corrections", {}).items()}
    return qm
