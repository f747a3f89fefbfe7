"""Worker for tests/test_qat_ddp.py: QAT under DDP on CPU (gloo), started by torchrun.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_qat_worker.py OUT_DIR
Each rank trains on different data (rank-dependent scale, so unsynchronised observers would
differ) with ``broadcast_buffers=False`` (so DDP does not paper over missing synchronisation)
and saves its scales and state_dict to OUT_DIR/rank{R}.pt for the test to compare.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import slimq.qat as qat
from slimq.qat.modules import QATConv
from slimq.qat.testing_models import build, teacher_labels


def batches(gen: torch.Generator, rank: int, n: int) -> list[torch.Tensor]:
    return [torch.randn(8, 1, 16, 16, generator=gen) * (1.0 + rank) for _ in range(n)]


def run_variant(variant: str, rank: int, out_dir: Path) -> dict:
    config = qat.QATConfig(variant=variant, freeze_bn_step=4, freeze_observer_step=5)
    qmodel = qat.prepare(build("resnet"), torch.randn(2, 1, 16, 16), config)
    gen = torch.Generator().manual_seed(100 + rank)
    qat.calibrate(qmodel, batches(gen, rank, 2))
    with warnings.catch_warnings():  # broadcast_buffers=False: buffers not synced even at init
        warnings.simplefilter("ignore", FutureWarning)
        ddp = DistributedDataParallel(qmodel, broadcast_buffers=False)
    opt = torch.optim.SGD(qat.param_groups(ddp, lr=0.01), momentum=0.9)
    ddp.train()
    for x in batches(gen, rank, 6):
        y = teacher_labels(x)
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    weight_scales = {
        name: m.weight_quant.current_scale(m.folded()[0])
        for name, m in qmodel.net.named_modules() if isinstance(m, QATConv)
    }
    if rank == 0:
        qat.convert(ddp, out_dir / f"{variant}.onnx")
    return {
        "act_scales": {name: q.current_scale() for name, q in qmodel.quantizers()},
        "weight_scales": weight_scales,
        "state_dict": qmodel.state_dict(),
        "step": int(qmodel.step),
        "bn_frozen": [bool(m.bn_frozen) for m in qmodel.net.modules() if isinstance(m, QATConv)],
    }


def run_distill(rank: int) -> dict:
    """Label-free distillation: calibration (hist + bias correction) on rank-dependent data, then
    ``qat.distill`` on data every rank holds in full (each rank trains on its own slice of each batch)."""
    qmodel = qat.prepare(build("mobilenet"), torch.randn(2, 1, 16, 16))
    gen = torch.Generator().manual_seed(200 + rank)
    qat.calibrate(qmodel, batches(gen, rank, 2), algo="hist", bias_correction=True)
    calibrated = {k: v.clone() for k, v in qmodel.state_dict().items()}
    shared = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    result = qat.distill(qmodel, shared, config=qat.DistillConfig(steps=4, batch_size=8, lr=1e-3))
    changed = [k for k, v in qmodel.state_dict().items() if not torch.equal(v, calibrated[k])]
    return {"state_dict": qmodel.state_dict(), "act_scales": {n: q.current_scale() for n, q in qmodel.quantizers()},
            "losses": result.losses, "changed": changed}


def main() -> None:
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    result: dict = {v: run_variant(v, rank, out_dir) for v in ("ste", "pact", "lsq")}
    result["distill"] = run_distill(rank)
    result["world_size"] = dist.get_world_size()
    torch.save(result, out_dir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
