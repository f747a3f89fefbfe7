"""Fashion-MNIST loader, preprocessing, and the shipped demo models."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from slimq.core.errors import CalibrationDataError, ConfigError
from slimq.io import fashion_mnist as fm
from slimq.io.fashion_mnist import (
    FMNIST_MEAN,
    FMNIST_STD,
    load_fashion_mnist,
    preprocess,
)
from slimq.zoo import ZOO_MODELS, asset_path


def _write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_split(folder: Path, split: str, n: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    images_name, labels_name = fm.split_files(split)
    _write_idx(folder / images_name, images)
    _write_idx(folder / labels_name, labels)
    return images, labels


def _real_data_available() -> bool:
    """True when the real test split is on disk (never downloads)."""
    env = os.environ.get(fm.ENV_VAR)
    folders = [Path(env)] if env else [fm.SYSTEM_DIR, fm.cache_dir()]
    return any(fm._has_split(folder, "test") for folder in folders)


needs_data = pytest.mark.skipif(not _real_data_available(), reason="Fashion-MNIST not installed")


def test_synthetic_idx_roundtrip(tmp_path: Path) -> None:
    images, labels = _write_split(tmp_path, "test")
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28)
    assert y.dtype == np.int64 and y.shape == (3,)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_env_var_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = _write_split(tmp_path / "env", "train", n=2, seed=1)
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "env"))
    x, _ = load_fashion_mnist("train")
    np.testing.assert_array_equal(x, images)
    with pytest.raises(CalibrationDataError, match=fm.ENV_VAR):
        load_fashion_mnist("test")


def test_wrong_magic_names_file_and_fix(tmp_path: Path) -> None:
    _write_split(tmp_path, "test")
    labels_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    _write_idx(labels_path, np.zeros(3, np.uint8), magic=2051)
    with pytest.raises(CalibrationDataError, match="t10k-labels-idx1-ubyte.gz.*magic") as err:
        load_fashion_mnist("test", root=tmp_path)
    assert "Delete" in str(err.value)


def test_truncated_and_non_gzip_files(tmp_path: Path) -> None:
    _write_split(tmp_path, "test")
    images_path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(images_path.read_bytes())
    images_path.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(CalibrationDataError, match="truncated or corrupt"):
        load_fashion_mnist("test", root=tmp_path)
    images_path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(CalibrationDataError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist("test", root=tmp_path)


def test_count_mismatch_and_missing_root(tmp_path: Path) -> None:
    _write_split(tmp_path, "test", n=3)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(CalibrationDataError, match="3 images but .* 4 labels"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(CalibrationDataError, match="does not contain"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ConfigError, match='Did you mean "test"'):
        load_fashion_mnist("tset", root=tmp_path)


def test_download_fallback_fills_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = _write_split(tmp_path / "mirror", "test")
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "absent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "FMNIST_URL", (tmp_path / "mirror").as_uri() + "/")
    x, _ = load_fashion_mnist("test")
    np.testing.assert_array_equal(x, images)
    cached = sorted(p.name for p in (tmp_path / "cache" / "slimq" / "fashion-mnist").iterdir())
    assert cached == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(CalibrationDataError, match="downloading .* failed"):
        load_fashion_mnist("train")
    leftovers = [p.name for p in (tmp_path / "cache" / "slimq" / "fashion-mnist").iterdir()]
    assert sorted(leftovers) == cached


def test_preprocess_constants_and_shape() -> None:
    images = np.zeros((2, 28, 28), np.uint8)
    images[1] = 255
    x = preprocess(images)
    assert x.dtype == np.float32 and x.shape == (2, 1, 28, 28)
    np.testing.assert_allclose(x[0], -FMNIST_MEAN / FMNIST_STD, rtol=1e-6)
    np.testing.assert_allclose(x[1], (1 - FMNIST_MEAN) / FMNIST_STD, rtol=1e-6)
    with pytest.raises(CalibrationDataError, match=r"\(N, 28, 28\)"):
        preprocess(np.zeros((2, 32, 32), np.uint8))


@needs_data
def test_real_test_split() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 1000))
    assert abs(x.mean() / 255 - FMNIST_MEAN) < 0.01


def test_asset_path_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match='Did you mean "fmnist_resnet"'):
        asset_path("fmnist_resnt")
    with pytest.raises(ConfigError, match="suffix"):
        asset_path("fmnist_resnet", ".onnnx")


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_shipped_onnx_graph(name: str) -> None:
    path = asset_path(name)
    assert path.stat().st_size < 2 * 1024 * 1024
    model = onnx.load(path)
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "Add", "GlobalAveragePool", "Flatten", "Gemm"} <= ops
    assert ops <= {"Conv", "Relu", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@needs_data
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_shipped_onnx_accuracy(name: str) -> None:
    x, y = load_fashion_mnist("test")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(asset_path(name)), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": preprocess(x[:2000])})[0]
    assert logits.shape == (2000, 10)
    assert (logits.argmax(1) == y[:2000]).mean() >= 0.90


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_shipped_state_dict_matches_onnx(name: str) -> None:
    torch = pytest.importorskip("torch")
    from slimq.zoo.fmnist import build_model

    model = build_model(name)
    model.load_state_dict(torch.load(asset_path(name, ".pt"), weights_only=True))
    model.eval()
    x = np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(asset_path(name)), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], expected, atol=1e-4, rtol=1e-4)


def test_export_onnx_matches_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from slimq.zoo.fmnist import build_model, export_onnx

    torch.manual_seed(0)
    model = build_model("fmnist_mobilenet")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    model.train()
    path = export_onnx(model, tmp_path / "m.onnx")
    assert model.training, "export must restore the training flag"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    graph = onnx.load(path).graph
    assert not {"Constant", "Identity", "BatchNormalization"} & {n.op_type for n in graph.node}
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_build_model_rejects_unknown_name() -> None:
    pytest.importorskip("torch")
    from slimq.zoo.fmnist import build_model

    with pytest.raises(ConfigError, match='Did you mean "fmnist_mobilenet"'):
        build_model("fmnist_mobilnet")
