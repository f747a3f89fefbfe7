"""Label-free QAT: train the fake-quantized model to reproduce its FP32 teacher (as PaddleSlim's ACT does).

No labels: the loss compares the student's outputs with the teacher's on the same unlabeled samples,
KL divergence of the softened class distributions (``loss="kl"``, temperature ``T``, scaled by ``T**2``)
or the mean squared error normalised by the teacher's power (``loss="mse"``, for regression-type outputs),
plus optionally the same normalised MSE on intermediate features (``features``: names of QAT Conv/Linear
modules; the teacher is then the prepared network with fake quantization off, whose modules have the
same names and BatchNorm folded the same way).

The data is what PTQ calibrates on: a folder of images or ``.npy``/``.npz`` files, an ``.npz``/``.npy``
file, an array/tensor of samples, or a list of batches (:func:`slimq.io.samples.load_samples`).

Distributed: under ``torchrun`` (a default process group with more than one rank) the student is wrapped
in DistributedDataParallel unless it already is; every rank draws the same shuffled order and takes its
own slice of each global batch, so ranks see different samples and keep identical weights and ranges.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from slimq.core.errors import CalibrationDataError, ConfigError, unknown_choice
from slimq.io.samples import load_samples
from slimq.io.spec import InputSpec
from slimq.qat.fidelity import float_network
from slimq.qat.model import QATModel, param_groups, unwrap
from slimq.qat.quantizers import distributed_world

LOSSES = ("kl", "mse")


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`distill`. ``batch_size`` is the global batch (split across ranks); ``lr``: Adam
    with cosine decay to 0 over ``steps``; ``freeze_bn``/``freeze_ranges``: keep BatchNorm statistics and
    activation ranges as calibrated (the default: small unlabeled batches estimate neither well)."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-5
    temperature: float = 1.0
    loss: str = "kl"
    features: tuple[str, ...] = field(default=())
    feature_weight: float = 1.0
    freeze_bn: bool = True
    freeze_ranges: bool = True
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}.")
        for name in ("feature_weight", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}.")
        if self.loss not in LOSSES:
            raise unknown_choice("distillation loss", self.loss, LOSSES)
        features = (self.features,) if isinstance(self.features, str) else tuple(self.features)
        object.__setattr__(self, "features", features)


@dataclass(frozen=True)
class DistillResult:
    """What :func:`distill` did: optimizer steps, mean loss over the first and last tenth, seconds."""

    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    losses: tuple[float, ...]


def _as_tensor_samples(qm: QATModel, data: Any, preprocess: Any, any_size: bool) -> torch.Tensor:
    """All samples of ``data`` as one tensor (single-input models), validated like PTQ's data
    (``any_size``: only rank, channels and dtype; an augmentation makes the model's size)."""
    example = qm.example_inputs
    if len(example) != 1:
        raise ConfigError("distill() supports single-input models; pass batches yourself for several inputs.")
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], torch.Tensor):
        data = np.concatenate([t.detach().cpu().numpy() for t in data])
    e = example[0]
    dims = (e.shape[1], *[None] * (e.dim() - 2)) if any_size and e.dim() > 2 else tuple(e.shape[1:])
    spec = InputSpec("input", (None, *dims), np.dtype(str(e.dtype).removeprefix("torch.")).type)
    samples = load_samples(data, [spec], preprocess)
    arrays = [samples.sample(i)["input"] for i in range(len(samples))]
    return torch.from_numpy(np.concatenate(arrays))


def _rank() -> int:
    return dist.get_rank() if distributed_world() > 1 else 0


