"""PP-OCR DB text detection: preprocessing, a numpy DB post-process and box-level metrics.

Preprocessing follows RapidOCR 1.4.4 (config.yaml): scale so the short side is at least
736 ("min" limit), round both sides to multiples of 32, BGR, ``(x/255 - 0.5) / 0.5``.
The post-process is DBPostProcess (thresh 0.3, 2x2 dilation, box_thresh 0.5, unclip
ratio 1.6) with two simplifications that need neither cv2 nor pyclipper: components are
8-connected regions of the binary map and boxes are axis-aligned (for an axis-aligned
rectangle the unclip offset and the min-area box are then exact).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimq.core.errors import CalibrationDataError, unknown_choice
from slimq.tasks.base import Feeds, batch_slices, check_batch_count
from slimq.tasks.ocr_rec import load_model_proto, resize_bilinear
from slimq.tasks.render import build_charset, find_cjk_fonts, render_pages

CALIBRATION_SEED_OFFSET = 2_000_003


@dataclass(frozen=True)
class DetPreprocess:
    """Det input preparation (defaults: RapidOCR 1.4.4 config.yaml)."""

    limit_side_len: int = 736
    limit_type: str = "min"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) the image is resized to: limited side, rounded to multiples of 32."""
        if self.limit_type not in ("min", "max"):
            raise unknown_choice("det limit_type", self.limit_type, ("min", "max"))
        side = min(h, w) if self.limit_type == "min" else max(h, w)
        grow = self.limit_type == "min" and side < self.limit_side_len
        shrink = self.limit_type == "max" and side > self.limit_side_len
        ratio = self.limit_side_len / side if grow or shrink else 1.0
        return (
            max(32, int(round(int(h * ratio) / 32) * 32)),
            max(32, int(round(int(w * ratio) / 32) * 32)),
        )

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> float32 (3, H', W') model input."""
        if img.ndim != 3 or img.shape[2] != 3:
            raise CalibrationDataError(f"Expected an RGB (H, W, 3) image, got shape {img.shape}.")
        out_h, out_w = self.target_size(*img.shape[:2])
        resized = resize_bilinear(img[:, :, ::-1], out_h, out_w).astype(np.float32)
        norm = (resized / 255.0 - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return np.ascontiguousarray(norm.transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class DBPostProcess:
    """DB probability map -> boxes (defaults: RapidOCR 1.4.4 config.yaml)."""

    thresh: float = 0.3
    box_thresh: float = 0.5
    max_candidates: int = 1000
    unclip_ratio: float = 1.6
    use_dilation: bool = True
    min_size: int = 3

    def __call__(self, prob: np.ndarray, dest_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) int x0, y0, x1, y1 in a ``dest_hw`` image, and their scores (N,)."""
        prob = np.asarray(prob, dtype=np.float32).reshape(prob.shape[-2:])
        mask = prob > self.thresh
        if self.use_dilation:
            mask = dilate_2x2(mask)
        boxes, scores = [], []
        for x0, y0, x1, y1 in connected_boxes(mask)[: self.max_candidates]:
            w, h = x1 - x0, y1 - y0  # distances between pixel centres, like minAreaRect
            if min(w, h) < self.min_size:
                continue
            score = float(prob[y0 : y1 + 1, x0 : x1 + 1].mean())
            if score < self.box_thresh:
                continue
            d = w * h * self.unclip_ratio / (2.0 * (w + h))
            if min(w, h) + 2 * d < self.min_size + 2:
                continue
            boxes.append(self._scale((x0 - d, y0 - d, x1 + d, y1 + d), prob.shape, dest_hw))
            scores.append(score)
        return np.array(boxes, dtype=np.int64).reshape(-1, 4), np.array(scores, dtype=np.float32)

    @staticmethod
    def _scale(box, map_hw, dest_hw) -> list[int]:
        sx, sy = dest_hw[1] / map_hw[1], dest_hw[0] / map_hw[0]
        x0, y0, x1, y1 = box
        return [
            int(np.clip(round(x0 * sx), 0, dest_hw[1])),
            int(np.clip(round(y0 * sy), 0, dest_hw[0])),
            int(np.clip(round(x1 * sx), 0, dest_hw[1])),
            int(np.clip(round(y1 * sy), 0, dest_hw[0])),
        ]


def dilate_2x2(mask: np.ndarray) -> np.ndarray:
    """``cv2.dilate`` with a 2x2 kernel, default anchor: out[y, x] = any(src[y-1:y+1, x-1:x+1]).

    Regions grow by one pixel to the right and downwards.
    """
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:, 1:] |= out[:, :-1].copy()
    return out


def _row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True pixels: (row, start, end exclusive), in row-major order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    diff = np.diff(padded, axis=1)
    rows, starts = np.nonzero(diff == 1)
    _, ends = np.nonzero(diff == -1)
    return rows, starts, ends


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def connected_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Inclusive bounding boxes (x0, y0, x1, y1) of 8-connected True regions, top to bottom."""
    rows, starts, ends = _row_runs(np.asarray(mask, dtype=bool))
    n = len(rows)
    if n == 0:
        return []
    parent = list(range(n))
    row_begin = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(1, mask.shape[0]):
        a, a_end = int(row_begin[r - 1]), int(row_begin[r])
        for b in range(int(row_begin[r]), int(row_begin[r + 1])):
            while a < a_end and ends[a] < starts[b]:  # run a ends left of b, diagonal excluded
                a += 1
            k = a
            while k < a_end and starts[k] <= ends[b]:  # 8-connected: touching diagonally counts
                parent[_find(parent, k)] = _find(parent, b)
                k += 1
    labels = np.array([_find(parent, i) for i in range(n)])
    uniq, comp = np.unique(labels, return_inverse=True)
    x0 = np.full(len(uniq), np.iinfo(np.int64).max)
    y0, x1, y1 = x0.copy(), np.full(len(uniq), -1), np.full(len(uniq), -1)
    np.minimum.at(x0, comp, starts)
    np.maximum.at(x1, comp, ends - 1)
    np.minimum.at(y0, comp, rows)
    np.maximum.at(y1, comp, rows)
    order = np.lexsort((x0, y0))
    return [(int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])) for i in order]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of boxes given as x0, y0, x1, y1 (x1, y1 exclusive)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    ih = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_boxes(
    pred: np.ndarray, gt: np.ndarray, iou_thresh: float = 0.5
) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by descending IoU; returns (pred index, gt index, IoU)."""
    iou = box_iou(pred, gt)
    rows, cols = np.nonzero(iou >= iou_thresh)
    pairs = sorted(((iou[i, j], i, j) for i, j in zip(rows, cols, strict=True)), reverse=True)
    used_p, used_g, matches = set(), set(), []
    for v, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            matches.append((int(i), int(j), float(v)))
    return matches


