"""The fidelity report written next to every quantized model.

It says how much of the compute really runs in int8 in onnxruntime's optimized
graph, which ops stayed float and why, and how closely the INT8 model agrees
with FP32 on samples held back from calibration. Collapsed agreement is
flagged loudly: a quantizer that silently breaks a model is the worst outcome.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from slimq.report.agreement import OutputAgreement
from slimq.runtime.macs import count_macs
from slimq.runtime.session import optimized_graph

log = logging.getLogger("slimq")


@dataclass
class Report:
    method: str
    target: str
    int8_mac_share: float
    macs: dict
    quantized_ops: dict[str, int]
    float_ops: list[dict]
    agreement: list[dict]
    agreement_samples: int
    agreement_in_sample: bool
    size_bytes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    mac_runtime: str = "onnxruntime"  # whose optimized graph the int8 MAC share was measured in

    @property
    def ok(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=2, default=str)
        os.replace(tmp, path)
        return path

    def format(self) -> str:
        lines = [f"slimq {self.method} report ({self.target})",
                 f"  int8 share of MACs in {self.mac_runtime}'s optimized graph: {self.int8_mac_share * 100:.1f} %"]
        if self.size_bytes:
            lines.append("  size: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in self.size_bytes.items()))
        where = "samples also used to build the model (none held back)" if self.agreement_in_sample else "held-back samples"
        lines.append(f"  FP32 vs INT8 on {self.agreement_samples} {where}:")
        for a in self.agreement:
            top1 = "" if a["top1_agreement"] is None else f", top-1 agreement {a['top1_agreement'] * 100:.1f} %"
            lines.append(f"    {a['output']}: cosine {a['cosine']:.4f}, SQNR {a['sqnr_db']:.1f} dB{top1}")
        by_reason = Counter((f["op_type"], f["reason"]) for f in self.float_ops)
        if by_reason:
            lines.append("  ops left in float:")
            lines += [f"    {n} x {op}: {reason}" for (op, reason), n in sorted(by_reason.items())]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


STATIC_ADVICE = ("Try another --algo (hist, KL, mse), more calibration data, or leave the guilty layers "
                 "in float with --skip.")


def fidelity_warnings(agreement: list[OutputAgreement], min_cosine: float,
                      advice: str = STATIC_ADVICE) -> list[str]:
    """Warnings for outputs whose INT8 cosine or top-1 agreement with FP32 is too low;
    `advice` ends the cosine warning (what to try; the default is static PTQ's)."""
    out = []
    for a in agreement:
        if a.cosine < min_cosine:
            out.append(f'output "{a.name}": cosine {a.cosine:.4f} < {min_cosine} — INT8 disagrees with FP32. '
                       + advice)
        top1 = a.top1_agreement
        if top1 is not None and top1 < 0.9:
            out.append(f'output "{a.name}": only {top1 * 100:.1f} % top-1 agreement with FP32.')
    return out


def mac_summary(int8_model: onnx.ModelProto, feeds: dict[str, np.ndarray], target: str = "x86"):
    """MAC count of the graph the target's runtime builds from the QDQ model (OpenVINO for the
    openvino target when it is installed, else onnxruntime)."""
    if target == "openvino":
        from slimq.runtime.backends import BackendError, openvino_mac_count

        try:
            return openvino_mac_count(int8_model, feeds)
        except BackendError as e:
            log.warning("slimq: int8 MAC share measured in onnxruntime, not OpenVINO: %s", e)
    return count_macs(optimized_graph(int8_model, "extended"), feeds)
