"""Static post-training quantization: plan, calibrate, insert Q/DQ."""

from slimq.static.method import QuantResult, quantize_static

__all__ = ["QuantResult", "quantize_static"]
