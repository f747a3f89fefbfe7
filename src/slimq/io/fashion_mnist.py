"""Fashion-MNIST loading (gzipped IDX files) and the fixed preprocessing of the demo models.

Files are searched in this order: the ``root`` argument, the ``SLIMQ_FASHION_MNIST``
environment variable, ``/usr/share/datasets/fashion-mnist/`` (Debian package
``dataset-fashion-mnist``), then the user cache ``~/.cache/slimq/fashion-mnist/``,
which is filled from the official mirror when the files are found nowhere else.
"""

from __future__ import annotations

import gzip
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from slimq.core.errors import CalibrationDataError, unknown_choice
from slimq.io.atomic import Stage

FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
ENV_VAR = "SLIMQ_FASHION_MNIST"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions
_LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension


def cache_dir() -> Path:
    """Return the user cache folder used for downloaded files."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slimq" / "fashion-mnist"


def split_files(split: str) -> tuple[str, str]:
    """Return the (images, labels) gz file names of a split ("train" or "test")."""
    if split not in _SPLIT_PREFIX:
        raise unknown_choice("Fashion-MNIST split", split, _SPLIT_PREFIX)
    prefix = _SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _fix_hint(path: Path) -> str:
    return (
        f"Delete {path} and run again to download it afresh, or point {ENV_VAR} "
        f"(or the root argument) at a folder with intact Fashion-MNIST files from {FMNIST_URL}"
    )


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read a gzipped (or plain) IDX file of uint8 data, checking magic number and size."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CalibrationDataError(f"Cannot read IDX file {path}: {exc}. {_fix_hint(path)}.") from exc
    if len(raw) < 8:
        raise CalibrationDataError(f"IDX file {path} is truncated ({len(raw)} bytes). {_fix_hint(path)}.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise CalibrationDataError(
            f"IDX file {path} has magic number {magic:#010x}, expected {expected_magic:#010x} "
            f"(wrong or corrupt file). {_fix_hint(path)}."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise CalibrationDataError(
            f"IDX file {path} has {len(raw)} bytes, expected {expected} for shape {shape} "
            f"(truncated or corrupt). {_fix_hint(path)}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _has_split(folder: Path, split: str) -> bool:
    return all((folder / name).is_file() for name in split_files(split))


def _download(name: str, dest_dir: Path) -> None:
    """Download one file from the official mirror into dest_dir, atomically."""
    url = FMNIST_URL + name
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        with Stage(dest_dir / name) as stage:  # nothing partial is left, whatever stops the download
            with open(stage.path(), "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
            stage.commit()
    except (urllib.error.URLError, OSError) as exc:
        raise CalibrationDataError(
            f"Fashion-MNIST file {name} was not found locally and downloading {url} failed ({exc}). "
            f"Install the Debian package dataset-fashion-mnist, or download the four *-ubyte.gz files "
            f"from {FMNIST_URL} into a folder and set {ENV_VAR} to it."
        ) from exc


def find_split_dir(split: str, root: str | Path | None = None) -> Path:
    """Return the folder holding ``split``'s files, downloading to the cache as a last resort."""
    if root is not None:
        folder = Path(root).expanduser()
        if not _has_split(folder, split):
            raise CalibrationDataError(
                f"Folder {folder} does not contain {' and '.join(split_files(split))}. "
                f"Pass a folder with the Fashion-MNIST gz files, or root=None to search the defaults."
            )
        return folder
    env = os.environ.get(ENV_VAR)
    if env:
        folder = Path(env).expanduser()
        if not _has_split(folder, split):
            raise CalibrationDataError(
                f"{ENV_VAR}={env} does not contain {' and '.join(split_files(split))}. "
                f"Fix the variable or unset it to search the defaults."
            )
        return folder
    for folder in (SYSTEM_DIR, cache_dir()):
        if _has_split(folder, split):
            return folder
    folder = cache_dir()
    for name in split_files(split):
        if not (folder / name).is_file():
            _download(name, folder)
    return folder


def load_fashion_mnist(
    split: str = "test", root: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load a split: uint8 images of shape (N, 28, 28) and int64 labels of shape (N,)."""
    folder = find_split_dir(split, root)
    images_name, labels_name = split_files(split)
    images = read_idx(folder / images_name, _IMAGES_MAGIC)
    labels = read_idx(folder / labels_name, _LABELS_MAGIC).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise CalibrationDataError(
            f"{folder / images_name} has {images.shape[0]} images but {folder / labels_name} has "
            f"{labels.shape[0]} labels. {_fix_hint(folder)}."
        )
    if labels.size and labels.max() > 9:
        raise CalibrationDataError(
            f"{folder / labels_name} has label {labels.max()} outside 0..9. {_fix_hint(folder / labels_name)}."
        )
    return images, labels


def preprocess(images_u8: np.ndarray) -> np.ndarray:
    """Map uint8 images (N, 28, 28) to normalised float32 model input (N, 1, 28, 28)."""
    images = np.asarray(images_u8)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise CalibrationDataError(
            f"Expected Fashion-MNIST images of shape (N, 28, 28), got {images.shape}."
        )
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(FMNIST_MEAN)) / np.float32(FMNIST_STD)
    return x[:, None, :, :]
