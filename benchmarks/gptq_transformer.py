"""GPTQ vs round-to-nearest for int4 weight-only MatMul weights of a real transformer encoder, side by side.

Model: all-MiniLM-L6-v2 (sentence-transformers; 6 layers, hidden 384), exported to ONNX by
/work/scratch/models/export_minilm.py (``out/minilm_l6.onnx``). Both variants are built by slimq's
weight-only rewrite (slimq.dynamic.graph.apply_decisions) with the same decisions: every MatMul
weight int4 symmetric, group-wise along the reduction axis (DequantizeLinear-21 with block_size,
packed INT4), embedding tables int8 per row. The scales are identical (abs-max per group); only
the integers differ: RTN rounds to nearest, GPTQ (slimq.dynamic.gptq, act_order, damp 0.01)
rounds to minimise each layer's output error on the calibration sentences. Same file size.

Sentences: docstrings of standard-library modules (benchmarks/text_data.py); 128 calibration and
64 held-out sentences from disjoint modules. Cosine: per sentence, the cosine of last_hidden_state
(all tokens) and of the mean-pooled sentence embedding vs FP32; mean and minimum over the held-out set.

Usage: python benchmarks/gptq_transformer.py [--model out/minilm_l6.onnx] [--vocab vocab.txt] [--groups 32 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from text_data import CALIB_MODULES, DEFAULT_VOCAB, HELDOUT_MODULES, WordPiece, feeds, sentences

from slimq.core import qmath
from slimq.dynamic.gptq import GPTQConfig, PrecomputedWeights, gptq_weights
from slimq.dynamic.graph import Choice, Decision, WeightCache, apply_decisions, find_candidates
from slimq.dynamic.method import DynamicConfig, weight_only_format
from slimq.graph.passes import gemm_to_matmul, preprocess
from slimq.io.model import model_size_bytes, save_model, upgrade_opset
from slimq.runtime.session import Predictor

DEFAULT_MODEL = Path("/work/scratch/models/out/minilm_l6.onnx")


def prepare(path: Path) -> onnx.ModelProto:
    """The graph slimq's weight-only rewrite edits: preprocessed, opset 21, Gemm as MatMul."""
    irm = ir.from_proto(upgrade_opset(preprocess(onnx.load(str(path))), 21))
    gemm_to_matmul(irm)
    return ir.to_proto(irm)


def decisions(work: onnx.ModelProto, group: int) -> list[Decision]:
    cfg = DynamicConfig(weight_bits=4, granularity=f"group:{group}")
    cands, _ = find_candidates(ir.from_proto(work).graph)
    return [Decision(c, Choice.WEIGHT_ONLY, *weight_only_format(c, cfg)) for c in cands]


def agreement(model: onnx.ModelProto, test: list[dict], ref: list[np.ndarray]) -> dict[str, float]:
    p = Predictor(model, threads=2)
    outs = [p.run(f)[0] for f in test]
    tok = [qmath.cosine(a, b) for a, b in zip(ref, outs)]
    emb = [qmath.cosine(a.mean(axis=1), b.mean(axis=1)) for a, b in zip(ref, outs)]
    return {"token_mean": float(np.mean(tok)), "token_min": float(np.min(tok)),
            "emb_mean": float(np.mean(emb)), "emb_min": float(np.min(emb))}


def size_mb(model: onnx.ModelProto) -> float:
    with tempfile.TemporaryDirectory() as d:
        return model_size_bytes(save_model(model, Path(d) / "m.onnx")) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB)
    ap.add_argument("--groups", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--heldout", type=int, default=64)
    args = ap.parse_args()
    tok = WordPiece(args.vocab)
    calib = feeds(tok, sentences(CALIB_MODULES, args.calib))
    test = feeds(tok, sentences(HELDOUT_MODULES, args.heldout))
    work = prepare(args.model)
    ref = [Predictor(work, threads=2).run(f)[0] for f in test]
    print(f"{args.model.name}: {len(calib)} calibration / {len(test)} held-out sentences; FP32 {size_mb(work):.1f} MB")
    rows = []
    for g in args.groups:
        dec = decisions(work, g)
        fmts = {d.candidate.weight: d.fmt for d in dec if d.candidate.op_type == "MatMul"}
        t = time.perf_counter()
        gw = gptq_weights(work, calib, fmts, GPTQConfig(batch_size=1))
        secs = time.perf_counter() - t
        for name, cache in (("RTN", WeightCache()), ("GPTQ", PrecomputedWeights(gw, fmts))):
            m = apply_decisions(work, dec, cache)
            rows.append({"group": g, "method": name, "size": size_mb(m), **agreement(m, test, ref),
                         "seconds": secs if name == "GPTQ" else 0.0, "weights": len(fmts)})
            print(rows[-1], flush=True)
    print("\n| int4 weight-only | MatMul weights | file MB | token cosine mean | min | sentence-embedding cosine "
          "mean | min | GPTQ time |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = f"{r['seconds']:.0f} s" if r["method"] == "GPTQ" else "-"
        print(f"| group:{r['group']} {r['method']} | {r['weights']} | {r['size']:.1f} | {r['token_mean']:.4f} | "
              f"{r['token_min']:.4f} | {r['emb_mean']:.5f} | {r['emb_min']:.5f} | {t} |")
    pairs = [(a, b) for a, b in zip(rows[::2], rows[1::2])]
    ok = all(b["token_mean"] > a["token_mean"] for a, b in pairs)
    print(f"\ngoal (GPTQ cosine better than RTN at the same size, every group size): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
