"""slimq: quantize FP32 models to INT8 (static PTQ, dynamic PTQ, QAT), check them against FP32, deploy them.

One entry point, dispatched by config type::

    import slimq
    result = slimq.quantize("model.onnx", slimq.StaticConfig(algo="hist"), "calib_images/", "model.int8.onnx")
    print(result.report.format())
"""

from slimq.api import quantize, quantize_dynamic, quantize_static
from slimq.core.config import DynamicConfig, SkipSpec, StaticConfig, target_rules
from slimq.core.errors import SlimqError
from slimq.qat.config import QATConfig
from slimq.report.publish import QuantResult
from slimq.report.schema import Report
from slimq.runtime.cpu import cpu_info
from slimq.runtime.session import Predictor

__version__ = "0.1.0"

__all__ = ["DynamicConfig", "Predictor", "QATConfig", "QuantResult", "Report", "SkipSpec", "SlimqError",
           "StaticConfig", "cpu_info", "quantize", "quantize_dynamic", "quantize_static", "target_rules"]
