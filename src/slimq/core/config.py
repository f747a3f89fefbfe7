"""Frozen configuration dataclasses (the per-target rules live in :mod:`slimq.core.targets`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from slimq.core.budget import Budget
from slimq.core.errors import ConfigError, did_you_mean, unknown_choice
from slimq.core.fields import (
    check_keys,
    require_bool,
    require_choice,
    require_int,
    require_number,
    require_optional_bool,
    require_str,
    require_str_tuple,
)
from slimq.core.observers import ALGORITHMS, get_algorithm
from slimq.core.targets import TARGETS, TargetRules, target_rules


@dataclass(frozen=True)
class SkipSpec:
    """Nodes to leave in float: exact node names, op types, or regexes over node names."""

    names: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, require_str_tuple(f"skip.{f.name}", getattr(self, f.name)))

    def validate(self, node_names: Iterable[str], op_types: Iterable[str]) -> None:
        """Every listed name must exist; an unknown one is an error with a suggestion."""
        node_names, op_types = list(node_names), set(op_types)
        known = set(node_names)
        for n in self.names:
            if n not in known:
                raise ConfigError(f'Skip list names node "{n}", which is not in the model.'
                                  f"{did_you_mean(n, known)} Run `slimq inspect MODEL` to list node names.")
        for t in self.op_types:
            if t not in op_types:
                raise ConfigError(f'Skip list names op type "{t}", which the model does not use.'
                                  f"{did_you_mean(t, op_types)} Op types present: {', '.join(sorted(op_types))}.")
        for p in self.patterns:
            try:
                rx = re.compile(p)
            except re.error as e:
                raise ConfigError(f'Skip pattern "{p}" is not a valid regular expression: {e}.') from None
            if not any(rx.search(n) for n in node_names):
                raise ConfigError(f'Skip pattern "{p}" matches no node name. Run `slimq inspect MODEL` to list them.')

    def matches(self, name: str, op_type: str) -> bool:
        return (name in self.names or op_type in self.op_types
                or any(re.search(p, name) for p in self.patterns))


STATIC_ROUNDING = ("nearest", "adaround")
WEIGHT_BITS = (8, 4)
MAX_BINS = 1 << 20  # histogram bins per calibrated tensor (the default 2048 is plenty)


@dataclass(frozen=True)
class StaticConfig:
    """Settings of static post-training quantization."""

    algo: str = "hist"
    hist_percent: float = 0.9999
    bins: int = 2048
    target: str = "x86"
    reduce_range: bool | None = None  # None: decided from the CPU (True without VNNI on x86)
    per_channel: bool = True
    batch_size: int = 8
    max_samples: int = 256
    holdout: int = 16  # samples kept back to measure FP32-vs-INT8 agreement
    op_types: tuple[str, ...] | None = None  # restrict quantization to these op types
    skip: SkipSpec = field(default_factory=SkipSpec)
    memory_budget_mb: int = 1024  # per calibration run for exposed intermediate tensors
    min_cosine: float = 0.98  # below this the fidelity check warns (or fails with strict)
    strict: bool = False
    two_sided_ranges: bool = False  # hist/mse with u8: clip the low and high side separately
    bias_correction: bool = True  # subtract the weight-rounding shift from Conv/Gemm biases (calibration means)
    show_progress: bool = True
    # never slower than FP32: time INT8 against FP32 on the target's runtime (x86: onnxruntime, openvino:
    # OpenVINO; 1 thread, batch 1) and keep float the op classes int8 makes slower (slimq.runtime.speed)
    speed_guard: bool = True
    # the report's "runs fastest on" line: FP32 and INT8 timed on every installed runtime (needs OpenVINO)
    compare_runtimes: bool = True
    # accuracy control: with a budget, slimq searches calibration settings and mixed precision
    # until the model meets it (slimq.static.search); None: quantize once and report
    budget: Budget | None = None
    # exact FP32 rewrites before quantization (slimq.static.rewrites)
    smoothquant: str = "auto"  # "auto": MatMul/Gemm inputs with outlier channels, where it helps; "off"
    smoothquant_alpha: float | None = None  # None: searched per site
    cle: bool = False  # cross-layer equalization of Conv -> ReLU -> Conv pairs (helps per-tensor weights)
    cle_relu6: str = "skip"  # ReLU6 pairs: "skip", "exact" (adds a float Min), "relu" (not exact)
    # "adaround": learn each Conv/Gemm/MatMul weight's rounding on the calibration data (slimq.static.adaround;
    # needs torch), within adaround_time_budget seconds for all layers; "nearest": round to nearest
    weight_rounding: str = "nearest"
    adaround_time_budget: float = 120.0
    weight_bits: int = 8  # 4: int4 values [-7, 7] stored in int8 initializers (W4A8; onnxruntime runs them as int8)

    def __post_init__(self) -> None:
        if not isinstance(self.algo, str):
            require_choice("algo", self.algo, ALGORITHMS)  # refuses it, naming the valid algorithms
        get_algorithm(self.algo)
        require_choice("target", self.target, TARGETS)
        require_number("hist_percent", self.hist_percent, 0.0, 1.0, low_open=True)
        if require_int("bins", self.bins, 16, MAX_BINS) & (self.bins - 1):
            raise ConfigError(f"bins must be a power of two (the histogram merges bins pairwise), got {self.bins}; "
                              "the default is 2048.")
        for name in ("batch_size", "max_samples", "memory_budget_mb"):
            require_int(name, getattr(self, name), 1)
        require_int("holdout", self.holdout, 0)
        require_number("min_cosine", self.min_cosine, 0.0, 1.0, low_open=True)
        require_optional_bool("reduce_range", self.reduce_range)
        for name in ("per_channel", "strict", "two_sided_ranges", "bias_correction", "show_progress", "cle"):
            require_bool(name, getattr(self, name))
        require_choice("smoothquant", self.smoothquant, ("auto", "off"))
        require_choice("cle_relu6", self.cle_relu6, ("skip", "exact", "relu"))
        if self.smoothquant_alpha is not None:
            require_number("smoothquant_alpha", self.smoothquant_alpha, 0.0, 1.0)
        require_choice("weight rounding", self.weight_rounding, STATIC_ROUNDING)
        require_number("adaround_time_budget", self.adaround_time_budget, 0.0, low_open=True)
        if isinstance(self.weight_bits, bool) or self.weight_bits not in WEIGHT_BITS:
            raise unknown_choice("weight bits", str(self.weight_bits), [str(b) for b in WEIGHT_BITS])
        _normalize_selection(self)
        _normalize_budget(self)

    @property
    def algorithm_name(self) -> str:
        return get_algorithm(self.algo).name

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StaticConfig":
        """Build from a recipe's `static` mapping; unknown keys are an error with a suggestion."""
        return cls(**check_keys("static recipe", d, {f.name for f in fields(cls)}))


