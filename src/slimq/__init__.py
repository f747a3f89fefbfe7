"""slimq: quantize FP32 ONNX models to INT8 (static PTQ, dynamic PTQ, QAT) and deploy them with onnxruntime."""

from slimq.core.config import SkipSpec, StaticConfig, target_rules
from slimq.core.errors import SlimqError
from slimq.runtime.cpu import cpu_info
from slimq.runtime.session import Predictor
from slimq.static.method import QuantResult, quantize_static

__version__ = "0.1.0"

__all__ = ["Predictor", "QuantResult", "SkipSpec", "SlimqError", "StaticConfig", "cpu_info", "quantize_static",
           "target_rules"]
