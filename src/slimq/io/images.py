"""Image folders as model input: resize, crop, normalise and lay out like the model expects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from slimq.core.errors import CalibrationDataError, ConfigError
from slimq.io.spec import Feeds, InputSpec


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
        if self.layout not in ("NCHW", "NHWC"):
            raise ConfigError(f'layout must be "NCHW" or "NHWC", got "{self.layout}".')
        if self.color not in ("RGB", "BGR", "GRAY"):
            raise ConfigError(f'color must be "RGB", "BGR" or "GRAY", got "{self.color}".')


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


def load_image(path: Path, spec: PreprocessSpec, channels: int, h: int, w: int) -> np.ndarray:
    """One image as a (1, C, H, W) or (1, H, W, C) float32 array."""
    from PIL import Image, UnidentifiedImageError

    try:
        img: Image.Image = Image.open(path)
        img = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise CalibrationDataError(f"Cannot read image {path}: {e}. Remove it from the folder.") from None
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
