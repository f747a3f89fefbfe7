"""Calibration and check data: arrays, .npy/.npz files or folders, image folders with a preprocessing spec.

Everything is validated against the model's inputs (names, rank, static
dims, dtype, NaN/Inf) before it reaches onnxruntime, so bad data gets an
error that names the problem instead of an ORT stack trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from slimq.core.errors import CalibrationDataError, ConfigError, did_you_mean
from slimq.io.spec import Feeds, InputSpec, static_batch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def validate_feeds(feeds: Mapping[str, np.ndarray], inputs: Sequence[InputSpec], where: str = "") -> Feeds:
    """Check names, rank, static dims, dtype and finiteness; cast compatible dtypes."""
    where = f" ({where})" if where else ""
    expected = {s.name: s for s in inputs}
    for name in feeds:
        if name not in expected:
            raise CalibrationDataError(
                f'Data{where} has input "{name}" but the model has no such input.{did_you_mean(name, expected)} '
                f"Model inputs: {', '.join(expected)}.")
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise CalibrationDataError(f"Data{where} lacks model input(s) {', '.join(missing)}; "
                                   f"provide one array per input (an .npz with keys {', '.join(expected)}).")
    return {name: _check_array(np.asarray(feeds[name]), expected[name], where) for name in expected}


def _check_array(a: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    want = f"shape {tuple(d if isinstance(d, int) else '?' for d in spec.shape)}"
    if a.ndim != len(spec.shape):
        raise CalibrationDataError(f'Input "{spec.name}"{where} has shape {a.shape} but the model expects {want} '
                                   f"(rank {len(spec.shape)}). Check the layout and the batch dimension.")
    for i, (got, exp) in enumerate(zip(a.shape, spec.shape)):
        if isinstance(exp, int) and exp > 0 and got != exp and not (i == 0 and exp == 1):
            raise CalibrationDataError(f'Input "{spec.name}"{where} has shape {a.shape} but the model expects {want}: '
                                       f"dimension {i} is {got}, expected {exp}. Resize or re-layout the data.")
    if a.dtype.kind not in "biuf":
        raise CalibrationDataError(f'Input "{spec.name}"{where} has dtype {a.dtype}, which is not numeric; the model '
                                   f"expects {np.dtype(spec.dtype).name}.")
    if np.issubdtype(spec.dtype, np.floating) != np.issubdtype(a.dtype, np.floating):
        raise CalibrationDataError(f'Input "{spec.name}"{where} has dtype {a.dtype} but the model expects '
                                   f"{np.dtype(spec.dtype).name}. Convert the data (e.g. images to float32 and normalise).")
    if a.size == 0:
        raise CalibrationDataError(f'Input "{spec.name}"{where} has shape {a.shape}: a zero-size dimension, so it '
                                   "holds no elements. Give samples with data in every dimension.")
    a = a.astype(spec.dtype, copy=False)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise CalibrationDataError(f'Input "{spec.name}"{where} contains NaN or Inf values. '
                                   "Clean the data or fix the preprocessing that produced them.")
    if spec.index_rows is not None and np.issubdtype(a.dtype, np.integer):
        _check_indices(a, spec, where)
    return a


def _check_indices(a: np.ndarray, spec: InputSpec, where: str) -> None:
    """Ids that index a table of `rows` rows must lie in [-rows, rows) (Gather's valid range)."""
    rows = spec.index_rows or 0
    lo, hi = int(a.min()), int(a.max())
    if lo < -rows or hi >= rows:
        bad = hi if hi >= rows else lo
        raise CalibrationDataError(
            f'Input "{spec.name}"{where} holds index {bad}, outside the embedding table it indexes ({rows} rows: '
            f"valid ids are 0..{rows - 1}). Check the tokenizer / vocabulary the ids come from.")


class VariationWatch:
    """Streaming check that calibration/check data varies: refused when every float input is flat.

    A tensor is flat when it holds one value everywhere, or (rank >= 3) one value per channel, for the
    channel on axis 1 (NCHW) or on the last axis (NHWC): blank images become per-channel constants after
    mean/std normalisation. Activation ranges calibrated from such data are degenerate (all-zero data
    gives scale 1.0 and a model that outputs zeros), and agreement measured on it means nothing.
    """

    def __init__(self) -> None:
        # per input, per channel axis considered: (min, max) per channel so far, or None once untrackable
        self.ranges: dict[str, list[tuple[np.ndarray, np.ndarray] | None]] = {}

    @staticmethod
    def _ranges(a: np.ndarray) -> list[tuple[np.ndarray, np.ndarray] | None]:
        if a.ndim < 3:
            return [(np.asarray(a.min()).reshape(1), np.asarray(a.max()).reshape(1))]
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for axis in (1, a.ndim - 1):
            others = tuple(i for i in range(a.ndim) if i != axis)
            out.append((a.min(axis=others), a.max(axis=others)))
        return out

    def update(self, feeds: Mapping[str, np.ndarray]) -> None:
        for k, v in feeds.items():
            if not np.issubdtype(v.dtype, np.floating) or not v.size:
                continue
            new = self._ranges(v)
            old = self.ranges.setdefault(k, new)
            if old is new:
                continue
            for i, (o, n) in enumerate(zip(old, new)):
                same = o is not None and n is not None and o[0].shape == n[0].shape
                old[i] = (np.minimum(o[0], n[0]), np.maximum(o[1], n[1])) if same and o and n else None

    def _flat(self, k: str) -> bool:
        return any(r is not None and bool((r[0] == r[1]).all()) for r in self.ranges[k])

    def check(self, what: str, count: int) -> None:
        """Raise CalibrationDataError when every float input seen was flat over all `count` batches/samples."""
        if not self.ranges or not all(self._flat(k) for k in self.ranges):
            return
        values = "; ".join(f'"{k}" = {", ".join(f"{x:g}" for x in np.unique(r[0])[:4])}'
                           for k, rs in self.ranges.items() for r in rs[:1] if r is not None)
        raise CalibrationDataError(
            f"Every {what} sample is constant ({count} batch(es); {values} everywhere, or per channel): there is "
            "no variation to calibrate or check against. Check the data (blank or black images, all-zero arrays, "
            "wrong preprocessing) and pass real samples.")


def require_variation(feeds: Iterable[Mapping[str, np.ndarray]], what: str) -> None:
    """Refuse `feeds` when every float input is flat (see VariationWatch)."""
    watch, n = VariationWatch(), 0
    for f in feeds:
        watch.update(f)
        n += 1
    watch.check(what, n)


class SampleSet:
    """A re-iterable, validated collection of samples; each sample is a feed dict with batch dim 1."""

    def __init__(self, loaders: Sequence[Callable[[], Feeds]], inputs: Sequence[InputSpec], source: str):
        if not loaders:
            raise CalibrationDataError(f"The data set {source} is empty: give at least one sample "
                                       "(a few hundred are recommended for calibration).")
        self.loaders, self.inputs, self.source = list(loaders), list(inputs), source

    def __len__(self) -> int:
        return len(self.loaders)

    def sample(self, i: int) -> Feeds:
        return validate_feeds(self.loaders[i](), self.inputs, f"{self.source}, sample {i}")

    def batches(self, indices: Iterable[int], batch_size: int) -> Iterator[Feeds]:
        """Stack consecutive samples with equal shapes into batches of up to batch_size."""
        fixed = static_batch(self.inputs)
        batch_size = fixed if fixed is not None else batch_size
        pending: list[Feeds] = []
        for i in indices:
            s = self.sample(i)
            if pending and (len(pending) >= batch_size or _shapes(s) != _shapes(pending[0])):
                yield _stack(pending)
                pending = []
            pending.append(s)
        if pending:
            yield _stack(pending)


def _shapes(f: Feeds) -> tuple:
    return tuple((k, v.shape) for k, v in sorted(f.items()))


def _stack(samples: list[Feeds]) -> Feeds:
    return {k: np.concatenate([s[k] for s in samples], axis=0) for k in samples[0]}


def _split_samples(arrays: Mapping[str, np.ndarray], inputs: Sequence[InputSpec], source: str) -> list[Callable[[], Feeds]]:
    """Per-sample loaders for arrays whose first axis indexes samples (a missing batch axis is added)."""
    ranks = {s.name: len(s.shape) for s in inputs}
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if np.ndim(v) == 0:
            raise CalibrationDataError(f'Array "{k}" in {source} is a scalar (shape ()), but the model expects rank '
                                       f"{ranks.get(k, '?')} samples: save an array whose first axis indexes samples.")
    arrays = {k: (v[None] if k in ranks and v.ndim == ranks[k] - 1 else v) for k, v in arrays.items()}
    counts = {v.shape[0] if v.ndim else 1 for v in arrays.values()}
    if len(counts) != 1:
        raise CalibrationDataError(f"Arrays in {source} hold different numbers of samples: "
                                   f"{ {k: v.shape for k, v in arrays.items()} }.")
    n = counts.pop()
    return [partial(_sample_feeds, arrays, i) for i in range(n)]


def _sample_feeds(arrays: Mapping[str, np.ndarray], i: int) -> Feeds:
    return {k: v[i:i + 1] for k, v in arrays.items()}


def _load_npfile(path: Path, inputs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f:  # our handle: closed even when numpy/zipfile fail half-way
            if path.suffix == ".npz":
                with np.load(f, allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}
            a = np.load(f, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy/zipfile/zlib raise many types for a corrupt or foreign file
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CalibrationDataError(f"Cannot read {path}: {why}. Save arrays with numpy.save / numpy.savez "
                                   "(object/pickled arrays are refused).") from None
    if len(inputs) != 1:
        raise CalibrationDataError(f"{path} is a single array but the model has {len(inputs)} inputs; "
                                   f"use an .npz with keys {', '.join(s.name for s in inputs)}.")
    return {inputs[0].name: a}


def _npfile_loaders(path: Path, inputs: Sequence[InputSpec]) -> list[Callable[[], Feeds]]:
    return _split_samples(_load_npfile(path, inputs), inputs, str(path))


def _no_preprocess(preprocess: object, source: str) -> None:
    if preprocess is not None:
        raise ConfigError(f"Image preprocessing settings (--size, --resize-short, --mean, --std, --layout, --color or "
                          f"a recipe `preprocess:` section) apply to image folders only, but {source} holds arrays, "
                          "which are fed as they are. Drop those settings, or preprocess the arrays yourself.")


def _folder_loaders(folder: Path, inputs: Sequence[InputSpec], preprocess) -> list[Callable[[], Feeds]]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    arrays = [p for p in files if p.suffix in (".npy", ".npz")]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays:
        _no_preprocess(preprocess, str(folder))
        return [ld for p in arrays for ld in _npfile_loaders(p, inputs)]
    if images:
        from slimq.io.images import PreprocessSpec, image_loaders

        return image_loaders(images, inputs, preprocess or PreprocessSpec())
    raise CalibrationDataError(f"{folder} holds no .npy/.npz files and no images ({', '.join(IMAGE_SUFFIXES)}).")


def load_samples(data, inputs: Sequence[InputSpec], preprocess=None) -> SampleSet:
    """Build a SampleSet from a path, an array, a dict of arrays, a list of feed dicts, or a SampleSet."""
    if isinstance(data, SampleSet):
        return data
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise CalibrationDataError(f"Calibration data not found: {path}. Pass a folder of images or .npy/.npz files.")
        if path.is_dir():
            return SampleSet(_folder_loaders(path, inputs, preprocess), inputs, str(path))
        if path.suffix not in (".npy", ".npz"):
            raise CalibrationDataError(f"{path}: unsupported data file; use .npy, .npz or a folder of images.")
        _no_preprocess(preprocess, str(path))
        return SampleSet(_npfile_loaders(path, inputs), inputs, str(path))
    _no_preprocess(preprocess, "in-memory data")
    if isinstance(data, np.generic):
        data = np.asarray(data)
    if isinstance(data, np.ndarray):
        if len(inputs) != 1:
            raise CalibrationDataError(f"An array was given but the model has {len(inputs)} inputs; pass a dict.")
        return SampleSet(_split_samples({inputs[0].name: data}, inputs, "array"), inputs, "array")
    if isinstance(data, Mapping):
        return SampleSet(_split_samples(dict(data), inputs, "dict"), inputs, "dict")
    items = list(data) if isinstance(data, Iterable) else None
    if items is None or not all(isinstance(f, Mapping) for f in items):
        raise CalibrationDataError(f"Unsupported data of type {type(data).__name__}: pass a path, an array, a dict of "
                                   "arrays (one per input) or a list of such dicts.")
    loaders = [ld for f in items for ld in _split_samples(dict(f), inputs, "list")]
    return SampleSet(loaders, inputs, "list of feeds")