MODES = ("weight-only", "dynamic-activation")
ON_COLLAPSE = ("fallback", "warn", "refuse")
DYNAMIC_ROUNDING = ("rtn", "gptq")


@dataclass(frozen=True)
class DynamicConfig:
    """Settings of dynamic post-training quantization."""

    mode: str = "weight-only"
    weight_bits: int = 8
    granularity: str = "auto"  # "channel", "group:N"; auto: channel for int8, group:128 for int4
    embeddings: bool = True  # quantize Gather tables (per row, int8)
    op_types: tuple[str, ...] | None = None  # restrict to these op types (MatMul, Gemm, Conv, ConvTranspose, Gather)
    skip: SkipSpec = field(default_factory=SkipSpec)
    measure_kernels: bool = True  # time each MatMul shape in onnxruntime; keep dynamic only where faster
    min_speedup: float = 1.05
    reduce_range: bool | None = None  # None: 7-bit weights on x86 CPUs without VNNI
    min_cosine: float = 0.99  # worst output cosine vs FP32 below this is a collapse
    on_collapse: str = "fallback"
    check_samples: int = 8
    rank_samples: int = 2  # samples used to rank nodes by damage when falling back
    check_dim: int = 64  # size of dynamic non-batch dims of synthesised check inputs
    external_data: bool | None = None  # None: only for models over 2 GB
    # "gptq": MatMul/Gemm weights rounded by GPTQ on calibration data (slimq.dynamic.gptq; needs calib_data);
    # "rtn": round to nearest, data-free
    weight_rounding: str = "rtn"
    # accuracy control: the per-layer fallback demotes nodes until the model meets this budget (its
    # min_cosine replaces min_cosine); the best model found is written, with a warning, if none does
    budget: Budget | None = None

    def __post_init__(self) -> None:
        require_choice("mode", self.mode, MODES)
        require_choice("weight rounding", self.weight_rounding, DYNAMIC_ROUNDING)
        if isinstance(self.weight_bits, bool) or self.weight_bits not in WEIGHT_BITS:
            raise unknown_choice("weight bits", str(self.weight_bits), [str(b) for b in WEIGHT_BITS])
        require_choice("on_collapse action", self.on_collapse, ON_COLLAPSE)
        require_str("granularity", self.granularity)
        block = self.block_size  # validates the granularity
        if self.mode == "dynamic-activation" and (self.weight_bits != 8 or block):
            raise ConfigError("dynamic-activation needs int8 per-channel weights (MatMulInteger has no int4 or "
                              "block-wise scales); use --mode weight-only for int4 or group-wise weights.")
        require_number("min_cosine", self.min_cosine, 0.0, 1.0, low_open=True)
        require_number("min_speedup", self.min_speedup, 0.0, low_open=True)
        for name in ("check_samples", "check_dim", "rank_samples"):
            require_int(name, getattr(self, name), 1)
        for name in ("embeddings", "measure_kernels"):
            require_bool(name, getattr(self, name))
        for name in ("reduce_range", "external_data"):
            require_optional_bool(name, getattr(self, name))
        _normalize_selection(self)
        _normalize_budget(self)

    @property
    def block_size(self) -> int | None:
        """Block size of group-wise scales, or None for per-channel."""
        g = self.granularity
        if g == "auto":
            return 128 if self.weight_bits == 4 else None
        if g == "channel":
            return None
        m = re.fullmatch(r"group:(\d+)", g)
        if not m:
            raise unknown_choice("granularity", g, ("channel", "group:128", "group:64", "group:32"))
        if int(m.group(1)) < 2:
            raise ConfigError(f"group size must be >= 2, got {g}; the usual value is group:128.")
        return int(m.group(1))

    @property
    def description(self) -> str:
        gran = f"group:{self.block_size}" if self.block_size else "per-channel"
        rounding = ", GPTQ rounding" if self.weight_rounding == "gptq" else ""
        return f"{self.mode}, int{self.weight_bits} {gran} weights{rounding}"


