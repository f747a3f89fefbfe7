"""Paddle in: a Paddle inference model (``.pdmodel`` or ``.json`` + ``.pdiparams``) converted with paddle2onnx.

The conversion and the reference run happen in child processes (:mod:`slimq.io.paddle_worker`): a failed
``paddle2onnx.export`` ends its whole process, and Paddle may live in its own virtual environment. The
interpreter is, in order: the ``paddle_python`` option, ``$SLIMQ_PADDLE_PYTHON``, or this one when it has
``paddlepaddle`` and ``paddle2onnx`` (``pip install 'slimq[paddle]'``: paddlepaddle 2.6.2 + paddle2onnx
1.3.1 install beside slimq's own pins; paddle2onnx 2.x pins onnx 1.17, so use a separate venv for it).

Two repairs every paddle2onnx version tried needs are applied to the ONNX: weights emitted as Constant
nodes become initializers, and an axis-0 Concat of 0-D shape pieces (which onnxruntime refuses) gets its
inputs reshaped to 1-D. The FP32 ONNX is then run beside ``paddle.inference`` on the samples.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from slimq.core.errors import ConfigError, ConversionError, ModelLoadError
from slimq.io.convert import Conversion, compare_outputs, onnx_runner
from slimq.io.spec import Feeds, model_inputs

PADDLE_ENV = "SLIMQ_PADDLE_PYTHON"
PADDLE_INSTALL = ("pip install 'slimq[paddle]' (paddlepaddle 2.6.2 + paddle2onnx 1.3.1), or install them in their "
                  f"own venv and point {PADDLE_ENV} at its python")
PROGRAM_SUFFIXES = (".pdmodel", ".json")
PARAMS_SUFFIX = ".pdiparams"
WORKER = Path(__file__).with_name("paddle_worker.py")
OPSET = 13
TIMEOUT_S = 900
SYNTH_DIM = 64  # dynamic non-batch dims of synthesised check inputs (a multiple of 32, for detection nets)


def _program_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in PROGRAM_SUFFIXES and p.with_suffix(PARAMS_SUFFIX).is_file())


def is_paddle_model(path: str | os.PathLike) -> bool:
    """A Paddle inference model: a folder holding ``X.pdmodel``/``X.json`` + ``X.pdiparams``, or such a file."""
    p = Path(path)
    if p.is_dir():
        return bool(_program_files(p))
    return p.suffix == ".pdmodel" or (p.suffix in PROGRAM_SUFFIXES and p.with_suffix(PARAMS_SUFFIX).is_file())


def paddle_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(program file, parameters file) of a Paddle inference model folder or program file."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"Paddle model not found: {p}. Pass the inference model folder (with "
                             "inference.pdmodel + inference.pdiparams) saved by paddle.jit.save / paddle.static.")
    programs = _program_files(p) if p.is_dir() else [p]
    if len(programs) != 1:
        found = ", ".join(x.name for x in programs) or "none"
        raise ModelLoadError(f"{p} should hold exactly one Paddle program with its .pdiparams (found: {found}); "
                             "pass the program file itself.")
    program = programs[0]
    params = program.with_suffix(PARAMS_SUFFIX)
    if not params.is_file():
        raise ModelLoadError(f"{program} has no parameters file {params.name} beside it.")
    return program, params


def find_paddle_python(explicit: str | os.PathLike | None = None) -> str:
    """The interpreter that runs paddle2onnx and paddle.inference (see the module docstring)."""
    chosen = explicit or os.environ.get(PADDLE_ENV)
    if chosen:
        if not Path(chosen).is_file():
            raise ConfigError(f"Paddle interpreter {chosen} (from {'paddle_python' if explicit else PADDLE_ENV}) "
                              "does not exist.")
        return str(chosen)
    if all(importlib.util.find_spec(m) is not None for m in ("paddle", "paddle2onnx")):
        return sys.executable
    raise ConfigError(f"Paddle models need paddlepaddle and paddle2onnx: {PADDLE_INSTALL}.")


def paddle_available() -> bool:
    """True when a Paddle interpreter is configured or this one has paddle and paddle2onnx."""
    try:
        find_paddle_python()
    except ConfigError:
        return False
    return True


def run_worker(python: str, *args: str, what: str) -> str:
    """Run the worker; its stdout, or ConversionError with the lines that say why it failed."""
    try:
        r = subprocess.run([python, str(WORKER), *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                           env={**os.environ, "GLOG_minloglevel": "2", "FLAGS_call_stack_level": "0"})
    except subprocess.TimeoutExpired:
        raise ConversionError(f"{what} did not finish within {TIMEOUT_S} s.") from None
    if r.returncode != 0:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        why = [ln for ln in lines if "ERROR" in ln or "Error" in ln or "Hint" in ln] or lines[-6:]
        raise ConversionError(f"{what} failed (exit code {r.returncode}): {' | '.join(why)[-800:]}")
    return r.stdout


def flatten_shape_concats(model: onnx.ModelProto) -> int:
    """Reshape to 1-D every input of an axis-0 Concat that builds a Reshape's shape (0-D pieces are
    refused by onnxruntime); a no-op for 1-D inputs. Returns the number of Concats fixed."""
    g = model.graph
    shapes = {n.input[1] for n in g.node if n.op_type == "Reshape" and len(n.input) > 1}
    minus1, fixed, nodes = "slimq_p2o_minus1", 0, []
    for n in g.node:
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        if n.op_type == "Concat" and axis == 0 and n.output[0] in shapes:
            for k, name in enumerate(list(n.input)):
                flat = f"{name}_slimq_1d_{fixed}_{k}"
                nodes.append(oh.make_node("Reshape", [name, minus1], [flat], name=f"{n.name or 'concat'}_1d_{k}"))
                n.input[k] = flat
            fixed += 1
        nodes.append(n)
    if fixed:
        g.initializer.append(nh.from_array(np.array([-1], np.int64), minus1))
        del g.node[:]
        g.node.extend(nodes)
    return fixed


def repair(model: onnx.ModelProto) -> onnx.ModelProto:
    """The two paddle2onnx repairs: 1-D shape Concats, weights as initializers."""
    flatten_shape_concats(model)
    irm = ir.from_proto(model)
    LiftConstantsToInitializersPass(size_limit=0)(irm)
    return ir.to_proto(irm)


def synthesized_feeds(model: onnx.ModelProto, seed: int = 0) -> list[Feeds]:
    """One standard-normal sample (batch 1, other dynamic dims 64) for a model given without data."""
    rng, feed = np.random.default_rng(seed), Feeds()
    for s in model_inputs(model):
        shape = tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else SYNTH_DIM) for i, d in enumerate(s.shape))
        floating = np.issubdtype(s.dtype, np.floating)
        feed[s.name] = rng.standard_normal(shape).astype(s.dtype) if floating else np.zeros(shape, s.dtype)
    return [feed]


def paddle_runner(python: str, program: Path, params: Path, feeds: list[Feeds],
                  tmp: Path) -> tuple[list[list[np.ndarray]], str]:
    """paddle.inference outputs of every feed (one child process for all of them), and the versions used."""
    arrays = {f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()}
    np.savez(tmp / "feeds.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub reserves allow_pickle
    versions = run_worker(python, "infer", str(program), str(params), str(tmp / "feeds.npz"), str(tmp / "out.npz"),
                          what="paddle.inference").strip().splitlines()
    with np.load(tmp / "out.npz", allow_pickle=False) as z:
        outs: dict[int, list[tuple[str, np.ndarray]]] = {}
        for key in z.files:
            i, k = key.split("/")
            outs.setdefault(int(i), []).append((k, z[key]))
    return [[a for _, a in sorted(outs[i])] for i in range(len(feeds))], (versions or ["paddle ?"])[-1]


def convert_paddle(path: str | os.PathLike, python: str | None = None, tmp: Path | None = None) -> onnx.ModelProto:
    """paddle2onnx in a child process, then the repairs; no check (see :func:`import_paddle`)."""
    program, params = paddle_files(path)
    python = find_paddle_python(python)
    with tempfile.TemporaryDirectory(prefix="slimq-paddle-") as scratch:
        out = Path(tmp or scratch) / "model.onnx"
        run_worker(python, "convert", str(program), str(params), str(out), str(OPSET), what="paddle2onnx")
        if not out.is_file():
            raise ConversionError(f"paddle2onnx wrote no model for {program} (it printed no error).")
        return repair(onnx.load(str(out)))


def import_paddle(model: str | os.PathLike, data: Any = None, preprocess: Any = None, *,
                  check_samples: int = 16, paddle_python: str | None = None) -> tuple[onnx.ModelProto, Conversion]:
    """Convert a Paddle inference model and check the FP32 ONNX against paddle.inference on `data`."""
    start = time.perf_counter()
    program, params = paddle_files(model)
    python = find_paddle_python(paddle_python)
    with tempfile.TemporaryDirectory(prefix="slimq-paddle-") as tmp:
        proto = convert_paddle(model, python, Path(tmp))
        feeds = _check_feeds(proto, data, preprocess, check_samples)
        reference, version = paddle_runner(python, program, params, feeds, Path(tmp))
    by_feed = {id(f): out for f, out in zip(feeds, reference)}
    worst = compare_outputs(onnx_runner(proto), lambda f: by_feed[id(f)], feeds, "paddle.inference",
                            [o.name for o in proto.graph.output])
    notes = () if data is not None else ("checked on a synthesised input (no data given)",)
    return proto, Conversion("Paddle", str(model), f"paddle2onnx ({version})", len(feeds), worst,
                             time.perf_counter() - start, notes)



def _check_feeds(proto: onnx.ModelProto, data: Any, preprocess: Any, n: int) -> list[Feeds]:
    if data is None:
        return synthesized_feeds(proto)
    from slimq.io.samples import load_samples

    samples = load_samples(data, model_inputs(proto), preprocess)
    return [samples.sample(i) for i in range(min(n, len(samples)))]
