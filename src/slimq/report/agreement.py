"""FP32-vs-INT8 agreement: streaming per-output statistics (cosine, SQNR, top-1) and per-tensor errors."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from slimq.runtime.exposed import ExposedRunner
from slimq.runtime.session import Predictor


@dataclass
class OutputAgreement:
    """Streaming FP32-vs-INT8 agreement of one model output."""

    name: str
    dot: float = 0.0
    ref_sq: float = 0.0
    test_sq: float = 0.0
    noise_sq: float = 0.0
    argmax_same: int = 0
    argmax_total: int = 0

    def update(self, ref: np.ndarray, test: np.ndarray) -> None:
        r, t = ref.astype(np.float64).ravel(), test.astype(np.float64).ravel()
        self.dot += float(r @ t)
        self.ref_sq += float(r @ r)
        self.test_sq += float(t @ t)
        self.noise_sq += float(((r - t) ** 2).sum())
        if ref.ndim in (2, 3) and ref.shape[-1] > 1:
            self.argmax_same += int((ref.argmax(-1) == test.argmax(-1)).sum())
            self.argmax_total += int(np.prod(ref.shape[:-1]))

    @property
    def cosine(self) -> float:
        if self.ref_sq == 0 and self.test_sq == 0:
            return 1.0
        return self.dot / math.sqrt(self.ref_sq * self.test_sq) if self.ref_sq and self.test_sq else 0.0

    @property
    def sqnr_db(self) -> float:
        return float("inf") if self.noise_sq == 0 else 10 * math.log10(max(self.ref_sq, 1e-30) / self.noise_sq)

    @property
    def top1_agreement(self) -> float | None:
        return self.argmax_same / self.argmax_total if self.argmax_total else None

    def to_dict(self) -> dict:
        return {"output": self.name, "cosine": round(self.cosine, 6), "sqnr_db": round(self.sqnr_db, 2),
                "top1_agreement": None if self.top1_agreement is None else round(self.top1_agreement, 4)}


def measure_agreement(fp32: onnx.ModelProto | str, int8: onnx.ModelProto | str,
                      feeds: Iterable[dict[str, np.ndarray]]) -> list[OutputAgreement]:
    """Run both models on the same feeds; compare every output."""
    ref, test = Predictor(fp32, threads="all"), Predictor(int8, threads="all")
    agree = [OutputAgreement(n) for n in ref.output_names]
    for f in feeds:
        for a, r, t in zip(agree, ref.run(f), test.run(f)):
            a.update(np.asarray(r), np.asarray(t))
    return agree


@dataclass(frozen=True)
class LayerError:
    tensor: str
    producer: str  # op type that produces the tensor in the FP32 graph
    sqnr_db: float
    cosine: float


def _float_tensors(model: onnx.ModelProto) -> dict[str, str]:
    return {o: n.op_type for n in model.graph.node for o in n.output if o}


def layer_errors(fp32: onnx.ModelProto, int8: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                 budget_mb: int = 512) -> list[LayerError]:
    """SQNR/cosine of each shared tensor, in graph order of the FP32 model."""
    producers = _float_tensors(fp32)
    shared = [t for t in producers if t in _float_tensors(int8)]
    acc = {t: np.zeros(4) for t in shared}  # signal, noise, dot, test energy
    ref_run = ExposedRunner(fp32, shared, feeds[0], budget_mb * 2**20)
    test_run = ExposedRunner(int8, shared, feeds[0], budget_mb * 2**20)
    for f in feeds:
        ref = dict(ref_run.run(f))
        for name, t in test_run.run(f):
            r, q = ref[name].astype(np.float64).ravel(), t.astype(np.float64).ravel()
            acc[name] += (r @ r, ((r - q) ** 2).sum(), r @ q, q @ q)
        del ref
    out = []
    for t in shared:
        s, n, d, e = acc[t]
        sq = float("inf") if n == 0 else 10 * np.log10(max(s, 1e-30) / n)
        cos = 1.0 if s == 0 and e == 0 else (d / np.sqrt(s * e) if s and e else 0.0)
        out.append(LayerError(t, producers[t], float(sq), float(cos)))
    return out


def format_errors(errors: list[LayerError], worst: int = 15) -> str:
    lines = ["tensors with the lowest SQNR (FP32 vs INT8), where error enters first:"]
    for e in sorted(errors, key=lambda e: e.sqnr_db)[:worst]:
        lines.append(f"  {e.sqnr_db:7.1f} dB  cos {e.cosine:.4f}  {e.tensor} ({e.producer})")
    return "\n".join(lines)
