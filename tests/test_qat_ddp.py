"""QAT under DistributedDataParallel: 2 CPU processes (gloo) started with torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

import slimq.qat as qat  # noqa: E402

WORKER = Path(__file__).with_name("ddp_qat_worker.py")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_rank_ddp_keeps_scales_bit_identical(tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    for variant in ("ste", "pact", "lsq"):
        r0, r1 = ranks[0][variant], ranks[1][variant]
        assert r0["step"] == r1["step"] == 6
        assert all(r0["bn_frozen"])  # freeze_bn_step=4 reached on both ranks
        assert r0["act_scales"].keys() == r1["act_scales"].keys() and r0["act_scales"]
        for name, scale in r0["act_scales"].items():
            assert torch.equal(scale, r1["act_scales"][name]), (variant, name)
        for name, scale in r0["weight_scales"].items():
            assert torch.equal(scale, r1["weight_scales"][name]), (variant, name)
        differing = [k for k, v in r0["state_dict"].items() if not torch.equal(v, r1["state_dict"][k])]
        assert differing == [], (variant, differing)
        onnx_path = tmp_path / f"{variant}.onnx"
        assert onnx_path.is_file()
        ops = qat.ort_optimized_ops(onnx_path)
        assert ops["com.microsoft:QLinearConv"] == 5
    d0, d1 = ranks[0]["distill"], ranks[1]["distill"]
    assert d0["changed"] and d0["act_scales"]  # distillation trained the weights
    assert d0["losses"] != d1["losses"]  # each rank trains on its own slice of every batch ...
    for name, scale in d0["act_scales"].items():  # ... yet calibration and training stay in sync
        assert torch.equal(scale, d1["act_scales"][name]), name
    differing = [k for k, v in d0["state_dict"].items() if not torch.equal(v, d1["state_dict"][k])]
    assert differing == [], differing
