"""Large and streaming cases (issue 10): a model over 2 GB through external data, and the peak memory of
calibrating a BERT-base-sized encoder. Each case runs in its own child process so its peak RSS is its own.

  python scripts/large_cases.py roundtrip [--gb 2.2]   # synthetic >2 GB MatMul chain: external data in,
                                                      # dynamic and static PTQ, loads and agrees with FP32
  python scripts/large_cases.py bert-calib [--samples 64 --seq 128]   # 12 layers, hidden 768: peak RSS
  python scripts/large_cases.py all

Prints the sizes, the outputs' agreement and every child's peak RSS (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _big_model(folder: Path, gb: float) -> Path:
    """x -> MatMul(W_i) -> Relu ... : square float32 weights adding up to `gb` GB, saved with external data."""
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as nh

    n = 8192
    layers = max(1, int(gb * 2**30 // (n * n * 4)) + 1)
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)).astype(np.float32)
        inits.append(nh.from_array(w, f"w{i}"))
        nodes.append(oh.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}" if i == layers - 1 else f"r{i}"
        if i < layers - 1:
            nodes.append(oh.make_node("Relu", [f"h{i}"], [x], name=f"relu{i}"))
    graph = oh.make_graph(nodes, "big", [oh.make_tensor_value_info("x", 1, ["N", n])],
                          [oh.make_tensor_value_info(x, 1, ["N", n])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    path = folder / "big.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="big.onnx.data", size_threshold=1024)
    return path


def roundtrip(gb: float) -> dict:
    import onnx

    import slimq
    from slimq.io.model import model_size_bytes
    from slimq.runtime.session import predictor

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="slimq-large-", dir=str(Path.home())) as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        src = _big_model(folder, gb)
        out["fp32_bytes"] = model_size_bytes(src)
        out["build_s"] = round(time.perf_counter() - t, 1)
        x = np.random.default_rng(1).standard_normal((4, 8192)).astype(np.float32)
        ref = predictor(str(src), threads="all").run({"x": x})[0]
        for name, cfg, data in (("dynamic", slimq.DynamicConfig(external_data=True), None),
                                ("static", slimq.StaticConfig(holdout=2, max_samples=8, show_progress=False), x.repeat(3, 0))):
            t = time.perf_counter()
            dest = folder / f"big.{name}.onnx"
            res = slimq.quantize(str(src), cfg, data, dest)
            got = predictor(str(dest), threads="all").run({"x": x})[0]
            cos = float((ref * got).sum() / np.sqrt((ref * ref).sum() * (got * got).sum()))
            onnx.checker.check_model(str(dest))
            out[name] = {"bytes": model_size_bytes(dest), "external_data": (folder / f"{dest.name}.data").exists(),
                         "cosine": round(cos, 6), "int8_mac_share": round(res.report.int8_mac_share, 4),
                         "seconds": round(time.perf_counter() - t, 1)}
        out["input_unchanged"] = model_size_bytes(src) == out["fp32_bytes"]
    out["peak_rss_gb"] = round(_rss_gb(), 2)
    return out


def bert_export(path: str) -> dict:
    from slimq.zoo.bert import BertConfig, export_bert

    export_bert(Path(path), BertConfig(hidden=768, layers=12, heads=12, intermediate=3072))
    return {"export_peak_rss_gb": round(_rss_gb(), 2)}


def bert_calib(samples: int, seq: int, path: str) -> dict:
    """Quantize the exported BERT-base in a process of its own, so that its peak RSS is slimq's alone."""
    import slimq

    rng = np.random.default_rng(0)
    data = {"input_ids": rng.integers(1000, 30522, (samples, seq)).astype(np.int64),
            "attention_mask": np.ones((samples, seq), np.int64)}
    t = time.perf_counter()
    res = slimq.quantize(path, slimq.StaticConfig(show_progress=False, max_samples=samples, holdout=8), data)
    return {"model": "BERT-base shape (12 layers, hidden 768, FFN 3072), random weights",
            "fp32_mb": round(Path(path).stat().st_size / 2**20),
            "calibration": f"{res.report.details['calibration']['samples']} samples x {seq} tokens",
            "memory_budget_mb": slimq.StaticConfig().memory_budget_mb,
            "seconds": round(time.perf_counter() - t, 1), "peak_rss_gb": round(_rss_gb(), 2),
            "int8_mac_share": round(res.report.int8_mac_share, 4)}


def _bert_case(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="slimq-bert-") as tmp:
        args.path = str(Path(tmp) / "bert_base.onnx")
        exported = _child("bert-export", args)
        return exported if "error" in exported else {**_child("bert-calib", args), **exported}


def _child(case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, case, "--child", "--gb", str(args.gb), "--samples", str(args.samples),
           "--seq", str(args.seq), "--path", args.path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout)[-2000:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=("roundtrip", "bert-calib", "bert-export", "all"))
    ap.add_argument("--path", default="", help=argparse.SUPPRESS)
    ap.add_argument("--gb", type=float, default=2.2)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = (roundtrip(args.gb) if args.case == "roundtrip" else bert_export(args.path) if args.case == "bert-export"
                  else bert_calib(args.samples, args.seq, args.path))
        print(json.dumps(result))
        return 0
    for case in (("roundtrip", "bert-calib") if args.case == "all" else (args.case,)):
        print(case, json.dumps(_bert_case(args) if case == "bert-calib" else _child(case, args), indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
