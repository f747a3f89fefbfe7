"""QAT configuration, export-target rules and the YAML training recipe.

Integer grids (documented here once, used everywhere in :mod:`slimq.qat`):

* Weights: per-output-channel symmetric, ``scale_c = max|w_c| / (2**(b-1) - 1)``, zero point 0,
  axis 0 (Conv ``[out, in/g, kh, kw]`` and Linear ``[out, in]``), integers in the narrow range
  ``[-127, 127]`` on every target (as the static quantizer does: arm kernels require it, and
  on x86 it avoids the u8*s8 pair-sum saturation of non-VNNI kernels). LSQ clamps to it too.
* Activations: ``moving_average_abs_max`` (PaddleSlim), i.e. the grid spans ``[-a, a]`` with
  ``a`` a bias-corrected moving average (rate 0.9) of the per-batch ``max|x|``.
  A tensor that is known to be non-negative (the output of a fused ReLU/ReLU6) uses the
  *unsigned* grid ``[0, 2**b - 1]`` with ``scale = a / (2**b - 1)`` on targets whose
  kernels have it (x86, arm): twice the resolution, and it lets onnxruntime drop the ReLU
  and run Conv as ``QLinearConv``. Other tensors use the signed grid ``[-2**(b-1), 2**(b-1)-1]``
  with ``scale = a / (2**(b-1) - 1)``.
* Export (8-bit only): x86 stores activations as uint8 (signed grid: zero point 128, the
  int8 grid shifted; unsigned grid: zero point 0); tensorrt stores int8 with zero point 0
  (TensorRT only supports symmetric int8, so it never uses the unsigned grid); arm stores
  int8 (signed grid: zero point 0; unsigned grid: zero point -128).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from slimq.core.errors import ConfigError, did_you_mean
from slimq.core.fields import require_choice, require_number, require_str
from slimq.core.targets import QAT_TARGETS, TargetRules, target_rules

Variant = Literal["ste", "pact", "lsq"]
Target = Literal["x86", "tensorrt", "arm"]
Capture = Literal["auto", "fx", "export"]
VARIANTS: tuple[str, ...] = ("ste", "pact", "lsq")
CAPTURES: tuple[str, ...] = ("auto", "fx", "export")


# The storage rules of each QAT target (activation dtype, unsigned grid), from the one target table.
TARGETS: dict[str, TargetRules] = {t: target_rules(t) for t in QAT_TARGETS}


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}.")
    if value < low or (high is not None and value > high):
        upper = f" and <= {high}" if high is not None else ""
        raise ConfigError(f"{name} must be >= {low}{upper}, got {value}.")


def _check_fields(cls: type, data: Mapping[str, Any], what: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a mapping of keys to values, got {type(data).__name__}.")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(
                f'Unknown {what} key "{key}".{did_you_mean(str(key), names)} '
                f"Valid keys: {', '.join(sorted(names))}."
            )


@dataclass(frozen=True)
class QATConfig:
    """Settings of :func:`slimq.qat.prepare`.

    ``freeze_observer_step``/``freeze_bn_step``: after this many training forward passes the
    activation ranges / BatchNorm statistics stop updating (``None``: never). PACT and LSQ
    only observe data to initialise their ranges, which then train as parameters.
    ``skip``: fnmatch patterns of module names left in float (also opaque to tracing).
    ``capture``: how :func:`slimq.qat.prepare` sees the model. ``"fx"``: torch.fx tracing and module
    swapping (``nn.Conv1d/2d``, ``nn.Linear`` and their BatchNorms); ``"export"``: torch.export graph
    capture, which also sees ``F.conv2d``/``F.linear`` calls in custom modules, padding and matmuls
    (:mod:`slimq.qat.capture`); ``"auto"`` (default): fx when it quantizes every MAC, else whichever
    reaches the larger int8 MAC share.
    ``min_int8_mac_share``: prepare fails, listing the float MAC ops, when less than this fraction of the
    model's multiply-accumulates can run in int8 (lower it to accept a mostly-float model; 0 disables).
    """

    variant: Variant = "ste"
    weight_bits: int = 8
    act_bits: int = 8
    moving_rate: float = 0.9
    target: Target = "x86"
    freeze_observer_step: int | None = None
    freeze_bn_step: int | None = None
    skip: tuple[str, ...] = field(default=())
    capture: Capture = "auto"
    min_int8_mac_share: float = 0.5

    def __post_init__(self) -> None:
        require_choice("QAT variant", self.variant, VARIANTS)  # typed: a list is refused, not hashed
        require_choice("QAT target", self.target, TARGETS)
        _check_int("weight_bits", self.weight_bits, 2, 8)
        _check_int("act_bits", self.act_bits, 2, 8)
        rate = self.moving_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
            raise ConfigError(f"moving_rate must be a number in (0, 1), got {rate!r}.")
        for name in ("freeze_observer_step", "freeze_bn_step"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0)
        require_choice("QAT capture", self.capture, CAPTURES)
        share = self.min_int8_mac_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ConfigError(f"min_int8_mac_share must be a number in [0, 1], got {share!r}.")
        skip = (self.skip,) if isinstance(self.skip, str) else self.skip
        if not isinstance(skip, (tuple, list)) or not all(isinstance(s, str) for s in skip):
            raise ConfigError(f"skip must be a list of module-name patterns, got {self.skip!r}.")
        object.__setattr__(self, "skip", tuple(skip))

    @property
    def rules(self) -> TargetRules:
        """The storage rules of this config's target."""
        return TARGETS[self.target]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QATConfig":
        """Build from a plain mapping (e.g. YAML); unknown keys raise ConfigError with a hint."""
        _check_fields(cls, data, "QAT config")
        return cls(**dict(data))


