"""Fuzzing properties of slimq's three loaders, shared by tests/test_fuzz.py (short, fixed seed, in CI) and
scripts/fuzz.py (long runs).

The one property: a loader given any bytes, arrays or YAML either succeeds or raises a SlimqError subclass
(an error the CLI reports in one line, exit 2) - never another exception, which would be a traceback.

* model: mutated/truncated bytes of valid models (also one with external data, whose data file and
  external-data fields are mutated too) -> `slimq.io.model.load_model`;
* data: mutated .npy/.npz bytes and arrays of random shapes and dtypes -> `slimq.io.samples.load_samples`,
  then every sample and every batch (the validation each sample goes through before onnxruntime);
* recipe: random YAML documents (random text, random structures, and valid keys with random values) ->
  the static recipe loader (`load_static_recipe`, `preprocess_from_dict`) and the QAT recipe loader.
"""

from __future__ import annotations

import atexit
import io
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import yaml
from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import slimq.testing as testing
from slimq.core.config import StaticConfig
from slimq.core.errors import SlimqError
from slimq.io.model import load_model
from slimq.io.recipe import load_static_recipe
from slimq.io.samples import load_samples
from slimq.io.spec import InputSpec, model_inputs


@dataclass
class Tally:
    """What a fuzz run tried and found (failures: exception type and message of unexpected exceptions)."""

    cases: int = 0
    failures: list[str] = field(default_factory=list)


