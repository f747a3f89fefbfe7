"""What this CPU offers for int8 inference (VNNI, AMX, ARM dot product), read from /proc/cpuinfo."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    avx2: bool
    avx512: bool
    vnni: bool  # avx512_vnni or avx_vnni: fast u8 x s8 dot products
    amx: bool
    arm_dot: bool  # ARM sdot/udot (asimddp)

    @property
    def expected_speedup(self) -> str:
        if self.amx:
            return "AMX: int8 matrix tiles; expect >= 3x (often more) for conv/matmul-heavy models"
        if self.vnni:
            return "VNNI: expect about 3-3.7x for conv/matmul-heavy models (u8 activations x s8 weights)"
        if self.arm_dot:
            return "ARM dot-product: expect about 2x"
        if self.avx2:
            return "no VNNI: expect about 1.5x (u8s8 with reduce_range to avoid saturation)"
        return "no int8 SIMD detected: INT8 may not be faster than FP32"

    @property
    def cpu_class(self) -> str:
        """The class of int8 hardware: AMX, AVX-512 VNNI, AVX-VNNI, AVX2 (no VNNI), ARM dot product, none."""
        if self.amx:
            return "AMX"
        if self.vnni:
            return "AVX-512 VNNI" if self.avx512 else "AVX-VNNI"
        if self.arm_dot:
            return "ARM dot product"
        return "AVX2 (no VNNI)" if self.avx2 else "no int8 SIMD"

    @property
    def runtimes(self) -> dict[str, str]:
        """What this class of CPU means for each runtime slimq deploys to."""
        return RUNTIME_NOTES[self.cpu_class]

    def to_dict(self) -> dict:
        return {**asdict(self), "cpu_class": self.cpu_class, "expected_speedup": self.expected_speedup,
                "runtimes": self.runtimes}

    def format(self) -> str:
        """`slimq cpu`: the class of CPU and, per runtime, what it means for INT8."""
        lines = [f"{self.model} ({self.cores} cores): {self.cpu_class}", f"  {self.expected_speedup}"]
        lines += [f"  {name}: {note}" for name, note in self.runtimes.items()]
        lines.append("  measure it on your model: slimq bench FP32.onnx INT8.onnx --backend auto")
        return "\n".join(lines)


RUNTIME_NOTES: dict[str, dict[str, str]] = {
    "AMX": {
        "onnxruntime": "int8 Conv/MatMul on VNNI and AMX tile kernels (MLAS); float islands and Q/DQ steps cost "
                       "as much as elsewhere, so small models gain less",
        "OpenVINO": "oneDNN's AMX int8 kernels, with Q/DQ and elementwise ops fused into them: usually the "
                    "fastest INT8 runtime here (ResNet-50: 4.84x vs 3.43x on onnxruntime, 1 thread)",
    },
    "AVX-512 VNNI": {
        "onnxruntime": "u8 x s8 VNNI kernels (vpdpbusd) for Conv/MatMul; depthwise convs and float islands "
                       "gain little or lose: check with the speed guard / slimq bench",
        "OpenVINO": "VNNI int8 kernels with fused Q/DQ and elementwise ops; often faster than onnxruntime",
    },
    "AVX-VNNI": {
        "onnxruntime": "u8 x s8 AVX-VNNI kernels (256-bit) for Conv/MatMul",
        "OpenVINO": "AVX-VNNI int8 kernels with fused Q/DQ and elementwise ops",
    },
    "AVX2 (no VNNI)": {
        "onnxruntime": "u8 x s8 via vpmaddubsw, which can saturate: slimq uses reduce_range (7-bit weights)",
        "OpenVINO": "int8 via AVX2 without VNNI: modest gains",
    },
    "ARM dot product": {
        "onnxruntime": "s8 dot-product kernels (sdot/udot); --target arm, and onnxruntime Mobile loads the .ort file",
        "OpenVINO": "ARM CPU plugin: int8 support depends on the build",
    },
    "no int8 SIMD": {
        "onnxruntime": "no int8 SIMD: INT8 may be slower than FP32 (the speed guard keeps such layers float)",
        "OpenVINO": "no int8 SIMD: expect no INT8 speed-up",
    },
}


def _cpu_flags() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model == platform.machine():
            model = val.strip()
        elif key in ("flags", "features"):
            flags |= set(val.split())
    return model, flags


def cpu_info() -> CpuInfo:
    """What the CPU offers for int8 inference (read from /proc/cpuinfo)."""
    model, f = _cpu_flags()
    return CpuInfo(model, os.cpu_count() or 1, "avx2" in f, "avx512f" in f,
                   bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & f), bool({"amx_int8", "amx_tile"} & f),
                   "asimddp" in f)