def skip_from_dict(d: Mapping[str, Any]) -> SkipSpec:
    """A SkipSpec from a recipe's `skip` mapping (names / op_types / patterns, each a list of strings)."""
    d = check_keys("skip", d, {f.name for f in fields(SkipSpec)})
    return SkipSpec(**d)


def _normalize_selection(cfg: Any) -> None:
    """Validate and normalise the `op_types` and `skip` fields a config shares (lists become tuples;
    a `skip` mapping from a recipe becomes a SkipSpec)."""
    if cfg.op_types is not None:
        object.__setattr__(cfg, "op_types", require_str_tuple("op_types", cfg.op_types))
    if isinstance(cfg.skip, Mapping):
        object.__setattr__(cfg, "skip", skip_from_dict(cfg.skip))
    elif not isinstance(cfg.skip, SkipSpec):
        raise ConfigError(f"skip must be a mapping with lists of strings (names, op_types, patterns), e.g. "
                          f"skip: {{names: [conv1]}}; got {type(cfg.skip).__name__} {cfg.skip!r:.60}.")


__all__ = ["ALGORITHMS", "DynamicConfig", "MODES", "SkipSpec", "StaticConfig", "TARGETS", "TargetRules", "target_rules"]


def _normalize_budget(config: Any) -> None:
    """A recipe's `budget:` mapping becomes a Budget; anything else but None is refused."""
    if isinstance(config.budget, Mapping):
        object.__setattr__(config, "budget", Budget.from_dict(dict(config.budget)))
    elif config.budget is not None and not isinstance(config.budget, Budget):
        raise ConfigError(f"budget must be a mapping (min_cosine, min_agreement, max_drop, metric, ...), got "
                          f"{type(config.budget).__name__} {config.budget!r:.60}.")