TALLY: dict[str, Tally] = {}
_WORK = Path(tempfile.mkdtemp(prefix="slimq-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)


def expect_slimq_error(target: str, fn: Callable[[], Any]) -> None:
    """Run `fn`; success and SlimqError pass, any other exception is re-raised (the property fails)."""
    TALLY.setdefault(target, Tally()).cases += 1
    try:
        fn()
    except SlimqError:
        pass


# -- byte mutations -----------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with 1-4 mutations: truncation, byte flips, insertions, deletions, or a splice of another seed."""
    b = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "splice", "set"]))
        pos = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "truncate":
            del b[pos:]
        elif op == "flip" and b:
            b[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del b[pos:pos + draw(st.integers(1, 64))]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            b[pos:] = other[draw(st.integers(0, max(0, len(other) - 1))):]
        elif op == "set" and b:
            b[pos] = draw(st.sampled_from([0x00, 0x08, 0x0A, 0x12, 0x1A, 0x7F, 0x80, 0xFF]))
    return bytes(b)


# -- model loader --------------------------------------------------------------------------------------


def _external_model() -> tuple[bytes, bytes]:
    """A small MatMul+Add model with its weights in one external file "w.bin": (model bytes, data bytes)."""
    r = np.random.default_rng(0)
    g = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Add", ["h", "b"], ["y"])], "ext",
                      [oh.make_tensor_value_info("x", 1, ["N", 8])], [oh.make_tensor_value_info("y", 1, ["N", 4])],
                      [nh.from_array(r.standard_normal((8, 4)).astype(np.float32), "w"),
                       nh.from_array(r.standard_normal(4).astype(np.float32), "b")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    blob = io.BytesIO()
    for t in m.graph.initializer:
        raw = nh.to_array(t).tobytes()
        off = blob.tell()
        blob.write(raw)
        t.ClearField("float_data")
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", "w.bin"), ("offset", str(off)), ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
    return m.SerializeToString(), blob.getvalue()


@lru_cache(maxsize=1)
def model_seeds() -> tuple[list[bytes], bytes]:
    ext_model, ext_data = _external_model()
    return [testing.conv_net().SerializeToString(), testing.matmul_net().SerializeToString(), ext_model], ext_data


@st.composite
def model_files(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(model bytes, external data bytes): either may be mutated; external fields may get odd values."""
    seeds, data = model_seeds()
    model = draw(mutated(seeds)) if draw(st.booleans()) else draw(st.sampled_from(seeds))
    if draw(st.booleans()):
        data = draw(mutated([data]))
    if draw(st.integers(0, 3)) == 0:  # rewrite one external-data field of the external model
        m = onnx.ModelProto.FromString(seeds[2])
        t = m.graph.initializer[draw(st.integers(0, len(m.graph.initializer) - 1))]
        key = draw(st.sampled_from(["location", "offset", "length", "checksum", "basepath"]))
        value = draw(st.one_of(st.text(max_size=12), st.integers(-2**63, 2**63).map(str),
                               st.sampled_from(["..", "/etc/passwd", "w.bin\x00x", ".", "", "w.bin/"])))
        for e in t.external_data:
            if e.key == key:
                e.value = value
                break
        else:
            e = t.external_data.add()
            e.key, e.value = key, value
        model = m.SerializeToString()
    return model, data


def check_model(files: tuple[bytes, bytes]) -> None:
    model, data = files
    folder = _WORK / "model"
    folder.mkdir(exist_ok=True)
    (folder / "m.onnx").write_bytes(model)
    (folder / "w.bin").write_bytes(data)
    expect_slimq_error("model", lambda: model_inputs(load_model(folder / "m.onnx")))


# -- calibration-data loader ---------------------------------------------------------------------------

_SPECS: dict[str, list[InputSpec]] = {}


def input_specs() -> dict[str, list[InputSpec]]:
    """The model inputs data is loaded for: an image model, a 2-input model, a token-id model."""
    if not _SPECS:
        emb = oh.make_model(oh.make_graph(
            [oh.make_node("Gather", ["table", "ids"], ["y"])], "emb",
            [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N", 6])],
            [oh.make_tensor_value_info("y", 1, None)], [nh.from_array(np.zeros((50, 4), np.float32), "table")]))
        _SPECS.update({"conv": model_inputs(testing.conv_net()),
                       "two": [InputSpec("x1", (None, 32), np.float32), InputSpec("x2", (None, 32), np.float32)],
                       "ids": model_inputs(emb)})
    return _SPECS


_DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8, np.bool_, np.complex64,
           np.dtype("<U3"), np.dtype("S2"), np.dtype("M8[s]"), np.dtype([("a", "<f4"), ("b", "<i2")])]


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6))
    if draw(st.booleans()) and np.dtype(dtype).kind in "fiub":  # near the spec's shapes, with odd values
        shape = draw(st.sampled_from([(4, 3, 16, 16), (2, 32), (3, 6), (1, 3, 16, 16), (5, 6), (32,)]))
        fill = draw(st.sampled_from([0, 1, -1, 10**6, -10**6, np.nan, np.inf, 0.5]))
        if np.dtype(dtype).kind != "f":
            fill = 0 if fill != fill or abs(fill) == np.inf else int(fill)
        with np.errstate(all="ignore"):  # 10**6 wraps in int8: odd values are the point
            return np.array(np.full(shape, fill)).astype(dtype)
    return draw(hnp.arrays(dtype, shape))


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=a.dtype == object)
    return buf.getvalue()


def _npz_bytes(named: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **named)
    return buf.getvalue()


@lru_cache(maxsize=1)
def data_seeds() -> list[bytes]:
    r = np.random.default_rng(0)
    obj = np.empty(2, dtype=object)
    obj[:] = [np.zeros(3), {"evil": 1}]
    return [_npy_bytes(r.standard_normal((4, 3, 16, 16)).astype(np.float32)),
            _npz_bytes({"x1": np.ones((3, 32), np.float32), "x2": np.ones((3, 32), np.float32)}),
            _npz_bytes({"ids": np.arange(18).reshape(3, 6)}), _npy_bytes(obj)]


@lru_cache(maxsize=1)
def image_seeds() -> dict[str, list[bytes]]:
    from PIL import Image

    r = np.random.default_rng(0)
    img = Image.fromarray(r.integers(0, 256, (12, 10, 3), np.uint8))
    out: dict[str, list[bytes]] = {}
    for suffix, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".bmp", "BMP"), (".webp", "WEBP"), (".tif", "TIFF")):
        buf = io.BytesIO()
        img.convert("L" if suffix == ".bmp" else "RGB").save(buf, fmt)
        out[suffix] = [buf.getvalue()]
    return out


@st.composite
def data_files(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(spec name, file suffix, file bytes); an image suffix means a folder holding that one image."""
    spec = draw(st.sampled_from(sorted(input_specs())))
    kind = draw(st.sampled_from(["mutated", "npy", "npz", "zip", "image"]))
    if kind == "image":
        suffix = draw(st.sampled_from(sorted(image_seeds())))
        return "conv", suffix, draw(mutated(image_seeds()[suffix] + [b""]))
    if kind == "mutated":
        blob = draw(mutated(data_seeds()))
        return spec, draw(st.sampled_from([".npy", ".npz"])), blob
    if kind == "npy":
        return spec, ".npy", _npy_bytes(draw(arrays()))
    if kind == "npz":
        names = st.sampled_from(["input", "x1", "x2", "ids", "labels", "x", ""])
        return spec, ".npz", _npz_bytes(draw(st.dictionaries(names, arrays(), max_size=3)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(draw(st.sampled_from(["input.npy", "x.txt", "../a.npy", "ids"])), draw(st.binary(max_size=200)))
    return spec, ".npz", buf.getvalue()


def _use(samples: Any) -> None:
    for i in range(len(samples)):
        samples.sample(i)
    for _ in samples.batches(range(len(samples)), 3):
        pass


def check_data(case: tuple[str, str, bytes]) -> None:
    spec, suffix, blob = case
    if suffix in (".npy", ".npz"):
        path = _WORK / f"data{suffix}"
    else:  # an image folder
        path = _WORK / "images"
        path.mkdir(exist_ok=True)
        for old in path.iterdir():
            old.unlink()
    (path / f"img{suffix}" if path.is_dir() else path).write_bytes(blob)
    expect_slimq_error("data", lambda: _use(load_samples(path, input_specs()[spec])))


def check_array(case: tuple[str, Any]) -> None:
    spec, data = case
    expect_slimq_error("arrays", lambda: _use(load_samples(data, input_specs()[spec])))


in_memory = st.tuples(st.sampled_from(["conv", "two", "ids"]), st.one_of(
    arrays(), st.dictionaries(st.sampled_from(["input", "x1", "x2", "ids"]), arrays(), max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["input", "x1", "ids"]), arrays(), max_size=2), max_size=3),
    st.integers(), st.none(), st.text(max_size=5).map(lambda s: Path("/nonexistent") / s)))

# -- recipe loaders ------------------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["hist", "x86", "NCHW", "RGB", "conv1", "1e9", ".inf", 10**400, -10**400,
                                                     1e308, 2**31, 2**63]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=12)
_STATIC_KEYS = sorted(f for f in StaticConfig.__dataclass_fields__)
_PRE_KEYS = ["size", "resize_short", "mean", "std", "scale", "layout", "color"]
_QAT_KEYS = ["model", "epochs", "lr", "momentum", "label_smoothing", "batch_size", "variant", "target",
             "freeze_observer_step", "freeze_bn_step", "calib_batches", "train_limit", "seed"]


def _document(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["text", "structure", "keyed", "keyed"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "structure":
        return yaml.safe_dump(draw(_values), allow_unicode=True)
    section = draw(st.sampled_from(["static", "preprocess", "qat"]))
    keys = {"static": _STATIC_KEYS, "preprocess": _PRE_KEYS, "qat": _QAT_KEYS}[section]
    body = draw(st.dictionaries(st.sampled_from(keys), _values, min_size=1, max_size=4))
    doc: Any = body if section == "qat" else {section: body}
    return yaml.safe_dump(doc, allow_unicode=True)


@st.composite
def recipe_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(loader, file bytes): YAML text, sometimes mutated at the byte level (encodings, tags, truncation)."""
    loader = draw(st.sampled_from(["static", "qat"]))
    text = _document(draw).encode("utf-8")
    if draw(st.integers(0, 3)) == 0:
        text = draw(mutated([text, b"static: !!python/object/apply:os.getcwd []\n", b"a: &x [*x]\n"]))
    return loader, text


def _load_static(path: Path) -> None:
    from slimq.io.recipe import preprocess_from_dict

    static, pre = load_static_recipe(path)
    StaticConfig.from_dict(static)
    preprocess_from_dict(pre)


def _load_qat(path: Path) -> None:
    from slimq.qat.config import load_recipe

    load_recipe(path).qat_config()


def check_recipe(case: tuple[str, bytes]) -> None:
    loader, blob = case
    path = _WORK / "recipe.yaml"
    path.write_bytes(blob)
    expect_slimq_error("recipe", lambda: (_load_static if loader == "static" else _load_qat)(path))


# -- the properties, wrapped for hypothesis ---------------------------------------------------------------

PROPERTIES: dict[str, tuple[Any, Callable[[Any], None]]] = {
    "model": (model_files(), check_model),
    "data": (data_files(), check_data),
    "arrays": (in_memory, check_array),
    "recipe": (recipe_files(), check_recipe),
}


def fuzz_test(name: str, max_examples: int, seed: int | None = 0, database: Any = None,
              quiet: bool = False) -> Callable[[], None]:
    """A hypothesis test of one property: `max_examples` cases; seed 0: derandomized (CI), another int: that
    seed, None: random."""
    strategy, body = PROPERTIES[name]
    kw: dict[str, Any] = {"derandomize": True} if seed == 0 else {}
    if quiet:
        kw["verbosity"] = Verbosity.quiet
    test = settings(max_examples=max_examples, deadline=None, database=database, print_blob=False,
                    suppress_health_check=list(HealthCheck), **kw)(given(strategy)(body))
    if seed not in (0, None):
        from hypothesis import seed as with_seed

        test = with_seed(seed)(test)
    return test