@dataclass(frozen=True)
class QATRecipe:
    """A QAT fine-tuning run of a zoo model on Fashion-MNIST (see ``recipes/qat_fmnist.yaml``).

    ``epochs`` may be fractional (0.5 = half of the training set); ``train_limit`` caps the
    number of training images (None: all 60k).
    """

    model: str = "fmnist_resnet"
    epochs: float = 1.0
    lr: float = 1e-3
    momentum: float = 0.9
    label_smoothing: float = 0.1
    batch_size: int = 128
    variant: Variant = "ste"
    target: Target = "x86"
    freeze_observer_step: int | None = None
    freeze_bn_step: int | None = None
    calib_batches: int = 8
    train_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.qat_config()  # validates variant, target and freeze steps
        require_str("model", self.model)
        for name in ("epochs", "lr"):  # finite: epochs .inf would train forever, lr .nan would train nothing
            require_number(name, getattr(self, name), 0.0, low_open=True)
        for name in ("momentum", "label_smoothing"):
            require_number(name, getattr(self, name), 0.0, 1.0, high_open=True)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("calib_batches", self.calib_batches, 0)
        _check_int("seed", self.seed, 0)
        if self.train_limit is not None:
            _check_int("train_limit", self.train_limit, 1)

    def qat_config(self) -> QATConfig:
        """The :class:`QATConfig` this recipe trains with."""
        return QATConfig(
            variant=self.variant,
            target=self.target,
            freeze_observer_step=self.freeze_observer_step,
            freeze_bn_step=self.freeze_bn_step,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QATRecipe":
        """Build from a plain mapping; unknown keys raise ConfigError with a hint."""
        _check_fields(cls, data, "QAT recipe")
        return cls(**dict(data))


def default_recipe_path() -> Path:
    """Path of the recipe shipped with slimq (``slimq/recipes/qat_fmnist.yaml``)."""
    return Path(__file__).resolve().parent.parent / "recipes" / "qat_fmnist.yaml"


def load_recipe(path: str | Path | None = None) -> QATRecipe:
    """Load a :class:`QATRecipe` from YAML (default: the shipped Fashion-MNIST recipe)."""
    from slimq.io.recipe import read_yaml_document

    path = Path(path) if path is not None else default_recipe_path()
    data = read_yaml_document(path, "QAT recipe")  # missing, directory, non-UTF-8, bad YAML: ConfigError
    try:
        return QATRecipe.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"In {path}: {exc}") from exc
