"""PyTorch in: an ``nn.Module`` (with example inputs), a ``torch.export.ExportedProgram``, or a ``.pt2`` file.

The model is exported with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), and the FP32
ONNX is run side by side with PyTorch on the user's samples before anything is quantized: an export that
changes the numbers (as the legacy exporter was seen doing on a BERT model) is refused with the worst
output difference. Input names are the program's own (the forward's parameter names); outputs take the
keys of a dict the model returns. torch is imported only here, and only when a PyTorch model is given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from slimq.core.errors import ConfigError, ModelLoadError
from slimq.io.convert import Conversion, compare_outputs, onnx_runner, rename_outputs
from slimq.io.spec import Feeds

TORCH_INSTALL = "pip install 'slimq[qat]'"
PT2_SUFFIX = ".pt2"
MAX_BATCH = 4096


def torch_module() -> Any:
    """The torch package, or a ConfigError that says how to install it."""
    try:
        import torch
    except ModuleNotFoundError as e:
        raise ConfigError(f"PyTorch models need PyTorch ({e.name} is missing): {TORCH_INSTALL}.") from None
    return torch


def is_torch_model(obj: object) -> bool:
    """An ``nn.Module`` or ``ExportedProgram`` (without importing torch: no torch loaded, no torch object)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram))


def load_pt2(path: str | os.PathLike) -> Any:
    """An ExportedProgram saved with ``torch.export.save``."""
    torch = torch_module()
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"PyTorch program not found: {path}. Save one with torch.export.save(program, path).")
    try:
        return torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a foreign or truncated archive
        raise ModelLoadError(f"{path} is not a program saved by torch.export.save ({type(e).__name__}: "
                             f"{str(e)[:200]}). Export with torch.export.export(model, args) and save it with "
                             "torch.export.save.") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress prints, warnings and 'torchvision is not installed' notes, silenced."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _to_torch(x: Any) -> Any:
    torch = torch_module()
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def _as_args(example: Any) -> tuple[tuple, dict]:
    """Example inputs as (args, kwargs): a tensor/array, a tuple/list of them, or a dict of keyword inputs."""
    if isinstance(example, Mapping):
        return (), {k: _to_torch(v) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return tuple(_to_torch(v) for v in example), {}
    return (_to_torch(example),), {}


def _doubled(x: Any) -> Any:
    """A batch of 1 repeated to 2 (torch.export specializes size-1 dims, so a dynamic batch needs 2)."""
    torch = torch_module()
    return torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == 1 else x


def export_module(module: Any, example: Any) -> tuple[Any, list[str]]:
    """torch.export a module with a dynamic batch dim where it allows one (else the example's shapes)."""
    torch = torch_module()
    module = module.eval()
    args, kwargs = _as_args(example)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    leaves = torch.utils._pytree.tree_map(_doubled, (args, kwargs))
    dyn = torch.utils._pytree.tree_map(
        lambda x: {0: batch} if isinstance(x, torch.Tensor) and x.ndim else None, leaves)
    notes: list[str] = []
    with _quiet():
        try:
            return torch.export.export(module, leaves[0], leaves[1], dynamic_shapes=dyn[0] or dyn[1]), notes
        except Exception as e:  # a model that fixes its batch size: export it as given
            notes.append(f"exported with the example's fixed shapes (a dynamic batch was refused: "
                         f"{str(e).splitlines()[0][:160]})")
        try:
            return torch.export.export(module, args, kwargs), notes
        except Exception as e:
            raise ModelLoadError(f"torch.export could not trace {type(module).__name__} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300]}). Make the forward traceable "
                                 "(https://pytorch.org/docs/stable/export.html) or export it to ONNX yourself."
                                 ) from None


def output_names(program: Any) -> list[str] | None:
    """The keys of a dict the program returns (its only user-given output names), else None."""
    spec = program.call_spec.out_spec
    if spec is not None and spec.type is dict and all(isinstance(k, str) for k in spec.context):
        return list(spec.context)
    return None


def program_to_onnx(program: Any) -> onnx.ModelProto:
    """The FP32 ONNX of an ExportedProgram (dynamo exporter, optimized), with dict keys as output names."""
    torch = torch_module()
    with _quiet():
        try:
            onnx_program = torch.onnx.export(program, dynamo=True, optimize=True, verbose=False)
        except Exception as e:
            raise ModelLoadError(f"torch.onnx.export (dynamo) failed on this program ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300]}).") from None
    proto = onnx_program.model_proto
    names = output_names(program)
    if names and len(names) == len(proto.graph.output):
        rename_outputs(proto, names)
    return proto


def _flat_outputs(out: Any) -> list[np.ndarray]:
    torch = torch_module()
    leaves = torch.utils._pytree.tree_leaves(out)
    return [t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy()
            for t in leaves if isinstance(t, torch.Tensor)]


def torch_runner(reference: Any, program: Any, input_names: Sequence[str]) -> Any:
    """feeds -> flat outputs of the PyTorch reference, called with the program's argument structure."""
    torch = torch_module()
    spec = program.call_spec.in_spec

    def run(feeds: Feeds) -> list[np.ndarray]:
        flat = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names]
        args, kwargs = torch.utils._pytree.tree_unflatten(flat, spec) if spec is not None else (tuple(flat), {})
        with torch.no_grad():
            return _flat_outputs(reference(*args, **kwargs))
    return run


