"""The one FP32-vs-quantized agreement engine, used by every method, `debug`, `bench` and the benchmarks.

* :class:`Stats`: streaming statistics of one output or tensor (cosine, SQNR, and top-1 agreement
  where the output is class scores), updated batch by batch in O(1) memory.
* :class:`Reference`: the FP32 model's outputs on fixed feeds, computed once; `compare(model)` measures
  any candidate against them (the accuracy searches compare many candidates).
* :func:`tensor_errors`: the same statistics for every tensor both graphs share, to find where error
  enters (``slimq debug``).

Top-1 agreement is measured only for outputs that are class scores (a Softmax/LogSoftmax output, or a
rank-2 Gemm/MatMul/Add output): for a hidden state or a probability map it would mean nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from slimq.core.errors import CalibrationDataError, ConfigError
from slimq.runtime.exposed import ExposedRunner
from slimq.runtime.session import predictor

Feeds = dict[str, np.ndarray]
CLASS_SCORES, TENSOR = "class_scores", "tensor"
_SCORE_PRODUCERS = ("Softmax", "LogSoftmax")
_LOGIT_PRODUCERS = ("Gemm", "MatMul", "Add")
_SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


@dataclass
class Stats:
    """Streaming agreement of one output (or tensor) between a reference and a test model."""

    name: str
    kind: str = TENSOR
    dot: float = 0.0
    ref_sq: float = 0.0
    test_sq: float = 0.0
    noise_sq: float = 0.0
    argmax_same: int = 0
    argmax_total: int = 0

    def update(self, ref: np.ndarray, test: np.ndarray) -> None:
        r, t = np.asarray(ref, np.float64).ravel(), np.asarray(test, np.float64).ravel()
        self.dot += float(r @ t)
        self.ref_sq += float(r @ r)
        self.test_sq += float(t @ t)
        self.noise_sq += float(((r - t) ** 2).sum())
        if self.kind == CLASS_SCORES and ref.ndim >= 2 and ref.shape[-1] > 1:
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

    @property
    def reference_is_zero(self) -> bool:
        return self.ref_sq == 0.0


def worst_cosine(stats: Sequence[Stats]) -> float:
    return min((s.cosine for s in stats), default=1.0)


def output_kinds(model: onnx.ModelProto) -> dict[str, str]:
    """Which graph outputs are class scores (top-1 agreement is meaningful) and which are plain tensors."""
    producers = {o: n for n in model.graph.node for o in n.output}
    kinds = {}
    for out in model.graph.output:
        node = producers.get(out.name)
        while node is not None and node.op_type in _SHAPE_ONLY and node.input:
            node = producers.get(node.input[0])  # e.g. Softmax-11 upgraded to 13: Reshape(Softmax(Flatten))
        op = node.op_type if node is not None else ""
        rank = len(out.type.tensor_type.shape.dim) if out.type.tensor_type.HasField("shape") else 0
        scores = op in _SCORE_PRODUCERS or (rank == 2 and op in _LOGIT_PRODUCERS)
        kinds[out.name] = CLASS_SCORES if scores else TENSOR
    return kinds


class Reference:
    """FP32 outputs on fixed feeds, computed once; compares any candidate model against them."""

    def __init__(self, fp32: onnx.ModelProto, feeds: Sequence[Feeds]) -> None:
        if not feeds:
            raise CalibrationDataError("The fidelity check needs at least one input sample.")
        self.feeds = list(feeds)
        self.kinds = output_kinds(fp32)
        try:
            ref = predictor(fp32)
            self.names = ref.output_names
            self.outputs = [ref.run(f) for f in self.feeds]
        except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument types
            raise CalibrationDataError(
                f"The FP32 model does not run on the check inputs ({str(e).splitlines()[0][:300]}). "
                "Check that the data matches the model's inputs (names, shapes, value ranges).") from None
        self.runs = 0

    def subset(self, n: int) -> Reference:
        """A reference over the first `n` feeds, sharing this one's outputs and run counter."""
        sub = Reference.__new__(Reference)
        sub.feeds, sub.outputs, sub.names, sub.kinds = self.feeds[:n], self.outputs[:n], self.names, self.kinds
        sub.runs = 0
        sub._parent = self  # type: ignore[attr-defined]
        return sub

    def compare(self, model: onnx.ModelProto | str) -> list[Stats]:
        """Agreement of every output of `model` with the FP32 reference."""
        self._count()
        test = predictor(model)
        stats = [Stats(n, self.kinds.get(n, TENSOR)) for n in self.names]
        for f, ref in zip(self.feeds, self.outputs):
            for s, r, t in zip(stats, ref, test.run(f)):
                s.update(np.asarray(r), np.asarray(t))
        return stats

    __call__ = compare

    def _count(self) -> None:
        self.runs += 1
        parent = getattr(self, "_parent", None)
        if parent is not None:
            parent.runs += 1


def measure_agreement(fp32: onnx.ModelProto, test: onnx.ModelProto | str, feeds: Iterable[Feeds]) -> list[Stats]:
    """Run both models on the same feeds and compare every output."""
    return Reference(fp32, list(feeds)).compare(test)


@dataclass(frozen=True)
class TensorError:
    """Agreement of one intermediate tensor present in both graphs."""

    tensor: str
    producer: str  # op type that produces the tensor in the FP32 graph
    sqnr_db: float
    cosine: float


def _producers(model: onnx.ModelProto) -> dict[str, str]:
    return {o: n.op_type for n in model.graph.node for o in n.output if o}


def tensor_errors(fp32: onnx.ModelProto, test: onnx.ModelProto, feeds: Sequence[Feeds],
                  budget_mb: int = 512) -> list[TensorError]:
    """SQNR/cosine of every float tensor both graphs share, in the FP32 graph's order.

    In a QDQ model the original tensor names still carry the float values computed from dequantized
    inputs, so the SQNR drop from one tensor to the next shows where quantization error enters.
    """
    if not feeds:
        raise CalibrationDataError("Per-tensor errors need at least one input sample.")
    producers = _producers(fp32)
    test_tensors = _producers(test)
    shared = [t for t in producers if t in test_tensors]
    if not shared:
        raise ConfigError("The two models have no shared tensor names, so they cannot be compared tensor by tensor: "
                          "the second model is not a quantized version of the first (unrelated models?). Pass the "
                          "FP32 model and the INT8 model slimq made from it.")
    stats = {t: Stats(t) for t in shared}
    ref_run = ExposedRunner(fp32, shared, feeds[0], budget_mb * 2**20)
    test_run = ExposedRunner(test, shared, feeds[0], budget_mb * 2**20)
    for f in feeds:
        ref = dict(ref_run.run(f))
        for name, t in test_run.run(f):
            stats[name].update(ref[name], t)
        del ref
    return [TensorError(t, producers[t], stats[t].sqnr_db, stats[t].cosine) for t in shared]


def format_errors(errors: Sequence[TensorError], worst: int = 15) -> str:
    lines = ["tensors with the lowest SQNR (FP32 vs INT8), where error enters first:"]
    for e in sorted(errors, key=lambda e: e.sqnr_db)[:worst]:
        lines.append(f"  {e.sqnr_db:7.1f} dB  cos {e.cosine:.4f}  {e.tensor} ({e.producer})")
    return "\n".join(lines)
