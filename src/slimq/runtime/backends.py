"""Inference backends for deploying and benchmarking QDQ ONNX models on the CPU.

* ``"ort"``: onnxruntime (the default; always installed).
* ``"openvino"``: OpenVINO's CPU plugin (``pip install 'slimq[openvino]'``). It reads the
  QDQ ONNX file directly and runs Q/DQ-wrapped convolutions and matmuls as int8 kernels.
  FP32 models are compiled with ``INFERENCE_PRECISION_HINT=f32``, so they are not silently
  run in bf16/fp16 on CPUs that offer them, which keeps FP32 baselines comparable.

A session of either backend has ``input_names``, ``output_names`` and
``run(feeds) -> list[np.ndarray]`` (outputs in the model's output order, owned by the caller).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx

from slimq.core.errors import ConfigError, ModelLoadError, unknown_choice
from slimq.runtime.macs import MacCount

BACKENDS = ("ort", "openvino")
OPENVINO_INSTALL = "pip install 'slimq[openvino]'"
# Execution-graph layer types whose MACs count towards the int8 share (OpenVINO CPU plugin names).
OV_MAC_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution")
INT8_PRECISIONS = ("u8", "i8")

ModelLike = str | os.PathLike | onnx.ModelProto
Feeds = Mapping[str, np.ndarray]


@runtime_checkable
class Session(Protocol):
    """What slimq needs from a loaded model, whatever runs it."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        """Outputs in the model's output order."""
        ...


class BackendError(ModelLoadError):
    """A backend cannot load or compile a model that onnxruntime may still run."""


def _ov_message(e: BaseException, limit: int = 400) -> str:
    """OpenVINO's nested 'Exception from <file>:<line>:' lines dropped; the rest on one line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from ")]
    text = " ".join(lines) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


@dataclass(frozen=True)
class OpenVINOConfig:
    """CPU plugin settings: f32 precision for float ops, latency hint (one stream), no core pinning.

    Pinning is off by default, like onnxruntime's threads, so a busy core does not stall a run.
    """

    precision: str = "f32"
    hint: str = "LATENCY"
    pinning: bool = False

    def properties(self, threads: int) -> dict[str, Any]:
        return {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": self.hint,
                "INFERENCE_PRECISION_HINT": self.precision, "ENABLE_CPU_PINNING": self.pinning}


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def check_backend(name: str) -> str:
    """Return `name` if it is a known and installed backend; else a ConfigError that says how to fix it."""
    if name not in BACKENDS:
        raise unknown_choice("backend", name, BACKENDS)
    if name == "openvino" and not openvino_available():
        raise ConfigError(f'Backend "openvino" needs the OpenVINO runtime: {OPENVINO_INSTALL} '
                          "(or pip install openvino).")
    return name


def parse_backends(value: str | Sequence[str]) -> tuple[str, ...]:
    """"ort,openvino" or a sequence of names -> checked, de-duplicated names in order."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"Give at least one backend ({', '.join(BACKENDS)}).")
    return tuple(dict.fromkeys(check_backend(n) for n in names))


def backend_version(name: str) -> str:
    """The installed version of a backend's runtime."""
    if check_backend(name) == "ort":
        import onnxruntime

        return onnxruntime.__version__
    import openvino

    return openvino.__version__.split("-")[0]


@functools.lru_cache(maxsize=1)
def _ov_core():
    import openvino as ov

    return ov.Core()


def _read_ov_model(model: ModelLike):
    core = _ov_core()
    if isinstance(model, onnx.ModelProto):
        return core.read_model(model.SerializeToString())
    return core.read_model(str(model))


class OpenVINOSession:
    """An OpenVINO CPU compiled model with one infer request, used like an onnxruntime session.

    shapes: optional {input name: static shape}; OpenVINO then compiles for that shape only
    (faster for models with dynamic dimensions; other shapes are refused by OpenVINO).
    """

    def __init__(self, model: ModelLike, threads: int = 1, config: OpenVINOConfig = OpenVINOConfig(),
                 shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        check_backend("openvino")
        try:
            ov_model = _read_ov_model(model)
            if shapes:
                ov_model.reshape({k: list(v) for k, v in shapes.items()})
            self.compiled = _ov_core().compile_model(ov_model, "CPU", config.properties(threads))
        except RuntimeError as e:
            where = "the model" if isinstance(model, onnx.ModelProto) else os.path.basename(model)
            raise BackendError(f"OpenVINO cannot compile {where}: {_ov_message(e)}") from None
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def run(self, feeds: Feeds) -> list[np.ndarray]:
        result = self.request.infer(dict(feeds), share_inputs=True, share_outputs=False)
        return [np.asarray(result[o]) for o in self.compiled.outputs]

    __call__ = run


@dataclass(frozen=True)
class ExecLayer:
    """One layer of OpenVINO's execution graph: what it fused and the precision it ran in."""

    name: str
    layer_type: str
    precision: str  # runtimePrecision, e.g. "u8", "i8", "f32"
    primitive: str  # kernel, e.g. "brgconv_avx512_1x1_I8"
    macs: int
    original: tuple[str, ...]  # ONNX node names fused into it


def _rt(info, key: str) -> str:
    return info[key].astype(str) if key in info else ""


def _layer_macs(op, layer_type: str) -> int:
    """Output elements x weight elements per output channel (exact for conv, grouped conv and FC)."""
    if layer_type not in OV_MAC_LAYERS or op.get_input_size() < 2:
        return 0
    out, w = op.get_output_partial_shape(0), op.input_value(1).get_partial_shape()
    if out.is_dynamic or w.is_dynamic or len(out) < 2:
        return 0
    out_dims, w_dims = [d.get_length() for d in out], [d.get_length() for d in w]
    if layer_type in ("FullyConnected", "MatMul"):  # weights [.., K, N] or [N, K]: K per output element
        per_output = int(np.prod(w_dims[-2:], dtype=np.int64)) // max(out_dims[-1], 1)
    else:  # (grouped) convolution: weight elements per output channel
        per_output = int(np.prod(w_dims, dtype=np.int64)) // max(out_dims[1], 1)
    return int(np.prod(out_dims, dtype=np.int64)) * per_output


def exec_layers(session: OpenVINOSession) -> list[ExecLayer]:
    """The layers OpenVINO runs for `session`, in execution order (MACs need static shapes)."""
    layers = []
    for op in session.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = _rt(info, "layerType")
        original = tuple(n for n in _rt(info, "originalLayersNames").split(",") if n)
        layers.append(ExecLayer(op.get_friendly_name(), kind, _rt(info, "runtimePrecision"),
                                _rt(info, "primitiveType"), _layer_macs(op, kind), original))
    return layers


def openvino_mac_count(model: ModelLike, feeds: Feeds) -> MacCount:
    """MACs of OpenVINO's conv/matmul layers for the shapes of `feeds`, split by int8 vs float kernels."""
    session = OpenVINOSession(model, 1, shapes={k: v.shape for k, v in feeds.items()})
    count = MacCount()
    for layer in exec_layers(session):
        if layer.layer_type not in OV_MAC_LAYERS:
            continue
        if layer.precision in INT8_PRECISIONS:
            count.int8_macs += layer.macs
            count.int8_ops[layer.layer_type] += 1
        else:
            count.float_macs += layer.macs
            count.float_ops[layer.layer_type] += 1
            count.float_nodes.append(f"{layer.name} ({layer.layer_type} {layer.precision}, {layer.macs} MACs)")
    return count
