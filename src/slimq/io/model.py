"""Loading, checking and atomically saving ONNX models."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import onnx.external_data_helper as edh

from slimq.core.errors import ModelLoadError, OutputPathError
from slimq.io.atomic import Stage, deferred_signals

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


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


_PACKED_BITS = {name: bits for bits, names in ((4, ("INT4", "UINT4", "FLOAT4E2M1")), (2, ("INT2", "UINT2")))
                for name in names}  # sub-byte types, packed several per byte


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's data takes by its dims and type (None for types without a fixed size)."""
    count = 1
    for d in tensor.dims:
        count *= d
    try:
        bits = _PACKED_BITS.get(onnx.TensorProto.DataType.Name(tensor.data_type))
        if bits is not None:
            return -(-count * bits // 8)
        if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            return None
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def _int_field(tensor: onnx.TensorProto, info: dict[str, str], key: str) -> int | None:
    if key not in info:
        return None
    try:
        value = int(info[key])
    except ValueError:
        value = -1
    if value < 0:
        raise ModelLoadError(f'Tensor "{tensor.name}" declares external-data {key} "{info[key]}", which is not a '
                             "non-negative integer: the model file is corrupt.")
    return value


def _check_external_tensor(tensor: onnx.TensorProto, base: Path) -> None:
    """Where the data is (inside the model folder, a regular file) and that it holds what the tensor declares."""
    info = _external_info(tensor)
    loc = info.get("location", "")
    target = (base / loc).resolve()
    if not loc or base not in target.parents:
        raise ModelLoadError(
            f'Tensor "{tensor.name}" points to external data "{loc}" outside the model folder {base}. '
            "slimq refuses such paths; move the data file next to the model.")
    if not target.exists():
        raise ModelLoadError(f'External data file "{loc}" of tensor "{tensor.name}" is missing next to the model.')
    if not target.is_file():
        raise ModelLoadError(f'External data "{loc}" of tensor "{tensor.name}" is a directory or special file, '
                             "not a file of weights.")
    size = target.stat().st_size
    offset = _int_field(tensor, info, "offset") or 0
    length = _int_field(tensor, info, "length")
    expected = _expected_bytes(tensor)
    need = length if length is not None else expected
    if offset > size:
        raise ModelLoadError(f'Tensor "{tensor.name}" starts at offset {offset} of external data "{loc}", past the '
                             f"end of that file ({size} bytes): the data file is truncated or not this model's.")
    if need is not None and offset + need > size:
        raise ModelLoadError(f'External data "{loc}" is shorter than tensor "{tensor.name}" declares: it needs '
                             f"bytes {offset}..{offset + need} but the file has {size} bytes. The data file is "
                             "truncated or not this model's; copy it again.")
    if length is not None and expected is not None and length != expected:
        raise ModelLoadError(f'Tensor "{tensor.name}" declares {length} bytes of external data in "{loc}", but its '
                             f"shape {list(tensor.dims)} needs {expected}: the model file is corrupt.")


def _check_external_locations(model: onnx.ModelProto, base: Path) -> None:
    base = base.resolve()
    for tensor in edh._get_all_tensors(model):
        if edh.uses_external_data(tensor):
            try:
                _check_external_tensor(tensor, base)
            except (ValueError, OSError) as e:  # a NUL byte or an over-long name in the location
                raise ModelLoadError(f'Tensor "{tensor.name}" has an unusable external-data location '
                                     f"{_external_info(tensor).get('location', '')!r} ({e}): the model file is "
                                     "corrupt.") from None


def _tensor_texts(t: onnx.TensorProto) -> Iterator[str | bytes]:
    yield t.name
    for e in t.external_data:
        yield e.key
        yield e.value


def _graph_texts(g: onnx.GraphProto) -> Iterator[str | bytes]:
    """Every name/string field of a graph and its subgraphs (protobuf gives bytes where they are not UTF-8)."""
    yield g.name
    for n in g.node:
        yield from (n.name, n.op_type, n.domain, *n.input, *n.output)
        for a in n.attribute:
            yield a.name
            yield from _tensor_texts(a.t) if a.type == onnx.AttributeProto.TENSOR else ()
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _graph_texts(sub)
    for v in (*g.input, *g.output, *g.value_info):
        yield v.name
    for t in g.initializer:
        yield from _tensor_texts(t)


def _check_text(model: onnx.ModelProto, path: Path) -> None:
    for text in (*_graph_texts(model.graph), *(i.domain for i in model.opset_import)):
        if not isinstance(text, str):
            raise ModelLoadError(f"{path} holds a name that is not valid UTF-8 text ({bytes(text)[:40]!r}): the file "
                                 "is corrupt. Re-export the model or check the download.")


def _parse(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf/onnx raise DecodeError, RuntimeWarning, ValueError, ...
        raise ModelLoadError(
            f"{path} is not a valid ONNX model ({type(e).__name__}: {str(e)[:200]}). "
            "The file may be truncated or not ONNX; re-export it or check the download."
        ) from None


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and validate an ONNX model (with external data from the model's own folder)."""
    path = Path(path)
    _check_path(path)
    model = _parse(path)
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path} parsed as an empty graph: it is not an ONNX model (or it is corrupt).")
    _check_text(model, path)
    _check_external_locations(model, path.parent)
    try:
        edh.load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # noqa: BLE001 - onnx raises ValueError/ValidationError/OSError on bad references
        raise ModelLoadError(f"Cannot load the external data of {path}: {str(e).splitlines()[0][:300]}. "
                             "Check the data files next to the model.") from None
    check_opset(model, path)
    return model


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def check_opset(model: onnx.ModelProto, path: Path | str = "model") -> None:
    if not len(model.opset_import):
        raise ModelLoadError(
            f"{path} declares no opset (its opset_import list is missing): every ONNX model has one, so the file "
            "is truncated or corrupt. Re-export the model or check the download.")
    if not any(i.domain in ("", "ai.onnx") for i in model.opset_import):
        raise ModelLoadError(
            f"{path} declares no default-domain opset (opset_import lists only "
            f"{', '.join(sorted(i.domain for i in model.opset_import))}): the file is corrupt or not a standard "
            "ONNX model. Re-export it with an ai.onnx opset of 13 or newer.")
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
            try:
                files.add((base / loc).resolve()) if loc else None
            except (ValueError, OSError, TypeError):  # unusable names are reported by load_model
                continue
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


MODEL_COMPANIONS = (".data", ".report.json", ".report.html")  # files written beside a model (<out> + suffix)
InputPaths = str | os.PathLike | Sequence[str | os.PathLike] | None


def _inputs(input_paths: InputPaths) -> list[Path]:
    if input_paths is None:
        return []
    if isinstance(input_paths, (str, os.PathLike)):
        return [Path(input_paths)]
    return [Path(p) for p in input_paths if p is not None]


def _check_not_input(out: Path, inputs: list[Path], companions: Sequence[str], flag: str, suffix: str | None) -> None:
    models = {p.resolve() for p in inputs if p.is_file()}
    taken = set().union(*(input_files(p) for p in inputs)) if inputs else set()
    for target in (out, *(out.with_name(out.name + c) for c in companions)):
        if target.resolve() in taken or (target.exists() and any(_same(target, f) for f in taken)):
            hit = target.resolve() if target.resolve() in taken else next(f for f in taken if _same(target, f))
            what = "the input model" if hit in models or any(_same(target, m) for m in models) else \
                "an external-data file of the input model"
            raise OutputPathError(f"Writing {flag} {out} would overwrite {target}, {what}; slimq never overwrites "
                                  f"its input. Choose another {flag} path"
                                  f"{', e.g. ' + str(_suggest(inputs[0], suffix)) if suffix and inputs else ''}.")


def check_output_path(input_path: InputPaths, output_path: str | os.PathLike | None,
                      suffix: str | None = ".onnx", *, flag: str = "-o",
                      companions: Sequence[str] = MODEL_COMPANIONS) -> Path:
    """The one check of where slimq will write, run before any work: a non-empty path (ending in `suffix`
    when given), never over an input file (a model or its external data; `input_path` may list several),
    not a directory, in an existing writable folder, and no directory where a companion file goes
    (a model's report and external data)."""
    if output_path is None or not str(output_path).strip():
        example = f"model.int8{suffix}" if suffix else "results"
        raise OutputPathError(f"The output path ({flag}) is empty; give a file name, e.g. {flag} {example}.")
    out = Path(output_path)
    inputs = _inputs(input_path)
    _check_not_input(out, inputs, companions, flag, suffix)
    if out.is_dir():
        example = f", e.g. {out / ('model.int8' + suffix)}" if suffix else ""
        raise OutputPathError(f"Output path {out} ({flag}) is a directory; give a file name inside it{example}.")
    if suffix and out.suffix.lower() != suffix:
        raise OutputPathError(f"Output path {out} ({flag}) should end in {suffix}, e.g. {_with_suffix(out, suffix)}.")
    if not out.parent.exists():
        raise OutputPathError(f"Output folder {out.parent} ({flag}) does not exist; create it first.")
    if not out.parent.is_dir():
        raise OutputPathError(f"Output folder {out.parent} ({flag}) is not a folder (it is a file); choose another "
                              "path.")
    for c in companions:
        if out.with_name(out.name + c).is_dir():
            raise OutputPathError(f"{out.with_name(out.name + c)} (the {'report' if 'report' in c else 'data'} path "
                                  f"of {flag} {out}) is a directory; remove it or choose another path.")
    with deferred_signals():  # a Ctrl-C between the probe's mkdir and its removal would leave the folder behind
        Stage(out).discard()  # writable? (also removes staging folders a killed run left behind)
    return out


def _with_suffix(p: Path, suffix: str) -> Path:
    return p.with_suffix(suffix) if p.name not in ("", ".", "..") else p / ("model" + suffix)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _suggest(src: Path, suffix: str) -> Path:
    return src.with_name(src.stem + ".int8" + suffix)


def _needs_external(model: onnx.ModelProto) -> bool:
    return sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT - 2**26  # room for the graph


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def externalize(model: onnx.ModelProto, folder: Path, data_name: str, threshold: int = 1024) -> tuple[onnx.ModelProto, bool]:
    """A copy of `model` whose initializers of `threshold` bytes or more live in ``folder/data_name`` (written
    now), and whether that file was written. `model` is not modified; paths resolve against `folder` only."""
    model = _copy(model)
    data_path = folder / data_name
    wrote = False
    with open(data_path, "wb") as f:
        for t in edh._get_initializer_tensors(model):
            if not t.HasField("raw_data") or len(t.raw_data) < threshold:
                continue
            raw = t.raw_data
            edh.set_external_data(t, data_name, f.tell(), len(raw))
            f.write(raw)
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            wrote = True
    if not wrote:
        data_path.unlink()
    return model, wrote


def save_with_external_data(model: onnx.ModelProto, path: Path, data_name: str, threshold: int = 1024) -> bool:
    """Write `model` to `path` with every initializer of `threshold` bytes or more in ``path.parent/data_name``;
    returns whether a data file was written. `model` is not modified.

    Paths are resolved against `path` only: onnx's own converter checks the data name against the current
    directory, so re-running a command inside the output folder failed on the previous run's data file."""
    stripped, wrote = externalize(model, path.parent, data_name, threshold)
    path.write_bytes(stripped.SerializeToString())
    return wrote


def is_large(model: onnx.ModelProto) -> bool:
    """True when the model cannot be serialized in one protobuf message (weights must go to external data)."""
    return _needs_external(model)


def stage_model(model: onnx.ModelProto, stage: Stage, external_data: bool | None = None) -> list[str]:
    """Serialize `model` into `stage` (weights in ``<name>.data`` when asked or over 2 GB); the staged names."""
    name = stage.dest.name
    use_external = _needs_external(model) if external_data is None else external_data
    if not use_external:
        onnx.save_model(model, str(stage.path(name)))
        return [name]
    data_name = name + ".data"
    wrote = save_with_external_data(model, stage.path(name), data_name)
    return [data_name, name] if wrote else [name]


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
        save_with_external_data(model, path, "m.onnx.data")
        return model_size_bytes(path)


def model_size_bytes(path: str | os.PathLike) -> int:
    """Size on disk of a model including its external data file, if any."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
