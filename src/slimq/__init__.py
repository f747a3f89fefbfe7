"""slimq: quantize FP32 ONNX models to INT8 (static PTQ, dynamic PTQ, QAT) and deploy them with onnxruntime."""

from .config import SkipSpec, StaticConfig, target_rules
from .deploy import Predictor, cpu_info
from .errors import SlimqError
from .static import QuantResult, quantize_static

__version__ = "0.1.0"

__all__ = ["Predictor", "QuantResult", "SkipSpec", "SlimqError", "StaticConfig", "cpu_info", "quantize_static",
           "target_rules"]
