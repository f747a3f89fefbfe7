"""The one report every method writes beside its model (``<output>.report.json``), as typed sections.

Static PTQ, dynamic PTQ and QAT all produce a :class:`Report` with the same schema: how much of the
compute really runs in int8 and where that was measured (:class:`MacShare`), what stayed float and why
(:class:`FloatOp`), how closely the quantized model agrees with FP32 (:class:`AgreementRow`), the sizes
(:class:`Sizes`), warnings, human-readable notes, and method-specific machine-readable ``details``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

SCHEMA = "slimq-report/1"


@dataclass(frozen=True)
class Sizes:
    """Serialized sizes in bytes (on disk, external data included, once written)."""

    fp32_bytes: int | None = None
    quantized_bytes: int | None = None

    @property
    def ratio(self) -> float | None:
        if not self.fp32_bytes or self.quantized_bytes is None:
            return None
        return self.quantized_bytes / self.fp32_bytes


@dataclass(frozen=True)
class FloatOp:
    """A node on the data path left in float, and why."""

    node: str
    op_type: str
    reason: str
    module: str | None = None  # QAT: the PyTorch module it came from


@dataclass(frozen=True)
class AgreementRow:
    """FP32-vs-quantized agreement of one model output."""

    output: str
    kind: str  # "class_scores" (top-1 agreement measured) or "tensor"
    cosine: float
    sqnr_db: float
    top1_agreement: float | None = None
    reference_is_zero: bool = False  # FP32 output was all zero: cosine/SQNR are meaningless


@dataclass(frozen=True)
class MacShare:
    """Multiply-accumulates of conv/matmul kernels, int8 vs float, and where that was measured."""

    runtime: str  # "onnxruntime", "OpenVINO", or "Q/DQ placement (static check)"
    int8_macs: int = 0
    float_macs: int = 0
    int8_ops: Mapping[str, int] = field(default_factory=dict)
    float_mac_ops: Mapping[str, int] = field(default_factory=dict)
    float_mac_nodes: tuple[str, ...] = ()
    note: str = ""

    @property
    def int8_share(self) -> float:
        total = self.int8_macs + self.float_macs
        return self.int8_macs / total if total else 0.0

    @property
    def measured(self) -> bool:
        return self.int8_macs + self.float_macs > 0


@dataclass(frozen=True)
class Report:
    """What a quantized model is: int8 share, float ops with reasons, agreement with FP32, sizes."""

    method: str  # "static", "dynamic", "qat"
    target: str  # the target's description, e.g. "x86: uint8 asymmetric activations x int8 ..."
    macs: MacShare
    quantized_ops: Mapping[str, int]
    float_ops: tuple[FloatOp, ...]
    agreement: tuple[AgreementRow, ...]
    agreement_samples: int
    agreement_inputs: str  # "held-back samples", "samples also used for calibration", "synthesised inputs", ...
    agreement_in_sample: bool = False
    sizes: Sizes = Sizes()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def ok(self) -> bool:
        return not self.warnings

    @property
    def int8_mac_share(self) -> float:
        return self.macs.int8_share

    @property
    def worst_cosine(self) -> float:
        return min((a.cosine for a in self.agreement), default=1.0)

    def with_sizes(self, sizes: Sizes) -> Report:
        return replace(self, sizes=sizes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macs"]["int8_share"] = round(self.macs.int8_share, 6)
        d["sizes"]["ratio"] = None if self.sizes.ratio is None else round(self.sizes.ratio, 6)
        return _finite(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Report:
        """Read back a report written by :meth:`to_json` (the same schema for every method)."""
        macs = {k: v for k, v in d["macs"].items() if k != "int8_share"}
        macs["float_mac_nodes"] = tuple(macs.get("float_mac_nodes", ()))
        sizes = {k: v for k, v in d["sizes"].items() if k != "ratio"}
        rows = [AgreementRow(**{**a, "sqnr_db": _num(a["sqnr_db"])}) for a in d["agreement"]]
        return cls(d["method"], d["target"], MacShare(**macs), dict(d["quantized_ops"]),
                   tuple(FloatOp(**f) for f in d["float_ops"]), tuple(rows), d["agreement_samples"],
                   d["agreement_inputs"], d["agreement_in_sample"], Sizes(**sizes), tuple(d["warnings"]),
                   tuple(d["notes"]), dict(d["details"]), d.get("schema", SCHEMA))

    def format(self) -> str:
        return "\n".join(_format_lines(self))


def _finite(x: Any) -> Any:
    """JSON has no inf/nan: SQNR of identical outputs is written as the string "inf"."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _num(x: Any) -> float:
    return float(x)


def _format_lines(r: Report) -> list[str]:
    lines = [f"slimq {r.method} report ({r.target})"]
    if r.macs.measured:
        lines.append(f"  int8 share of MACs ({r.macs.runtime}): {r.macs.int8_share * 100:.1f} %")
    else:
        lines.append(f"  int8 share of MACs ({r.macs.runtime}): no conv/matmul MACs found")
    if r.macs.note:
        lines.append(f"    {r.macs.note}")
    s = r.sizes
    if s.fp32_bytes and s.quantized_bytes:
        lines.append(f"  size: FP32 {s.fp32_bytes / 1e6:.2f} MB -> {s.quantized_bytes / 1e6:.2f} MB "
                     f"({s.ratio:.3f}x)")
    elif s.quantized_bytes:
        lines.append(f"  size: {s.quantized_bytes / 1e6:.2f} MB")
    lines.append(f"  FP32 vs INT8 on {r.agreement_samples} {r.agreement_inputs}:")
    for a in r.agreement:
        top1 = "" if a.top1_agreement is None else f", top-1 agreement {a.top1_agreement * 100:.1f} %"
        lines.append(f"    {a.output}: cosine {a.cosine:.4f}, SQNR {a.sqnr_db:.1f} dB{top1}")
    by_reason = Counter((f.op_type, f.reason) for f in r.float_ops)
    if by_reason:
        lines.append("  ops left in float:")
        lines += [f"    {n} x {op}: {reason}" for (op, reason), n in sorted(by_reason.items())]
    lines += [f"  {n}" for n in r.notes]
    lines += [f"  WARNING: {w}" for w in r.warnings]
    return lines

