"""Dynamic PTQ of a BERT-style encoder (6 layers, hidden 384; random weights), FP32 vs slimq vs onnxruntime.

Exports the encoder with torch.onnx.export(dynamo=True) into the cache folder, quantizes it with
``slimq.quantize_dynamic`` (weight-only int8, weight-only int4 group:128, dynamic-activation int8)
and, as a peer row, with ``onnxruntime.quantization.quantize_dynamic`` (QInt8 defaults). Then times every
model in one process at 1 thread, batch 1, sequence 128: runs are interleaved (FP32, INT8, ... in turn),
warmed up, and the median of many runs is reported. "cosine" is the cosine of the encoder's output
embeddings (last_hidden_state) vs FP32 on the timing inputs plus 7 more random sequences.

    .venv/bin/python benchmarks/bench_dynamic_bert.py [--runs 60] [--seq 128] [--threads 1] [--tiny]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimq.core.qmath import cosine
from slimq.dynamic.method import DynamicConfig, quantize_dynamic
from slimq.io.model import model_size_bytes
from slimq.runtime.session import Predictor

ARCH_VERSION = 1


@dataclass
class Row:
    name: str
    path: Path
    note: str = ""
    matmul_ratio: float | None = None
    median_ms: float = 0.0
    cos: float = 1.0


def _cache(arg: str | None) -> Path:
    base = Path(arg) if arg else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slimq" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    return base


def export(cache: Path, tiny: bool) -> Path:
    from slimq.zoo.bert import TINY_BERT, BertConfig, export_bert

    cfg = TINY_BERT if tiny else BertConfig()
    path = cache / f"bert_l{cfg.layers}_h{cfg.hidden}_v{ARCH_VERSION}.onnx"
    if not path.exists():
        t = time.perf_counter()
        export_bert(path, cfg)
        print(f"exported {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


def feeds(vocab: int, batch: int, seq: int, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64),
             "attention_mask": np.ones((batch, seq), np.int64)} for _ in range(n)]


def quantize_all(fp32: Path, cache: Path, peer: bool) -> list[Row]:
    rows = [Row("FP32", fp32)]
    for name, cfg in (("slimq weight-only int8", DynamicConfig()),
                      ("slimq weight-only int4 group:128", DynamicConfig(weight_bits=4)),
                      ("slimq dynamic-activation int8", DynamicConfig(mode="dynamic-activation"))):
        out = cache / (fp32.stem + "." + name.split(" ", 1)[1].replace(" ", "_").replace(":", "") + ".onnx")
        t = time.perf_counter()
        res = quantize_dynamic(fp32, cfg, out)
        mm = res.report.extra["weights"].get("MatMul", {})
        rows.append(Row(name, out, f"quantized in {time.perf_counter() - t:.0f} s"
                        + (f"; {len(res.demotions)} fallbacks" if res.demotions else ""), mm.get("ratio")))
    if peer:
        rows.append(_peer(fp32, cache))
    return rows


def _peer(fp32: Path, cache: Path) -> Row:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    out = cache / (fp32.stem + ".ort_dynamic.onnx")
    logging.getLogger().setLevel(logging.ERROR)
    ort_quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return Row("onnxruntime quantize_dynamic (peer)", out, "QInt8 weights, defaults")


def measure(rows: list[Row], bench: dict, checks: list[dict], runs: int, warmup: int, threads: int) -> None:
    preds = [Predictor(r.path, threads=threads) for r in rows]
    refs = [preds[0].run(f)[0] for f in [bench, *checks]]
    for r, p in zip(rows, preds):
        outs = [p.run(f)[0] for f in [bench, *checks]]
        r.cos = cosine(np.concatenate([o.ravel() for o in refs]), np.concatenate([o.ravel() for o in outs]))
    times = [[] for _ in rows]
    for i in range(warmup + runs):
        for t, p in zip(times, preds):
            start = time.perf_counter()
            p.run(bench)
            if i >= warmup:
                t.append(time.perf_counter() - start)
    for r, t in zip(rows, times):
        r.median_ms = float(np.median(t)) * 1e3


def table(rows: list[Row], header: str) -> str:
    fp32_size, fp32_ms = model_size_bytes(rows[0].path), rows[0].median_ms
    lines = [header, "",
             "| model | file MB | size vs FP32 | MatMul weights | embedding cosine | median ms | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = model_size_bytes(r.path)
        mm = f"{r.matmul_ratio:.3f}x" if r.matmul_ratio is not None else "-"
        lines.append(f"| {r.name} | {size / 1e6:.1f} | {size / fp32_size:.3f}x | {mm} | {r.cos:.5f} | "
                     f"{r.median_ms:.2f} | {fp32_ms / r.median_ms:.2f}x |")
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="folder for the exported and quantized models (default ~/.cache/slimq/bench)")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-peer", action="store_true", help="skip the onnxruntime.quantization peer row")
    ap.add_argument("--tiny", action="store_true", help="2-layer hidden-64 encoder (smoke test)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cache = _cache(args.cache)
    fp32 = export(cache, args.tiny)
    rows = quantize_all(fp32, cache, not args.no_peer)
    vocab = 1000 if args.tiny else 30522
    bench, *checks = feeds(vocab, args.batch, args.seq, 8)
    measure(rows, bench, checks, args.runs, args.warmup, args.threads)
    import onnxruntime

    from slimq.runtime.cpu import cpu_info

    cpu = cpu_info()
    print(table(rows, f"BERT-style encoder ({fp32.name}), batch {args.batch}, sequence {args.seq}, "
                      f"{args.threads} thread(s), median of {args.runs} interleaved runs; onnxruntime "
                      f"{onnxruntime.__version__}; CPU {cpu.model} (VNNI: {cpu.vnni})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
