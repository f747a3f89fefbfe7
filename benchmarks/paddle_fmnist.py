"""A Paddle model quantized by slimq from its Paddle folder, beside Paddle's own INT8 (PaddleSlim).

The model: ``scripts/train_paddle_fmnist.py OUT_DIR`` (a small CNN trained on Fashion-MNIST with Paddle,
saved as a Paddle inference model). slimq converts the folder (paddle2onnx in a child process, checked
against paddle.inference on the calibration samples) and quantizes it with its defaults; Paddle's route is
PaddleSlim ``quant_post_static`` (hist, 256 samples) run by ``paddle.inference`` with oneDNN int8. Both
calibrate on the same 256 training images; top-1 on the 10 000 test images; speed at 1 thread, batch 1, in
process CPU time, interleaved per runtime.

Needs a Python with paddlepaddle 2.6.2 + paddle2onnx 1.3.1 (+ paddleslim 2.6.0 for Paddle's INT8):
``pip install 'slimq[paddle]' paddleslim==2.6.0`` in this venv, or a separate venv named by
``$SLIMQ_PADDLE_PYTHON`` (or --paddle-python).

Usage: python benchmarks/paddle_fmnist.py MODEL_DIR [--paddle-python PY] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from slimq.core.config import StaticConfig
from slimq.io.fashion_mnist import load_fashion_mnist, preprocess
from slimq.io.paddle_import import PADDLE_ENV, find_paddle_python
from slimq.io.source import load_source
from slimq.runtime.select import interleaved_ms
from slimq.runtime.session import Predictor
from slimq.static.method import quantize_static

PADDLE_SIDE = textwrap.dedent("""
    # Runs in the Paddle interpreter: PaddleSlim post-training quantization, then FP32 and INT8 with
    # paddle.inference (oneDNN int8 for the quantized model): top-1 on the test set and CPU ms per image.
    import json, sys, time
    import numpy as np
    import paddle
    model_dir, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
    data = np.load(work + "/data.npz")
    calib, test, labels = data["calib"], data["test"], data["labels"]
    result = {"paddle": paddle.__version__}
    try:

        from paddleslim.quant import quant_post_static
        paddle.enable_static()
        exe = paddle.static.Executor(paddle.CPUPlace())
        class Batches(paddle.io.DataLoader):  # paddle 2.6's PTQ wants an io.DataLoader it can call for feeds
            def __init__(self, feeds):
                self.feeds = feeds
            def __call__(self):
                return iter(self.feeds)
            def __len__(self):
                return len(self.feeds)
        loader = Batches([{"x": calib[i:i + 32]} for i in range(0, len(calib), 32)])
        quant_post_static(exe, model_dir, work + "/int8", data_loader=loader, model_filename="inference.pdmodel",
                          params_filename="inference.pdiparams", batch_nums=len(calib) // 32, algo="hist",
                          hist_percent=0.9999, quantizable_op_type=["conv2d", "depthwise_conv2d", "mul", "matmul",
                                                                     "matmul_v2"], onnx_format=False)
        import importlib.metadata
        result["paddleslim"] = importlib.metadata.version("paddleslim")
        paddle.disable_static()
    except Exception as e:  # PaddleSlim missing or failing: FP32 only
        result["paddleslim_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    import paddle.inference as pi
    def predictor(prefix, int8):
        cfg = pi.Config(prefix + "/inference.pdmodel" if not int8 else prefix + "/model.pdmodel",
                        prefix + "/inference.pdiparams" if not int8 else prefix + "/model.pdiparams")
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(1)
        cfg.enable_mkldnn()
        if int8:
            cfg.enable_mkldnn_int8()
        cfg.disable_glog_info()
        return pi.create_predictor(cfg)
    def run(p, x):
        h = p.get_input_handle(p.get_input_names()[0]); h.reshape(list(x.shape)); h.copy_from_cpu(x); p.run()
        return p.get_output_handle(p.get_output_names()[0]).copy_to_cpu()
    for name, prefix, int8 in (("fp32", model_dir, False), ("int8", work + "/int8", True)):
        if int8 and "paddleslim" not in result:
            continue
        try:
            p = predictor(prefix, int8)
            preds = np.concatenate([run(p, test[i:i + 500]) for i in range(0, len(test), 500)])
            one = test[:1]
            for _ in range(20):
                run(p, one)
            ts = []
            for _ in range(200):
                c = time.process_time(); run(p, one); ts.append(time.process_time() - c)
            result[name] = {"top1": float((preds.argmax(1) == labels).mean() * 100), "ms": float(np.median(ts) * 1e3)}
        except Exception as e:
            result[name + "_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    json.dump(result, open(out, "w"))
""")


def top1(model, x: np.ndarray, y: np.ndarray) -> float:
    name = model.graph.input[0].name
    return float((Predictor(model, threads="all").run({name: x})[0].argmax(1) == y).mean() * 100)


def paddle_side(python: str, model_dir: str, calib: np.ndarray, test: np.ndarray, labels: np.ndarray) -> dict:
    with tempfile.TemporaryDirectory(prefix="slimq-paddleslim-") as work:
        np.savez(f"{work}/data.npz", calib=calib, test=test, labels=labels)
        r = subprocess.run([python, "-c", PADDLE_SIDE, model_dir, work, f"{work}/out.json"], capture_output=True,
                           text=True)
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout)[-800:]}
        return json.loads(Path(f"{work}/out.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--paddle-python")
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--json")
    args = ap.parse_args()
    python = find_paddle_python(args.paddle_python)
    train, _ = load_fashion_mnist("train")
    test, labels = load_fashion_mnist("test")
    calib, test = preprocess(train[np.random.default_rng(0).permutation(len(train))[:args.calib]]), preprocess(test)
    os.environ.setdefault(PADDLE_ENV, python)
    res = quantize_static(args.model_dir, calib, StaticConfig(show_progress=False))
    fp32 = load_source(args.model_dir, calib[:16]).model
    feed = {fp32.graph.input[0].name: test[:1]}
    ms = interleaved_ms([Predictor(m, threads=1).run for m in (fp32, res.model)], feed, rounds=3, min_time=1.0,
                        clock="cpu")
    out = {"slimq": {"fp32_top1": top1(fp32, test, labels), "int8_top1": top1(res.model, test, labels),
                     "fp32_ms": ms[0], "int8_ms": ms[1], "int8_mac_share": res.report.int8_mac_share,
                     "notes": list(res.report.notes)},
           "paddle": paddle_side(python, args.model_dir, calib, test, labels)}
    s = out["slimq"]
    print(f"slimq (onnxruntime): FP32 top-1 {s['fp32_top1']:.2f} %, INT8 {s['int8_top1']:.2f} % "
          f"({s['int8_top1'] - s['fp32_top1']:+.2f} pt); {s['fp32_ms']:.3f} -> {s['int8_ms']:.3f} ms "
          f"({s['fp32_ms'] / s['int8_ms']:.2f}x)")
    for n in s["notes"]:
        print(f"  {n}")
    p = out["paddle"]
    print(f"Paddle: {json.dumps(p)}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
