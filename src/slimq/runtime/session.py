"""Deployment: CPU capability report, a Predictor (onnxruntime or OpenVINO), and optimized-graph export."""

from __future__ import annotations

import functools
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from slimq.core.errors import ConfigError
from slimq.core.ops import MacKind, is_dequantize, is_float_mac, op_info
from slimq.runtime.select import RuntimeChoice, choose_runtime
from slimq.runtime.source import ort_model


def resolve_threads(threads: int | str) -> int:
    """'all' or 0 -> every core; above the core count -> warning and clamp."""
    cores = os.cpu_count() or 1
    if threads in ("all", 0, "0"):
        return cores
    try:
        n = int(threads)
    except ValueError:
        raise ConfigError(f'threads must be a number or "all", got "{threads}".') from None
    if n < 1:
        raise ConfigError(f"threads must be >= 1, got {n}.")
    if n > cores:
        warnings.warn(f"{n} threads requested but this machine has {cores} cores; using {cores}.", stacklevel=2)
        return cores
    return n


def dequantize_at_load(model: str | os.PathLike | onnx.ModelProto) -> bool:
    """True for weight-only QDQ models whose convolutions read DequantizeLinear'd weights.

    onnxruntime has no weight-only convolution kernel and would dequantize those weights on every
    run; they are meant to be dequantized once, at load (the size win of dynamic PTQ's weight-only
    mode). MatMul-only models keep onnxruntime's weight-only MatMulNBits kernel instead.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    nodes = [(n, op_info(n.op_type, n.domain)) for n in model.graph.node]
    dq_out = {n.output[0] for n, _ in nodes if is_dequantize(n.op_type, n.domain)}
    if not dq_out or any(info.quantizes_activations for _, info in nodes):
        return False
    convs = [(n, mac) for n, info in nodes if (mac := info.mac) is not None
             and is_float_mac(n.op_type, n.domain) and mac.kind in (MacKind.CONV, MacKind.CONV_T)]
    return any(len(n.input) > mac.weight_input and n.input[mac.weight_input] in dq_out for n, mac in convs)


def session_options(threads: int | str = 1, level: str = "all", optimized_path: str | None = None,
                    fold_weights: bool = False) -> ort.SessionOptions:
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.intra_op_num_threads = resolve_threads(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if fold_weights:  # constant-fold DequantizeLinear of weights at load (no QDQ fusion is wanted)
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return so


class Predictor:
    """A loaded model with explicit threads, run by onnxruntime (default) or another backend.

    backend: "ort", "openvino" (see slimq.runtime.backends; OpenVINO needs ``pip install 'slimq[openvino]'``), or
    "auto": time the model on every installed runtime (on `example`, else synthesised data) and keep the fastest;
    ``choice`` then records the measurement (:class:`slimq.runtime.select.RuntimeChoice`).
    providers and level apply to onnxruntime only. ``session`` is the backend's own session object
    (an onnxruntime InferenceSession, or a slimq.runtime.backends.OpenVINOSession).
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, threads: int | str = 1,
                 providers: list[str] | None = None, level: str = "all", backend: str = "ort",
                 example: dict[str, np.ndarray] | None = None) -> None:
        from slimq.runtime.backends import OpenVINOSession, check_backend

        self.choice: RuntimeChoice | None = None
        if backend == "auto":

            self.choice = choose_runtime(model, _load_run, example, resolve_threads(threads))
            backend = self.choice.backend
        self.backend = check_backend(backend)
        self.session: OpenVINOSession | ort.InferenceSession
        self._run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
        self.input_names: list[str]
        self.output_names: list[str]
        if backend == "openvino":
            ov_session = OpenVINOSession(model, resolve_threads(threads))
            self.session, self._run = ov_session, ov_session.run
            self.input_names, self.output_names = ov_session.input_names, ov_session.output_names
            return
        with ort_model(model) as src:  # over 2 GB: through a temporary external-data file
            ort_session = ort.InferenceSession(src, session_options(threads, level,
                                                                    fold_weights=dequantize_at_load(model)),
                                               providers=providers or ["CPUExecutionProvider"])
        self.session, self._run = ort_session, functools.partial(ort_session.run, None)
        self.input_names = [i.name for i in ort_session.get_inputs()]
        self.output_names = [o.name for o in ort_session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the model's output order."""
        return self._run(feeds)

    __call__ = run


def _load_run(model: str | os.PathLike | onnx.ModelProto, backend: str, threads: int) -> Callable:
    return Predictor(model, threads=threads, backend=backend).run


def optimized_graph(model: str | os.PathLike | onnx.ModelProto, level: str = "extended") -> onnx.ModelProto:
    """The graph onnxruntime actually runs (after its QDQ fusions), as an ONNX model."""
    with tempfile.TemporaryDirectory(prefix="slimq-opt-") as tmp, ort_model(model) as src:
        path = os.path.join(tmp, "optimized.onnx")
        so = session_options(1, level, path, fold_weights=dequantize_at_load(model))
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", str(2**20))
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        return onnx.load(path)


def save_optimized(model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Save onnxruntime's optimized graph (level 'extended': portable across x86 CPUs) for fast loading."""
    from slimq.io.model import save_model

    return save_model(optimized_graph(model, "extended"), out)


def predictor(model: str | os.PathLike | onnx.ModelProto, threads: int | str = "all", level: str = "all") -> Predictor:
    """An onnxruntime Predictor for a path or an in-memory model (over protobuf's 2 GB limit too)."""
    return Predictor(model, threads=threads, level=level)
