"""Loading, checking and atomically saving ONNX models."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx.external_data_helper as edh
from google.protobuf.message import DecodeError

from slimq.core.errors import ModelLoadError, OutputPathError

MIN_SUPPORTED_OPSET = 7
QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear need opset 13
PROTOBUF_LIMIT = 2**31 - 1024


def _check_path(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"Model file not found: {path}. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory; pass the .onnx file inside it.")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes). Re-export or re-download the model.")


def _check_external_locations(model: onnx.ModelProto, base: Path) -> None:
    base = base.resolve()
    for tensor in edh._get_all_tensors(model):
        if not edh.uses_external_data(tensor):
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if base not in target.parents:
            raise ModelLoadError(
                f'Tensor "{tensor.name}" points to external data "{loc}" outside the model folder {base}. '
                "slimq refuses such paths; move the data file next to the model."
            )
        if not target.exists():
            raise ModelLoadError(f'External data file "{loc}" of tensor "{tensor.name}" is missing next to the model.')


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and validate an ONNX model (with external data from the model's own folder)."""
    path = Path(path)
    _check_path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as e:
        raise ModelLoadError(
            f"{path} is not a valid ONNX model ({type(e).__name__}: {e}). "
            "The file may be truncated or not ONNX; re-export it or check the download."
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path} parsed as an empty graph: it is not an ONNX model (or it is corrupt).")
    _check_external_locations(model, path.parent)
    edh.load_external_data_for_model(model, str(path.parent))
    check_opset(model, path)
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def check_opset(model: onnx.ModelProto, path: Path | str = "model") -> None:
    v = default_opset(model)
    if v < MIN_SUPPORTED_OPSET:
        raise ModelLoadError(
            f"{path} uses ONNX opset {v}, which is too old to upgrade reliably (slimq needs >= {MIN_SUPPORTED_OPSET}). "
            "Re-export the model from its framework with opset 13 or newer."
        )


def upgrade_opset(model: onnx.ModelProto, target: int = QDQ_OPSET) -> onnx.ModelProto:
    """Convert models below `target` (e.g. PP-OCR's opset 11/12) so per-channel Q/DQ is legal."""
    if default_opset(model) >= target:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises bare RuntimeError/KeyError on unsupported adapters
        raise ModelLoadError(
            f"Could not upgrade the model from opset {default_opset(model)} to {target} ({e}). "
            f"Re-export it with opset >= {target}."
        ) from None


def check_output_path(input_path: str | os.PathLike | None, output_path: str | os.PathLike) -> Path:
    """Refuse to overwrite the input model; make sure the output folder exists."""
    out = Path(output_path)
    if input_path is not None:
        src = Path(input_path)
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
            raise OutputPathError(
                f"Output path {out} is the input model; slimq never overwrites its input. Choose another -o path, "
                f"e.g. {src.with_name(src.stem + '.int8.onnx')}."
            )
    if out.suffix.lower() != ".onnx":
        raise OutputPathError(f"Output path {out} should end in .onnx.")
    if not out.parent.exists():
        raise OutputPathError(f"Output folder {out.parent} does not exist; create it first.")
    return out


def _needs_external(model: onnx.ModelProto) -> bool:
    return sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Write `model` atomically: into a temp folder beside `path`, then rename into place.

    Models over 2 GB (or with external_data=True) store weights in `<name>.data` next to the model.
    A crash leaves no half-written model at `path`.
    """
    path = Path(path)
    use_external = _needs_external(model) if external_data is None else external_data
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp_model = tmpdir / path.name
        if use_external:
            data_name = path.name + ".data"
            model = _copy(model)  # onnx.save_model rewrites tensors to external references in place
            onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            if (tmpdir / data_name).exists():
                os.replace(tmpdir / data_name, path.parent / data_name)
        else:
            onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def model_size_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a model including its external data file, if any."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
