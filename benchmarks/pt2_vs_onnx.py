"""PyTorch in: `slimq quantize static model.pt2` against the ONNX route, on the shipped models.

For the two Fashion-MNIST CNNs (trained weights from slimq's assets) and the BERT-style zoo encoder
(slimq.zoo.bert, 6 layers, hidden 384, random weights), the same calibration data goes through

* the ONNX route: the shipped .onnx (CNNs) or ``export_bert`` (BERT) -> ``slimq quantize static``;
* the PyTorch route: ``torch.export.export`` + ``torch.export.save`` -> ``slimq quantize static model.pt2``
  (slimq exports it with the dynamo exporter and checks the FP32 ONNX against PyTorch first).

Accuracy: CNNs top-1 on the 10 000 test images; BERT (no labels) cosine of the INT8 last hidden state to
PyTorch FP32 on 64 held-out token batches. Usage: python benchmarks/pt2_vs_onnx.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from slimq.cli.main import main as slimq
from slimq.io.fashion_mnist import load_fashion_mnist, preprocess
from slimq.runtime.session import Predictor
from slimq.zoo import asset_path
from slimq.zoo.bert import BertConfig, build_bert, example_inputs, export_bert
from slimq.zoo.fmnist import build_model

BATCH = torch.export.Dim("batch", min=1, max=4096)
FLAGS = ["--no-speed-guard", "--no-runtime-compare"]  # accuracy only here; speed is benchmarks/speed_guard.py


def quantize(model: Path, calib: Path, out: Path) -> onnx.ModelProto:
    code = slimq(["quantize", "static", str(model), "--calib", str(calib), "-o", str(out), *FLAGS])
    if code not in (0, 3):
        raise SystemExit(f"slimq exited {code} on {model}")
    return onnx.load(str(out))


def fmnist(name: str, tmp: Path) -> dict:
    model = build_model(name)
    model.load_state_dict(torch.load(asset_path(name, ".pt"), weights_only=True))
    pt2 = tmp / f"{name}.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: BATCH},)),
                      pt2)
    train, _ = load_fashion_mnist("train")
    test, labels = load_fashion_mnist("test")
    np.save(tmp / "calib.npy", preprocess(train[np.random.default_rng(0).permutation(len(train))[:256]]))
    x = preprocess(test)
    out = {}
    for route, src in (("onnx", asset_path(name)), ("pt2", pt2)):
        q = quantize(Path(src), tmp / "calib.npy", tmp / f"{name}.{route}.int8.onnx")
        pred = Predictor(q, threads="all").run({q.graph.input[0].name: x})[0].argmax(1)
        out[route] = float((pred == labels).mean() * 100)
    with torch.no_grad():
        out["fp32"] = float((model(torch.from_numpy(x)).argmax(1).numpy() == labels).mean() * 100)
    return out


def bert(tmp: Path) -> dict:
    cfg = BertConfig()
    model = build_bert(cfg)
    seq = torch.export.Dim("sequence", min=2, max=cfg.max_position)
    args = example_inputs(cfg, batch=2, seq=16)
    dyn = ({0: BATCH, 1: seq}, {0: BATCH, 1: seq})
    torch.export.save(torch.export.export(model, args, dynamic_shapes=dyn), tmp / "bert.pt2")
    export_bert(tmp / "bert.onnx", cfg)

    def tokens(n: int, seed: int) -> dict[str, np.ndarray]:
        ids, mask = example_inputs(cfg, batch=n, seq=32, seed=seed)
        return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

    np.savez(tmp / "bert_calib.npz", **tokens(128, 1))
    held = tokens(64, 2)
    with torch.no_grad():
        ref = model(torch.from_numpy(held["input_ids"]), torch.from_numpy(held["attention_mask"]))[0].numpy()
    out = {}
    for route, src in (("onnx", tmp / "bert.onnx"), ("pt2", tmp / "bert.pt2")):
        q = quantize(src, tmp / "bert_calib.npz", tmp / f"bert.{route}.int8.onnx")
        y = Predictor(q, threads="all").run(held)[0]
        cos = (y * ref).sum(-1) / np.linalg.norm(y, axis=-1) / np.linalg.norm(ref, axis=-1)
        out[route] = {"mean_token_cosine": float(cos.mean()), "min_token_cosine": float(cos.min())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="slimq-pt2-") as d:
        tmp = Path(d)
        results = {name: fmnist(name, tmp) for name in ("fmnist_resnet", "fmnist_mobilenet")}
        results["bert"] = bert(tmp)
    for name, r in results.items():
        print(name, json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
