"""Running the ONNX exporters on a QAT network, and checking what they wrote against PyTorch.

The default is the torch.export-based ("dynamo") exporter: it sees the same ATen graph QAT's graph
capture works on, keeps the batch dimension symbolic, and its optimizer folds explicit padding into
Conv ``pads``. The TorchScript exporter (``exporter="legacy"``) stays available for module-swap
models; it fixes shapes it traces through (``x.size(0)``), so it is refused for torch.export-captured
models.

Every export is checked before anything is written:

* the FP32 reference export must match the PyTorch network it came from (:func:`check_fp32_export`,
  on a batch one larger than the export example, so a batch size baked into the graph shows);
* the INT8 export is compared with the PyTorch fake-quant model in "output steps"
  (:func:`slimq.qat.verify.check_agreement`); the fraction within one step goes into the report.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from slimq.core.errors import FidelityError
from slimq.qat.qdq_op import dynamo_translation_table
from slimq.qat.verify import ort_session

DYNAMO_OPSET = 18
FP32_RTOL = 1e-3  # of the largest |output|: float summation order differs between exporters' kernels


@functools.lru_cache(maxsize=2)
def _registry(opset: int) -> Any:
    """The exporter's op registry with slimq's Q/DQ ops, built once (building it takes ~2 s)."""
    from torch.onnx._internal.exporter import _registration

    registry = _registration.ONNXRegistry.from_torchlib(opset_version=opset)
    for op, fn in dynamo_translation_table().items():
        registry.register_op(op, fn, is_complex=False)
    return registry


def _dynamo(net: nn.Module, example: tuple[torch.Tensor, ...], dest: Path, opset: int,
            names: tuple[list[str], list[str]]) -> None:
    inputs, outputs = names
    # "torchvision is not installed" warnings are about ops this model does not use.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = tuple(t if t.shape[0] > 1 else torch.cat([t, t]) for t in example)  # batch 1 would specialise
    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} for _ in example)
    try:
        from torch.onnx._internal.exporter import _core
    except ImportError:  # another torch: the public entry point (slower: rebuilds the registry)
        program = torch.onnx.export(net, example, dynamo=True, opset_version=opset, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=shapes, verbose=False,
                                    custom_translation_table=dynamo_translation_table())
    else:
        program = _core.export(net, example, registry=_registry(opset), dynamic_shapes=shapes, input_names=inputs,
                               output_names=outputs, verbose=False, optimize=True, opset_version=opset)
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(dest))


def _legacy(net: nn.Module, example: tuple[torch.Tensor, ...], dest: Path, opset: int,
            names: tuple[list[str], list[str]]) -> None:
    inputs, outputs = names
    axes = {name: {0: "batch"} for name in inputs + outputs}
    torch.onnx.export(net, example, str(dest), dynamo=False, opset_version=opset, input_names=inputs,
                      output_names=outputs, dynamic_axes=axes, do_constant_folding=True)


def torch_export(net: nn.Module, example: tuple[torch.Tensor, ...], dest: Path, exporter: str, opset: int,
                 names: tuple[list[str], list[str]]) -> None:
    """Write ``net`` (eval mode) to ``dest`` with a dynamic batch dimension."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        (_legacy if exporter == "legacy" else _dynamo)(net, example, dest, opset, names)


def check_batch(batch: tuple[torch.Tensor, ...], example: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``batch`` grown by one sample when it has the export example's batch size."""
    if batch[0].shape[0] != max(example[0].shape[0], 2):
        return batch
    return tuple(torch.cat([t, t[:1]]) for t in batch)


def _first(out: Any) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def check_fp32_export(net: nn.Module, model: onnx.ModelProto, batch: tuple[torch.Tensor, ...],
                      exporter: str) -> float:
    """Max |ONNX - PyTorch| of the FP32 reference export (first output); FidelityError when off."""
    with torch.no_grad():
        ref = _first(net(*batch)).detach().float().numpy()
    sess = ort_session(model)
    feed = {i.name: t.detach().numpy() for i, t in zip(sess.get_inputs(), batch)}
    try:
        got = sess.run(None, feed)[0]
    except Exception as exc:
        raise FidelityError(f"The FP32 model written by the {exporter} exporter fails in onnxruntime on a batch of "
                            f"{batch[0].shape[0]}: {str(exc)[:400]}. A shape was probably fixed at export; "
                            f"use exporter=\"dynamo\".") from exc
    if got.shape != ref.shape:
        raise FidelityError(f"The FP32 export ({exporter} exporter) returns shape {got.shape}, PyTorch {ref.shape}; "
                            f"use exporter=\"dynamo\".")
    diff = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    limit = FP32_RTOL * max(float(np.abs(ref).max()), 1e-3)
    if not diff <= limit:
        raise FidelityError(f"The FP32 export ({exporter} exporter) differs from PyTorch by up to {diff:.3g} "
                            f"(allowed {limit:.3g}): the exporter changed the numbers; nothing was written. "
                            f"Try the other exporter, or report the model.")
    return diff


__all__ = ["DYNAMO_OPSET", "check_batch", "check_fp32_export", "torch_export"]
