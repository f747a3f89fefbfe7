"""Evaluation tasks: the Evaluator interface and the classification / PP-OCR evaluators."""

from slimq.tasks.base import Evaluator, collect_outputs, degradation, evaluate
from slimq.tasks.classification import ClassificationEvaluator, topk_accuracy
from slimq.tasks.ocr_det import (
    DBPostProcess,
    DetEvaluator,
    DetPreprocess,
    mean_prob_map_iou,
    prob_map_iou,
    prob_maps,
)
from slimq.tasks.ocr_rec import (
    RecEvaluator,
    character_error_rate,
    ctc_greedy_decode,
    rapidocr_model_path,
    read_rec_dictionary,
    rec_preprocess,
)

__all__ = [
    "ClassificationEvaluator",
    "DBPostProcess",
    "DetEvaluator",
    "DetPreprocess",
    "Evaluator",
    "RecEvaluator",
    "character_error_rate",
    "collect_outputs",
    "ctc_greedy_decode",
    "degradation",
    "evaluate",
    "mean_prob_map_iou",
    "prob_map_iou",
    "prob_maps",
    "rapidocr_model_path",
    "read_rec_dictionary",
    "rec_preprocess",
    "topk_accuracy",
]
