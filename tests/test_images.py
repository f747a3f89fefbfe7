"""Image-folder calibration: real PNG/JPEG files -> the tensors slimq feeds, against a numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper as nh
import pytest
from PIL import Image

from slimq.cli.main import main
from slimq.core.errors import CalibrationDataError, ConfigError
from slimq.io.images import PreprocessSpec, image_loaders, load_image
from slimq.io.samples import load_samples
from slimq.io.spec import InputSpec

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def pixels(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(a: np.ndarray, path: Path) -> Path:
    Image.fromarray(a).save(path)
    return path


def decoded(path: Path) -> np.ndarray:
    """The file's pixels as PIL decodes them (JPEG is lossy: the reference starts from the decoded file)."""
    return np.asarray(Image.open(path).convert("RGB"))


def reference(rgb: np.ndarray, mean=MEAN, std=STD, layout: str = "NCHW", color: str = "RGB") -> np.ndarray:
    """Scale to [0, 1], reorder channels, normalise per channel, lay out, add the batch axis."""
    a = rgb.astype(np.float32) * np.float32(1 / 255)
    a = a[..., ::-1] if color == "BGR" else a
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return (a.transpose(2, 0, 1) if layout == "NCHW" else a)[None]


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma with PIL's integer rounding: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).astype(np.uint8)


NCHW_8x10 = InputSpec("input", (None, 3, 8, 10), np.float32)
NHWC_8x10 = InputSpec("input", (None, 8, 10, 3), np.float32)


@pytest.mark.parametrize("layout,color", [("NCHW", "RGB"), ("NCHW", "BGR"), ("NHWC", "RGB"), ("NHWC", "BGR")])
def test_exact_size_png_is_scaled_normalised_and_laid_out(tmp_path, layout, color):
    rgb = pixels(8, 10, seed=0)
    path = save(rgb, tmp_path / "a.png")
    spec = PreprocessSpec(mean=MEAN, std=STD, layout=layout, color=color)
    inp = NCHW_8x10 if layout == "NCHW" else NHWC_8x10
    (loader,) = image_loaders([path], [inp], spec)
    got = loader()["input"]
    want = reference(rgb, layout=layout, color=color)
    assert got.dtype == np.float32 and got.shape == want.shape == ((1, 3, 8, 10) if layout == "NCHW" else (1, 8, 10, 3))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_resize_short_without_scaling_is_a_center_crop(tmp_path):
    # short side already 8 = resize_short: no resampling, only the centered 8x10 window of a 8x14 image
    rgb = pixels(8, 14, seed=1)
    path = save(rgb, tmp_path / "wide.png")
    got = load_image(path, PreprocessSpec(resize_short=8, mean=MEAN, std=STD), 3, 8, 10)
    np.testing.assert_allclose(got, reference(rgb[:, 2:12]), rtol=1e-6, atol=1e-6)
    tall = save(pixels(16, 8, seed=2), tmp_path / "tall.png")  # 16 rows, short side = width 8 -> crop rows 4..11
    got = load_image(tall, PreprocessSpec(resize_short=8, mean=MEAN, std=STD), 3, 8, 8)
    np.testing.assert_allclose(got, reference(pixels(16, 8, seed=2)[4:12]), rtol=1e-6, atol=1e-6)


def test_resize_short_scales_the_short_side_then_crops_the_center(tmp_path):
    # 12x24 image, short side 12 -> 8: bilinear resize to 8x16, then columns 3..12 (16 - 10 = 6, halved)
    rgb = pixels(12, 24, seed=3)
    path = save(rgb, tmp_path / "big.png")
    got = load_image(path, PreprocessSpec(resize_short=8, mean=MEAN, std=STD), 3, 8, 10)
    resized = np.asarray(Image.fromarray(rgb).resize((16, 8), Image.BILINEAR))
    np.testing.assert_allclose(got, reference(resized[:, 3:13]), rtol=1e-6, atol=1e-6)
    # without resize_short the image is squeezed to the target size (aspect ratio not kept)
    squeezed = np.asarray(Image.fromarray(rgb).resize((10, 8), Image.BILINEAR))
    np.testing.assert_allclose(load_image(path, PreprocessSpec(mean=MEAN, std=STD), 3, 8, 10), reference(squeezed),
                               rtol=1e-6, atol=1e-6)


def test_gray_model_gets_luma_and_the_first_mean_std(tmp_path):
    rgb = pixels(8, 10, seed=4)
    path = save(rgb, tmp_path / "c.png")
    inp = InputSpec("input", (None, 1, 8, 10), np.float32)
    (loader,) = image_loaders([path], [inp], PreprocessSpec(mean=(0.3,), std=(0.5,), color="GRAY"))
    want = ((luma(rgb).astype(np.float32) * np.float32(1 / 255) - np.float32(0.3)) / np.float32(0.5))[None, None]
    np.testing.assert_allclose(loader()["input"], want, rtol=1e-6, atol=1e-6)


