"""Loading, checking and atomically saving ONNX models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
import onnx.external_data_helper as edh
from google.protobuf.message import DecodeError

from slimq.core.errors import ModelLoadError, OutputPathError
from slimq.io.atomic import Stage

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


def external_data_files(model: onnx.ModelProto, base: Path) -> set[Path]:
    """Resolved paths of the external-data files a model's tensors point to."""
    files = set()
    for tensor in edh._get_all_tensors(model):
        if edh.uses_external_data(tensor):
            loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if loc:
                files.add((base / loc).resolve())
    return files


def input_files(path: str | os.PathLike | None) -> set[Path]:
    """The files a model input consists of: the .onnx file and its external-data files (resolved)."""
    if path is None or not Path(path).is_file():
        return set()
    path = Path(path)
    files = {path.resolve()}
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable inputs are reported by load_model; here only paths matter
        return files
    return files | external_data_files(model, path.parent)


def report_path(path: str | os.PathLike) -> Path:
    """Where the report of a model written to `path` goes: ``<path>.report.json``."""
    path = Path(path)
    return path.with_name(path.name + ".report.json")


def check_output_path(input_path: str | os.PathLike | None, output_path: str | os.PathLike,
                      suffix: str = ".onnx") -> Path:
    """Check where a model will be written, before any work: never over an input file (the model or its
    external data), a writable folder, not a directory, and no directory where the report goes."""
    out = Path(output_path)
    if out.suffix.lower() != suffix:
        raise OutputPathError(f"Output path {out} should end in {suffix}, e.g. {out.with_suffix(suffix)}.")
    if out.is_dir():
        raise OutputPathError(f"Output path {out} is a directory; give a file name inside it, "
                              f"e.g. {out / ('model.int8' + suffix)}.")
    if not out.parent.exists():
        raise OutputPathError(f"Output folder {out.parent} does not exist; create it first.")
    if not out.parent.is_dir():
        raise OutputPathError(f"Output folder {out.parent} is not a folder (it is a file); choose another -o path.")
    taken = input_files(input_path)
    for target in (out, out.with_name(out.name + ".data"), report_path(out)):
        if target.resolve() in taken or (target.exists() and any(_same(target, f) for f in taken)):
            what = "the input model" if input_path and target.resolve() == Path(input_path).resolve() else \
                "an external-data file of the input model"
            raise OutputPathError(f"Writing {out} would overwrite {target}, {what}"
                                  f"; slimq never overwrites its input. Choose another -o path, e.g. "
                                  f"{_suggest(input_path, out, suffix)}.")
    if report_path(out).is_dir():
        raise OutputPathError(f"The report path {report_path(out)} is a directory; remove it or choose "
                              "another -o path.")
    Stage(out).discard()  # writable? (also removes staging folders a killed run left behind)
    return out


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _suggest(input_path: str | os.PathLike | None, out: Path, suffix: str) -> Path:
    src = Path(input_path) if input_path else out
    return src.with_name(src.stem + ".int8" + suffix)


def _needs_external(model: onnx.ModelProto) -> bool:
    return sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def stage_model(model: onnx.ModelProto, stage: Stage, external_data: bool | None = None) -> list[str]:
    """Serialize `model` into `stage` (weights in ``<name>.data`` when asked or over 2 GB); the staged names."""
    name = stage.dest.name
    use_external = _needs_external(model) if external_data is None else external_data
    if not use_external:
        onnx.save_model(model, str(stage.path(name)))
        return [name]
    data_name = name + ".data"
    model = _copy(model)  # onnx.save_model rewrites tensors to external references in place
    onnx.save_model(model, str(stage.path(name)), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return [data_name, name] if stage.path(data_name).exists() else [name]


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None,
               extra_files: dict[str, bytes] | None = None) -> Path:
    """Write `model` (and `extra_files`, e.g. its report, beside it) atomically.

    Models over 2 GB (or with external_data=True) store weights in `<name>.data` next to the model.
    Everything is staged first and renamed into place with signals deferred: the model file appears
    last, so a model on disk always has its data and report.
    """
    path = Path(path)
    with Stage(path) as stage:
        names = stage_model(model, stage, external_data)
        for name, data in (extra_files or {}).items():
            stage.path(name).write_bytes(data)
        stage.commit([n for n in names if n != path.name] + list(extra_files or {}) + [path.name])
    return path


def staged_size(model: onnx.ModelProto, external_data: bool | None = None) -> int:
    """Bytes `model` takes on disk (with its external data), without writing it anywhere permanent."""
    if not (_needs_external(model) if external_data is None else external_data):
        return model.ByteSize()
    with tempfile.TemporaryDirectory(prefix="slimq-size-") as tmp:
        path = Path(tmp) / "m.onnx"
        onnx.save_model(_copy(model), str(path), save_as_external_data=True, location="m.onnx.data",
                        size_threshold=1024)
        return model_size_bytes(path)


def model_size_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a model including its external data file, if any."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
