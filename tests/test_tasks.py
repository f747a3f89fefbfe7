"""Tests of the evaluation tasks: metrics, decoding, rendering and the PP-OCR evaluators."""

from __future__ import annotations

import numpy as np
import pytest

from slimq.core.errors import CalibrationDataError, ConfigError, ModelLoadError
from slimq.tasks import render
from slimq.tasks.base import collect_outputs, degradation, evaluate
from slimq.tasks.classification import ClassificationEvaluator, topk_accuracy
from slimq.tasks.ocr_det import (
    DBPostProcess,
    DetPreprocess,
    connected_boxes,
    dilate_2x2,
    match_boxes,
    prob_map_iou,
)
from slimq.tasks.ocr_rec import (
    REC_WIDTH,
    character_error_rate,
    ctc_greedy_decode,
    edit_distance,
    rapidocr_model_path,
    rec_preprocess,
    resize_bilinear,
)


def _have_rapidocr_models() -> bool:
    try:
        rapidocr_model_path("rec")
        rapidocr_model_path("det")
    except ModelLoadError:
        return False
    return True


needs_models = pytest.mark.skipif(
    not _have_rapidocr_models(), reason="rapidocr-onnxruntime not installed"
)


@pytest.fixture(scope="module")
def charset() -> render.Charset:
    return render.build_charset(None, render.find_cjk_fonts())


# ---- metrics and decoding -------------------------------------------------------------


def test_ctc_decode_merges_repeats_and_drops_blank() -> None:
    dictionary = ["blank", "a", "b", " "]
    path = [1, 1, 0, 1, 2, 2, 0, 3, 1, 0]
    probs = np.full((1, len(path), 4), 0.1, dtype=np.float32)
    peak = np.linspace(0.5, 0.95, len(path))
    probs[0, np.arange(len(path)), path] = peak
    ((text, score),) = ctc_greedy_decode(probs, dictionary)
    assert text == "aab a"
    kept = [0, 3, 4, 7, 8]  # first of each run, blanks removed
    assert score == pytest.approx(float(peak[kept].mean()), rel=1e-6)


def test_ctc_decode_empty_and_shape_mismatch() -> None:
    probs = np.zeros((2, 5, 3), dtype=np.float32)
    probs[:, :, 0] = 1.0
    assert ctc_greedy_decode(probs, ["blank", "a", "b"]) == [("", 0.0), ("", 0.0)]
    with pytest.raises(CalibrationDataError, match="dictionary"):
        ctc_greedy_decode(probs, ["blank", "a"])


def test_cer_on_known_strings() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert character_error_rate(["abc", "xy"], ["abd", "xyz"]) == pytest.approx(100 * 2 / 6)
    assert character_error_rate(["a b c"], ["abc"]) == 0.0
    assert character_error_rate(["a b c"], ["abc"], ignore_space=False) == pytest.approx(200 / 3)
    with pytest.raises(CalibrationDataError):
        character_error_rate(["a"], [""])


def test_topk_accuracy_on_hand_made_logits() -> None:
    logits = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: top1 hit
            [0.1, 0.9, 0.8, 0.0, 0.0, 0.0],  # label 2: second best -> top5 only
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: last -> miss in both
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # label 5: top1 hit
        ]
    )
    labels = np.array([0, 2, 5, 5])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(50.0)
    assert topk_accuracy(logits, labels, 5) == pytest.approx(75.0)


