"""PP-OCR text recognition: dictionary, preprocessing, CTC greedy decoding and CER.

Preprocessing and decoding follow PaddleOCR / RapidOCR (``resize_norm_img`` and
``CTCLabelDecode``): images are taken as RGB and flipped to BGR (the models were trained
on cv2 images), resized to height 48 with cv2-style bilinear interpolation keeping the
aspect ratio (width at most 320), normalised to [-1, 1] and zero-padded on the right.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from slimq.core.errors import CalibrationDataError, ModelLoadError, unknown_choice
from slimq.tasks.base import Feeds, batch_slices, check_batch_count
from slimq.tasks.render import build_charset, find_cjk_fonts, render_lines

REC_HEIGHT = 48
REC_WIDTH = 320
RAPIDOCR_MODELS = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
CALIBRATION_SEED_OFFSET = 1_000_003


def rapidocr_model_path(kind: str) -> Path:
    """Path of a PP-OCR model shipped in the rapidocr-onnxruntime wheel ("det", "rec", "cls").

    The package is located without importing it (importing needs cv2).
    """
    if kind not in RAPIDOCR_MODELS:
        raise unknown_choice("PP-OCR model", kind, RAPIDOCR_MODELS)
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    hint = "Install it with `pip install --no-deps rapidocr-onnxruntime==1.4.4`."
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The PP-OCR models come from rapidocr-onnxruntime, which is not installed. {hint}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / RAPIDOCR_MODELS[kind]
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the rapidocr-onnxruntime install. {hint}")
    return path


def load_model_proto(model_path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model's graph and metadata (no external weights) or raise ModelLoadError."""
    path = Path(model_path)
    if not path.is_file():
        raise ModelLoadError(f"Model file {path} does not exist.")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for bad files
        raise ModelLoadError(f"{path} is not a readable ONNX model: {exc}") from exc