def example_feeds(program: Any, input_names: Sequence[str]) -> list[Feeds]:
    """The program's stored example inputs as one feed (none stored: no feed)."""
    torch = torch_module()
    example = getattr(program, "example_inputs", None)
    if example is None:
        return []
    flat = [t for t in torch.utils._pytree.tree_leaves(example) if isinstance(t, torch.Tensor)]
    if len(flat) != len(input_names):
        return []
    return [{n: t.detach().numpy() for n, t in zip(input_names, flat)}]


def _unpack(model: Any) -> tuple[Any, Any]:
    """(model, example inputs) from a model or a (model, example_inputs) pair."""
    if isinstance(model, tuple) and len(model) == 2 and is_torch_model(model[0]):
        return model
    return model, None


def import_torch(model: Any, data: Any = None, preprocess: Any = None, *, example_inputs: Any = None,
                 check_samples: int = 16) -> tuple[onnx.ModelProto, Conversion]:
    """Export a PyTorch model to FP32 ONNX and check it against PyTorch on the samples (or the example).

    model: an nn.Module (example inputs from `example_inputs`, the pair ``(module, example_inputs)``, or the
    first sample of `data` when it is an array / dict of arrays), an ExportedProgram, or a ``.pt2`` path.
    """
    torch = torch_module()
    start = time.perf_counter()
    model, pair_example = _unpack(model)
    source = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    notes: list[str] = []
    program = load_pt2(model) if isinstance(model, (str, os.PathLike)) else model
    reference = None
    if isinstance(program, torch.nn.Module):
        reference = program
        example = example_inputs if example_inputs is not None else pair_example
        program, notes = export_module(program, example if example is not None else _first_sample(data, program))
    proto = program_to_onnx(program)
    names = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    reference = reference if reference is not None else program.module()
    feeds = _check_feeds(proto, data, preprocess, check_samples) or example_feeds(program, names)
    worst = compare_outputs(onnx_runner(proto), torch_runner(reference, program, names), feeds,
                            "PyTorch", [o.name for o in proto.graph.output])
    exporter = f"torch.onnx.export(dynamo=True), torch {torch.__version__.split('+')[0]}"
    return proto, Conversion("PyTorch", source, exporter, len(feeds), worst, time.perf_counter() - start,
                             tuple(notes))


def _first_sample(data: Any, module: Any) -> Any:
    """Example inputs for a module without any: the first row of an array or of a dict of arrays."""
    if isinstance(data, np.ndarray):
        return (data[:1],)
    if isinstance(data, Mapping) and all(isinstance(v, np.ndarray) for v in data.values()):
        return {k: v[:1] for k, v in data.items()}
    raise ConfigError(f"A PyTorch {type(module).__name__} needs example inputs to be exported: pass "
                      "(module, example_inputs) as the model, a torch.export.ExportedProgram, or the "
                      "calibration data as an array (one input) or a dict of arrays named after forward's "
                      "parameters.")


def _check_feeds(proto: onnx.ModelProto, data: Any, preprocess: Any, n: int) -> list[Feeds]:
    if data is None:
        return []
    from slimq.io.samples import load_samples
    from slimq.io.spec import model_inputs

    samples = load_samples(data, model_inputs(proto), preprocess)
    return [samples.sample(i) for i in range(min(n, len(samples)))]