def test_classification_evaluator_with_fake_session() -> None:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 4, 1, 1)).astype(np.float32)
    labels = images.reshape(10, 4).argmax(axis=1)
    labels[:3] = (labels[:3] + 1) % 4  # three wrong answers
    ev = ClassificationEvaluator(images, labels, batch_size=4, input_name="x")
    metrics = evaluate(lambda feeds: [feeds["x"].reshape(len(feeds["x"]), -1)], ev)
    assert metrics["top1"] == pytest.approx(70.0)
    assert metrics["top5"] == pytest.approx(100.0)
    assert degradation(ev, {"top1": 70.0}, {"top1": 65.0}) == pytest.approx(5.0)
    outputs = collect_outputs(lambda feeds: [feeds["x"].reshape(len(feeds["x"]), -1)], ev)
    with pytest.raises(CalibrationDataError, match="batches"):
        ev.score(outputs[:-1])
    with pytest.raises(CalibrationDataError, match="NaN"):
        ClassificationEvaluator(np.full((1, 1, 1, 1), np.nan, np.float32), np.array([0]))


# ---- image preprocessing --------------------------------------------------------------


def test_resize_bilinear_matches_half_pixel_convention() -> None:
    img = np.array([[[0], [100]]], dtype=np.uint8)  # 1 x 2 x 1
    out = resize_bilinear(img, 1, 4)
    assert out[0, :, 0].tolist() == [0, 25, 75, 100]
    same = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(resize_bilinear(same, 2, 4), same)


def test_rec_preprocess_pads_and_normalises() -> None:
    img = np.full((24, 40, 3), 255, dtype=np.uint8)
    x = rec_preprocess(img)
    assert x.shape == (3, 48, REC_WIDTH) and x.dtype == np.float32
    assert np.allclose(x[:, :, :80], 1.0) and np.all(x[:, :, 80:] == 0.0)
    wide = rec_preprocess(np.zeros((10, 1000, 3), dtype=np.uint8))
    assert np.allclose(wide, -1.0)  # squeezed to the full 320 width, no padding left


def test_det_preprocess_sizes() -> None:
    pre = DetPreprocess()
    assert pre.target_size(736, 960) == (736, 960)
    assert pre.target_size(600, 800) == (736, 992)
    assert pre(np.zeros((100, 200, 3), np.uint8)).shape == (3, 736, 1472)
    with pytest.raises(ConfigError, match="limit_type"):
        DetPreprocess(limit_type="mni").target_size(10, 10)


# ---- det post-process -----------------------------------------------------------------


def test_db_postprocess_two_rectangles() -> None:
    prob = np.zeros((64, 128), dtype=np.float32)
    prob[10:20, 10:60] = 0.9
    prob[40:50, 70:120] = 0.8
    boxes, scores = DBPostProcess()(prob[None, None], (128, 256))  # image 2x the map size
    assert boxes.shape == (2, 4)
    # the 2x2 dilation makes the first region pixels 10..60 x 10..20 (centre distances
    # 50 x 10); unclip grows it by d = 50*10*1.6/120 = 6.67 on each side; then scale by 2
    assert boxes[0].tolist() == [7, 7, 133, 53]
    assert boxes[1].tolist() == [127, 67, 253, 113]
    # scores average the map over the dilated 51 x 11 region, as RapidOCR does
    assert scores.tolist() == pytest.approx([0.9 * 500 / 561, 0.8 * 500 / 561], rel=1e-5)


def test_db_postprocess_drops_weak_and_tiny_regions() -> None:
    prob = np.zeros((64, 64), dtype=np.float32)
    prob[5:30, 5:30] = 0.4  # above thresh 0.3 but mean below box_thresh 0.5
    prob[40:42, 40:42] = 0.9  # too small
    boxes, _ = DBPostProcess()(prob, (64, 64))
    assert len(boxes) == 0


def test_connected_components_and_dilation() -> None:
    mask = np.zeros((6, 8), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one 8-connected component
    mask[4:6, 3:7] = True
    mask[0, 7] = True
    assert connected_boxes(mask) == [(0, 0, 1, 1), (7, 0, 7, 0), (3, 4, 6, 5)]
    single = np.zeros((3, 3), dtype=bool)
    single[1, 1] = True
    assert dilate_2x2(single).astype(int).tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]