def read_rec_dictionary(
    model: str | Path | onnx.ModelProto, use_space_char: bool = True
) -> list[str]:
    """The CTC label list of a PP-OCR rec model: ["blank", *metadata "character", " "]."""
    proto = model if isinstance(model, onnx.ModelProto) else load_model_proto(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    if "character" not in meta:
        raise ModelLoadError(
            "The recognition model has no 'character' metadata entry (the dictionary). "
            "Use a PP-OCR rec model exported by RapidOCR, e.g. ch_PP-OCRv4_rec_infer.onnx."
        )
    chars = meta["character"].splitlines()
    return ["blank", *chars, *([" "] if use_space_char else [])]


def ctc_greedy_decode(probs: np.ndarray, dictionary: Sequence[str]) -> list[tuple[str, float]]:
    """PaddleOCR CTC greedy decoding of (N, T, C) scores: argmax, merge repeats, drop blank 0.

    Returns (text, mean probability of the kept steps) per row; the score is 0 for empty text.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3 or probs.shape[2] != len(dictionary):
        raise CalibrationDataError(
            f"Expected rec output (N, T, {len(dictionary)}), got {probs.shape}; does the "
            "dictionary belong to this model?"
        )
    idx = probs.argmax(axis=2)
    best = probs.max(axis=2)
    results = []
    for row, row_p in zip(idx, best, strict=True):
        keep = np.ones(row.shape, dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        text = "".join(dictionary[i] for i in row[keep])
        results.append((text, float(row_p[keep].mean()) if keep.any() else 0.0))
    return results


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def character_error_rate(
    predictions: Sequence[str], references: Sequence[str], ignore_space: bool = True
) -> float:
    """CER in percent: total edit distance / total reference characters.

    Spaces are ignored by default, like PaddleOCR's RecMetric.
    """
    if len(predictions) != len(references):
        raise CalibrationDataError(
            f"{len(predictions)} predictions for {len(references)} references."
        )
    strip = (lambda s: s.replace(" ", "")) if ignore_space else (lambda s: s)
    total = sum(len(strip(r)) for r in references)
    if total == 0:
        raise CalibrationDataError("CER is undefined: the references contain no characters.")
    pairs = zip(predictions, references, strict=True)
    errors = sum(edit_distance(strip(p), strip(r)) for p, r in pairs)
    return 100.0 * errors / total


def _axis_coords(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(f).astype(np.int64)
    frac = f - i0
    frac[i0 < 0] = 0.0
    i0[i0 < 0] = 0
    high = i0 >= n_in - 1
    frac[high] = 0.0
    i0[high] = n_in - 1
    return i0, np.minimum(i0 + 1, n_in - 1), frac.astype(np.float32)


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize (H, W, C) like ``cv2.resize(..., INTER_LINEAR)`` (half-pixel centres, no antialias).

    uint8 input gives uint8 output (rounded); other dtypes give float32.
    """
    y0, y1, wy = _axis_coords(img.shape[0], out_h)
    x0, x1, wx = _axis_coords(img.shape[1], out_w)
    src = img.astype(np.float32)
    rows = src[y0] * (1 - wy)[:, None, None] + src[y1] * wy[:, None, None]
    out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out


def rec_preprocess(img: np.ndarray, height: int = REC_HEIGHT, width: int = REC_WIDTH) -> np.ndarray:
    """One RGB uint8 line crop -> float32 (3, height, width) PP-OCR rec input."""
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) == 0:
        raise CalibrationDataError(f"Expected an RGB (H, W, 3) line image, got shape {img.shape}.")
    resized_w = min(width, int(math.ceil(height * img.shape[1] / img.shape[0])))
    bgr = img[:, :, ::-1]
    resized = resize_bilinear(bgr, height, resized_w).astype(np.float32)
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :resized_w] = (resized.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


class RecEvaluator:
    """CER of a PP-OCR rec model on deterministic rendered text lines.

    Metrics: "cer" (percent, lower is better, spaces ignored) and "line_acc" (percent of
    lines read exactly). The dictionary is read from the model's metadata.
    """

    name = "ocr_rec"
    primary_metric = "cer"
    higher_is_better = False

    def __init__(
        self,
        model_path: str | Path | None = None,
        n_lines: int = 200,
        seed: int = 0,
        batch_size: int = 8,
    ) -> None:
        proto = load_model_proto(model_path or rapidocr_model_path("rec"))
        self.dictionary = read_rec_dictionary(proto)
        self.input_name = proto.graph.input[0].name
        self.batch_size = batch_size
        self.seed = seed
        self.faces = find_cjk_fonts()
        self.charset = build_charset(self.dictionary[1:-1], self.faces)
        lines = render_lines(n_lines, seed, self.charset, self.faces)
        self.texts = [text for _, text in lines]
        self.images = np.stack([rec_preprocess(img) for img, _ in lines])
        self._slices = batch_slices(n_lines, batch_size)

    def inputs(self) -> Iterator[Feeds]:
        """Yield {input_name: (B, 3, 48, 320) float32} batches."""
        for s in self._slices:
            yield {self.input_name: self.images[s]}

    def decode(self, outputs: list[list[np.ndarray]]) -> list[str]:
        """Decoded text of every line, in order."""
        check_batch_count(self.name, outputs, len(self._slices))
        return [t for out in outputs for t, _ in ctc_greedy_decode(out[0], self.dictionary)]

    def score(self, outputs: list[list[np.ndarray]]) -> dict[str, float]:
        """Return {"cer": %, "line_acc": %}."""
        preds = self.decode(outputs)
        if len(preds) != len(self.texts):
            raise CalibrationDataError(
                f"Got {len(preds)} decoded lines for {len(self.texts)} images."
            )
        pairs = zip(preds, self.texts, strict=True)
        exact = sum(p.replace(" ", "") == t.replace(" ", "") for p, t in pairs)
        return {
            "cer": character_error_rate(preds, self.texts),
            "line_acc": 100.0 * exact / len(self.texts),
        }

    def calibration_batches(self, n_batches: int, batch_size: int | None = None) -> list[Feeds]:
        """``n_batches`` feeds of rendered lines drawn with a seed disjoint from evaluation."""
        bs = batch_size or self.batch_size
        lines = render_lines(
            n_batches * bs, self.seed + CALIBRATION_SEED_OFFSET, self.charset, self.faces
        )
        images = np.stack([rec_preprocess(img) for img, _ in lines])
        return [{self.input_name: images[s]} for s in batch_slices(len(lines), bs)]