def test_image_folder_becomes_validated_batches_in_file_order(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    files = [save(pixels(8, 10, seed=10 + i), folder / f"img{i}.{ext}") for i, ext in enumerate(["png", "jpg", "JPEG"])]
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    spec = PreprocessSpec(mean=MEAN, std=STD, layout="NHWC", color="BGR")
    samples = load_samples(folder, [NHWC_8x10], spec)
    assert len(samples) == 3
    (batch,) = list(samples.batches(range(3), batch_size=8))
    want = np.concatenate([reference(decoded(p), layout="NHWC", color="BGR") for p in files])
    assert batch["input"].shape == (3, 8, 10, 3)
    np.testing.assert_allclose(batch["input"], want, rtol=1e-6, atol=1e-6)
    # a PNG that is not one: the error names the file
    (folder / "img9.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CalibrationDataError, match="Cannot read image .*img9.png"):
        load_samples(folder, [NHWC_8x10], spec).sample(3)


def test_dynamic_height_width_need_a_size(tmp_path):
    save(pixels(12, 12, seed=5), tmp_path / "a.png")
    dyn = InputSpec("input", (None, 3, "h", "w"), np.float32)
    with pytest.raises(CalibrationDataError, match="--size H,W"):
        load_samples(tmp_path, [dyn], PreprocessSpec())
    samples = load_samples(tmp_path, [dyn], PreprocessSpec(size=(6, 4)))
    assert samples.sample(0)["input"].shape == (1, 3, 6, 4)


def test_bad_spec_values_are_config_errors():
    with pytest.raises(ConfigError, match='"NCHW" or "NHWC"'):
        PreprocessSpec(layout="CHW")
    with pytest.raises(ConfigError, match='"RGB", "BGR" or "GRAY"'):
        PreprocessSpec(color="YUV")


def test_mean_with_wrong_channel_count_is_a_clear_error(tmp_path, conv_model):
    # two mean values for a 3-channel model: exit 2 with a message, not a numpy broadcast traceback
    model, folder = tmp_path / "m.onnx", tmp_path / "imgs"
    folder.mkdir()
    onnx.save(conv_model, model)
    for i in range(3):
        save(pixels(16, 16, seed=i), folder / f"{i}.png")
    args = ["quantize", "static", str(model), "--calib", str(folder), "-o", str(tmp_path / "q.onnx"),
            "--mean", "0.5,0.5"]
    assert main(args) == 2
    assert not (tmp_path / "q.onnx").exists()


def _nhwc_model() -> onnx.ModelProto:
    """NHWC float[N, H, W, 3] input (dynamic H, W) -> Transpose -> Conv 3x3 -> Relu -> Conv 1x1: 4-D output."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, H, W, 3] image) => (float[N, 4, H, W] y) {
        x = Transpose <perm = [0, 3, 1, 2]> (image)
        c = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w1, b1)
        r = Relu (c)
        y = Conv <kernel_shape = [1, 1]> (r, w2, b2)
    }"""
    m = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.normal(0, 0.3, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4),
              "w2": rng.normal(0, 0.3, (4, 4, 1, 1)), "b2": rng.normal(0, 0.1, 4)}
    m.graph.initializer.extend(nh.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items())
    onnx.checker.check_model(m)
    return m


def test_cli_quantizes_from_an_image_folder_with_every_preprocessing_flag(tmp_path):
    """The README's headline path. min_max calibration makes the input's quantization scale
    (max - min) / 255 over exactly the preprocessed calibration tensors, so any flag that is
    ignored or misapplied shows up in that number."""
    model, folder, out = tmp_path / "m.onnx", tmp_path / "imgs", tmp_path / "m.int8.onnx"
    folder.mkdir()
    onnx.save(_nhwc_model(), model)
    files = [save(pixels(12, 20, seed=20 + i), folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}") for i in range(10)]
    code = main(["quantize", "static", str(model), "--calib", str(folder), "-o", str(out), "--algo", "min_max",
                 "--size", "12,16", "--resize-short", "12", "--mean", ",".join(map(str, MEAN)),
                 "--std", ",".join(map(str, STD)), "--layout", "NHWC", "--color", "BGR"])
    assert code == 0 and out.is_file()
    # 10 images: the last 2 are held back (n // 5); the first 8 calibrate. Short side 12 = resize_short:
    # no resampling, the centered 16 columns (2..17) of each 20-column image.
    calib = np.concatenate([reference(decoded(p)[:, 2:18], layout="NHWC", color="BGR") for p in files[:8]])
    lo, hi = min(float(calib.min()), 0.0), max(float(calib.max()), 0.0)
    q = onnx.load(str(out))
    inits = {i.name: nh.to_array(i) for i in q.graph.initializer}
    (q_in,) = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in ("image", "x")]
    scale, zp = float(inits[q_in.input[1]]), int(inits[q_in.input[2]])
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert zp == round(-lo / ((hi - lo) / 255))