def test_prob_map_iou_and_matching() -> None:
    a = np.zeros((4, 4), np.float32)
    b = np.zeros((4, 4), np.float32)
    a[:2] = 0.9
    b[1:3] = 0.9
    assert prob_map_iou(a, b) == pytest.approx(4 / 12)
    assert prob_map_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    pred = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 9, 10]])
    gt = np.array([[0, 0, 10, 10], [100, 100, 110, 110]])
    assert match_boxes(pred, gt) == [(0, 0, 1.0)]


# ---- rendering ------------------------------------------------------------------------


def test_renderer_is_deterministic(charset: render.Charset) -> None:
    a = render.render_lines(6, 7, charset)
    b = render.render_lines(6, 7, charset)
    c = render.render_lines(6, 8, charset)
    assert [t for _, t in a] == [t for _, t in b]
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    assert [t for _, t in a] != [t for _, t in c]
    for img, text in a:
        assert img.dtype == np.uint8 and img.shape[2] == 3 and len(text) >= 2
        assert img.shape[1] <= 320 / 48 * img.shape[0] + 1


def test_page_boxes_cover_the_ink(charset: render.Charset) -> None:
    ((img, boxes),) = render.render_pages(1, 3, charset)
    ((img2, boxes2),) = render.render_pages(1, 3, charset)
    assert np.array_equal(img, img2) and np.array_equal(boxes, boxes2)
    assert len(boxes) >= 3
    inside = np.zeros(img.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    dark = img.mean(axis=2) < 150  # text pixels; the background is light
    assert dark[inside].mean() > 0.05 and dark[~inside].mean() < 0.001


def test_missing_font_error_names_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    render.find_cjk_fonts.cache_clear()
    monkeypatch.delenv(render.FONT_ENV, raising=False)
    monkeypatch.setattr(render, "FONT_CANDIDATES", ())
    monkeypatch.setattr(render, "_fc_list_paths", lambda: [])
    try:
        with pytest.raises(ConfigError, match="fonts-noto-cjk.*fonts-wqy-microhei"):
            render.find_cjk_fonts()
        monkeypatch.setenv(render.FONT_ENV, "/nonexistent/font.ttc")
        render.find_cjk_fonts.cache_clear()
        with pytest.raises(ConfigError, match=render.FONT_ENV):
            render.find_cjk_fonts()
    finally:
        render.find_cjk_fonts.cache_clear()


# ---- real PP-OCRv4 models -------------------------------------------------------------


@needs_models
def test_fp32_rec_model_reads_rendered_lines() -> None:
    import onnxruntime as ort

    from slimq.tasks.ocr_rec import RecEvaluator

    ev = RecEvaluator(n_lines=16, seed=0, batch_size=8)
    assert ev.dictionary[0] == "blank" and ev.dictionary[-1] == " " and len(ev.dictionary) == 6625
    sess = ort.InferenceSession(str(rapidocr_model_path("rec")), providers=["CPUExecutionProvider"])
    metrics = evaluate(lambda feeds: sess.run(None, feeds), ev)
    assert metrics["cer"] < 8.0, metrics
    calib = ev.calibration_batches(2, batch_size=4)
    assert len(calib) == 2 and calib[0][ev.input_name].shape == (4, 3, 48, 320)
    assert not np.array_equal(calib[0][ev.input_name], ev.images[:4])


@needs_models
def test_fp32_det_model_finds_rendered_lines() -> None:
    import onnxruntime as ort

    from slimq.tasks.ocr_det import DetEvaluator, mean_prob_map_iou

    path = rapidocr_model_path("det")
    ev = DetEvaluator(path, n_pages=2, seed=0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = collect_outputs(lambda feeds: sess.run(None, feeds), ev)
    metrics = ev.score(outputs)
    assert metrics["f1"] > 90.0, metrics
    assert mean_prob_map_iou(outputs, outputs) == 1.0
    cut = [[np.where(np.arange(o[0].shape[-1]) < 480, 0.0, o[0])] for o in outputs]
    assert 0.0 < mean_prob_map_iou(outputs, cut) < 0.9  # the left half of every map erased
