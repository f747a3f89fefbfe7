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

    def to_dict(self) -> dict:
        return {**asdict(self), "expected_speedup": self.expected_speedup}


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
