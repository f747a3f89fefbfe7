"""Image folders as model input: resize, crop, normalise and lay out like the model expects."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from slimq.core.errors import CalibrationDataError, ConfigError, did_you_mean
from slimq.core.fields import require_int, require_number, require_number_tuple
from slimq.io.spec import Feeds, InputSpec

MAX_SIDE = 16384  # pixels per side of a preprocessed image (a larger --size would only exhaust memory)


@dataclass(frozen=True)
class PreprocessSpec:
    """How images become input tensors (defaults: ImageNet mean/std, RGB, NCHW, size from the model)."""

    size: tuple[int, int] | None = None  # (H, W); None: from the model's static input shape
    resize_short: int | None = None  # resize the short side first, then center-crop to `size`
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scale: float = 1.0 / 255.0
    layout: str = "NCHW"
    color: str = "RGB"

    def __post_init__(self) -> None:
        for name, valid, text in (("layout", ("NCHW", "NHWC"), '"NCHW" or "NHWC"'),
                                  ("color", ("RGB", "BGR", "GRAY"), '"RGB", "BGR" or "GRAY"')):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in valid:
                hint = did_you_mean(value, valid) if isinstance(value, str) else ""
                raise ConfigError(f"{name} must be {text}, got {value!r}.{hint}")
        if self.size is not None:
            size = self.size
            if isinstance(size, (str, bytes)) or not isinstance(size, (list, tuple)) or len(size) != 2:
                raise ConfigError(f"size must be two positive integers H,W (e.g. --size 224,224), got {size!r}.")
            object.__setattr__(self, "size", tuple(require_int(f"size[{i}]", v, 1, MAX_SIDE) for i, v in enumerate(size)))
        if self.resize_short is not None:
            require_int("resize_short", self.resize_short, 1, MAX_SIDE)
        # one value for every channel, or one per channel (images are decoded as gray or RGB)
        object.__setattr__(self, "mean", require_number_tuple("mean", self.mean, (1, 3)))
        std = require_number_tuple("std", self.std, (1, 3))
        if any(v <= 0 for v in std):
            raise ConfigError(f"std must be > 0 for every channel (the image is divided by it), got {list(std)}.")
        object.__setattr__(self, "std", std)
        require_number("scale", self.scale, 0.0, low_open=True)


def _target_hw(spec: PreprocessSpec, inp: InputSpec) -> tuple[int, int, int]:
    dims = inp.shape[1:]
    c, h, w = (dims[0], dims[1], dims[2]) if spec.layout == "NCHW" else (dims[2], dims[0], dims[1])
    if spec.size is not None:
        h, w = spec.size
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise CalibrationDataError(f'Input "{inp.name}" has dynamic height/width; give the image size '
                                   "(--size H,W or preprocess.size in the recipe).")
    channels = c if isinstance(c, int) and c > 0 else (1 if spec.color == "GRAY" else 3)
    return channels, h, w


def _open_image(path: Path, channels: int):
    """The decoded image (gray or RGB); unreadable files and decompression bombs are data errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(path)
            return img.convert("L" if channels == 1 else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CalibrationDataError(f"Image {path} is too large to decode safely ({e}). It may be a decompression "
                                   "bomb; remove it from the folder or downscale it.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise CalibrationDataError(f"Cannot read image {path}: {e}. Remove it from the folder.") from None


def load_image(path: Path, spec: PreprocessSpec, channels: int, h: int, w: int) -> np.ndarray:
    """One image as a (1, C, H, W) or (1, H, W, C) float32 array."""
    from PIL import Image

    img = _open_image(path, channels)
    if spec.resize_short:
        r = spec.resize_short / min(img.size)
        img = img.resize((max(w, round(img.width * r)), max(h, round(img.height * r))), Image.Resampling.BILINEAR)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    else:
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.float32) * spec.scale
    a = a[..., None] if a.ndim == 2 else (a[..., ::-1] if spec.color == "BGR" else a)
    mean = np.asarray(spec.mean[:channels] if channels > 1 else spec.mean[:1], np.float32)
    std = np.asarray(spec.std[:channels] if channels > 1 else spec.std[:1], np.float32)
    a = (a - mean) / std
    a = a.transpose(2, 0, 1) if spec.layout == "NCHW" else a
    return np.ascontiguousarray(a[None])


def image_loaders(files: Sequence[Path], inputs: Sequence[InputSpec], spec: PreprocessSpec) -> list[Callable[[], Feeds]]:
    if len(inputs) != 1:
        raise CalibrationDataError(f"Image folders feed single-input models; this model has {len(inputs)} inputs. "
                                   "Use .npz files with one key per input.")
    inp = inputs[0]
    c, h, w = _target_hw(spec, inp)
    for name in ("mean", "std"):
        values = getattr(spec, name)
        if len(values) not in (1, c) and not (c == 1 and len(values) >= 1):
            raise ConfigError(f"--{name} has {len(values)} values but the model's input has {c} channels; give one "
                              f"value per channel (or one for all).")
    return [partial(_image_feeds, inp.name, p, spec, c, h, w) for p in files]


def _image_feeds(name: str, path: Path, spec: PreprocessSpec, channels: int, h: int, w: int) -> Feeds:
    return {name: load_image(path, spec, channels, h, w)}