def prob_map_iou(map_a: np.ndarray, map_b: np.ndarray, thresh: float = 0.3) -> float:
    """IoU of two probability maps binarised at ``thresh`` (1.0 when both are empty)."""
    a, b = np.asarray(map_a) > thresh, np.asarray(map_b) > thresh
    if a.shape != b.shape:
        raise CalibrationDataError(f"Probability maps differ in shape: {a.shape} vs {b.shape}.")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def prob_maps(outputs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per-image (H, W) probability maps from the det outputs of every batch."""
    return [m.reshape(m.shape[-2:]) for out in outputs for m in np.asarray(out[0])]


def mean_prob_map_iou(
    outputs_a: list[list[np.ndarray]], outputs_b: list[list[np.ndarray]], thresh: float = 0.3
) -> float:
    """Mean ``prob_map_iou`` over images of two det runs on the same inputs (e.g. FP32 vs INT8)."""
    maps_a, maps_b = prob_maps(outputs_a), prob_maps(outputs_b)
    if len(maps_a) != len(maps_b) or not maps_a:
        raise CalibrationDataError(f"Cannot compare {len(maps_a)} maps with {len(maps_b)} maps.")
    return float(np.mean([prob_map_iou(a, b, thresh) for a, b in zip(maps_a, maps_b, strict=True)]))


class DetEvaluator:
    """Box-level precision / recall / F1 (percent, IoU >= 0.5) on rendered pages.

    Keep the outputs (``slimq.tasks.base.collect_outputs``) to compare two models'
    probability maps with ``mean_prob_map_iou``.
    """

    name = "ocr_det"
    primary_metric = "f1"
    higher_is_better = True

    def __init__(
        self,
        model_path: str | Path | None = None,
        n_pages: int = 16,
        seed: int = 0,
        batch_size: int = 1,
        page_size: tuple[int, int] = (960, 736),
        preprocess: DetPreprocess = DetPreprocess(),
        post: DBPostProcess = DBPostProcess(),
        iou_thresh: float = 0.5,
        dictionary: Sequence[str] | None = None,
    ) -> None:
        self.input_name = load_model_proto(model_path).graph.input[0].name if model_path else "x"
        self.seed, self.batch_size, self.page_size = seed, batch_size, page_size
        self.preprocess, self.post, self.iou_thresh = preprocess, post, iou_thresh
        self.faces = find_cjk_fonts()
        self.charset = build_charset(dictionary, self.faces)
        pages = render_pages(n_pages, seed, self.charset, self.faces, *page_size)
        self.image_hw = page_size[1], page_size[0]
        self.gt_boxes = [boxes for _, boxes in pages]
        self.images = np.stack([preprocess(img) for img, _ in pages])
        self._slices = batch_slices(n_pages, batch_size)

    def inputs(self) -> Iterator[Feeds]:
        """Yield {input_name: (B, 3, H, W) float32} batches of pages."""
        for s in self._slices:
            yield {self.input_name: self.images[s]}

    def boxes(self, outputs: list[list[np.ndarray]]) -> list[np.ndarray]:
        """Detected boxes (N, 4) per page, in page pixel coordinates."""
        check_batch_count(self.name, outputs, len(self._slices))
        return [self.post(m, self.image_hw)[0] for m in prob_maps(outputs)]

    def score(self, outputs: list[list[np.ndarray]]) -> dict[str, float]:
        """Return {"precision", "recall", "f1", "mean_iou"}; the first three in percent."""
        n_pred = n_gt = 0
        ious: list[float] = []
        for pred, gt in zip(self.boxes(outputs), self.gt_boxes, strict=True):
            ious += [v for _, _, v in match_boxes(pred, gt, self.iou_thresh)]
            n_pred, n_gt = n_pred + len(pred), n_gt + len(gt)
        p = 100.0 * len(ious) / n_pred if n_pred else 0.0
        r = 100.0 * len(ious) / n_gt if n_gt else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        return {
            "precision": p,
            "recall": r,
            "f1": f1,
            "mean_iou": float(np.mean(ious)) if ious else 0.0,
        }

    def calibration_batches(self, n_batches: int, batch_size: int | None = None) -> list[Feeds]:
        """``n_batches`` feeds of rendered pages drawn with a seed disjoint from evaluation."""
        bs = batch_size or self.batch_size
        pages = render_pages(
            n_batches * bs,
            self.seed + CALIBRATION_SEED_OFFSET,
            self.charset,
            self.faces,
            *self.page_size,
        )
        images = np.stack([self.preprocess(img) for img, _ in pages])
        return [{self.input_name: images[s]} for s in batch_slices(len(pages), bs)]