def _batches(x: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled global batches; each rank yields its own slice (same order on every rank)."""
    world, rank = distributed_world(), _rank()
    if batch < world:
        raise ConfigError(f"batch_size {batch} is smaller than the number of ranks ({world}).")
    gen = torch.Generator().manual_seed(seed)
    per_rank = batch // world
    while True:
        order = torch.randperm(len(x), generator=gen)
        if len(order) < batch:
            order = order.repeat(math.ceil(batch / len(order)))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i:i + batch][rank * per_rank:(rank + 1) * per_rank]
            yield x[idx]


class _Features:
    """Forward hooks collecting the outputs of named modules of a network."""

    def __init__(self, net: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(net.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            qat_layers = [n for n, m in modules.items() if hasattr(m, "weight_quant")]
            raise ConfigError(f"distill features {missing} are not modules of the prepared model; QAT layers "
                              f"are named like: {', '.join(qat_layers[:8])}.")
        self.values: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            self.values[name] = output
        return record

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _first(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _normalised_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-12)


def _output_loss(s: torch.Tensor, t: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    if cfg.loss == "mse":
        return _normalised_mse(s, t)
    temp = cfg.temperature
    log_p = F.log_softmax(s.flatten(0, -2) / temp, dim=-1)
    target = F.log_softmax(t.flatten(0, -2) / temp, dim=-1)
    return F.kl_div(log_p, target, log_target=True, reduction="batchmean") * temp * temp


def _teacher(qm: QATModel, teacher: nn.Module | None) -> nn.Module:
    net = float_network(qm) if teacher is None else copy.deepcopy(teacher)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def _student(qmodel: nn.Module) -> nn.Module:
    """The model to train: wrapped in DDP when running distributed and not wrapped yet."""
    if distributed_world() > 1 and not isinstance(qmodel, (DistributedDataParallel, DataParallel)):
        return DistributedDataParallel(qmodel, broadcast_buffers=False)
    return qmodel


def distill(qmodel: nn.Module, data: Any, teacher: nn.Module | None = None, config: DistillConfig | None = None,
            *, preprocess: Any = None, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
            log: Callable[[int, float], None] | None = None) -> DistillResult:
    """Train a prepared (and calibrated) QAT model to match its FP32 teacher on unlabeled ``data``.

    ``teacher``: default the prepared network with fake quantization off (the FP32 model with BatchNorm
    folded, frozen at the start); give another FP32 model to distill from it (logits only).
    ``preprocess``: a :class:`slimq.io.images.PreprocessSpec` for image folders. ``augment``: applied to
    every batch before teacher and student see it (e.g. random crops and flips). ``log(step, loss)``
    is called every 10 steps on rank 0. Returns a :class:`DistillResult`; convert the model afterwards.
    """
    cfg = config if config is not None else DistillConfig()
    qm = unwrap(qmodel)
    if cfg.features and teacher is not None:
        raise ConfigError("distill features match modules of the prepared network; leave teacher=None to use it.")
    x = _as_tensor_samples(qm, data, preprocess, augment is not None)
    if len(x) < 2:
        raise CalibrationDataError(f"distill() needs at least 2 samples, got {len(x)}.")
    if cfg.freeze_bn:
        qm.freeze_bn()
    if cfg.freeze_ranges:
        qm.freeze_observers()
    teach = _teacher(qm, teacher)
    student = _student(qmodel)
    hooks = (_Features(qm.net, cfg.features), _Features(teach, cfg.features)) if cfg.features else None
    opt = torch.optim.Adam(param_groups(student, cfg.lr), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    losses = _train(student, teach, _batches(x, cfg.batch_size, cfg.seed), opt, sched, cfg, hooks, augment, log)
    if hooks is not None:
        for h in hooks:
            h.remove()
    return losses


def _quiet(student: nn.Module, freeze_bn: bool) -> None:
    """Dropout off (the teacher has none either) and, with ``freeze_bn``, float BatchNorms on running stats."""
    for m in student.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or (freeze_bn and isinstance(m, nn.modules.batchnorm._BatchNorm)):
            m.eval()


def _train(student: nn.Module, teacher: nn.Module, batches: Iterator[torch.Tensor], opt: torch.optim.Optimizer,
           sched: Any, cfg: DistillConfig, hooks: tuple[_Features, _Features] | None,
           augment: Callable[[torch.Tensor], torch.Tensor] | None,
           log: Callable[[int, float], None] | None) -> DistillResult:
    start, losses = time.perf_counter(), []
    student.train()
    _quiet(student, cfg.freeze_bn)
    for step in range(1, cfg.steps + 1):
        xb = next(batches)
        xb = augment(xb) if augment is not None else xb
        with torch.no_grad():
            t_out = _first(teacher(xb)).float()
        loss = _output_loss(_first(student(xb)).float(), t_out, cfg)
        if hooks is not None:
            feats = [_normalised_mse(hooks[0].values[n], hooks[1].values[n]) for n in cfg.features]
            loss = loss + cfg.feature_weight * torch.stack(feats).mean()
        if not torch.isfinite(loss):
            raise CalibrationDataError(f"The distillation loss became {loss.item()} at step {step}; lower the lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and _rank() == 0 and (step % 10 == 0 or step == cfg.steps):
            log(step, float(np.mean(losses[-10:])))
    student.eval()
    tenth = max(1, len(losses) // 10)
    return DistillResult(cfg.steps, float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:])),
                         time.perf_counter() - start, tuple(losses))


__all__ = ["DistillConfig", "DistillResult", "distill"]
