"""Train a small CNN on Fashion-MNIST with PaddlePaddle and save it as a Paddle inference model.

The model slimq's Paddle route is tested on: ``slimq quantize static OUT_DIR --calib ...`` converts the
folder with paddle2onnx, checks the FP32 ONNX against paddle.inference and quantizes it
(benchmarks/paddle_fmnist.py runs the whole comparison, PaddleSlim's own INT8 included).

Runs in a Python that has paddlepaddle (``pip install 'slimq[paddle]'``; tested with paddle 2.6.2) and
slimq's sources on the path (for the Fashion-MNIST loader). The network is built with the static-graph
API: ``paddle.jit.save``'s dygraph-to-static step crashed (SIGSEGV in inflateReset2) with paddle 2.6.2 on
the machine this was written on.

Usage: python scripts/train_paddle_fmnist.py OUT_DIR [--epochs 3] [--seed 0]
Writes OUT_DIR/inference.pdmodel + inference.pdiparams (input "x": N x 1 x 28 x 28, normalised like
slimq.io.fashion_mnist.preprocess; output: 10 logits) and prints the FP32 test top-1.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from slimq.io.fashion_mnist import load_fashion_mnist, preprocess


def build(paddle, image):
    """conv-BN-ReLU x3 (16, 32, 64 channels, two 2x2 max pools), flatten, linear: 55 k parameters."""
    nn = paddle.nn
    net = nn.Sequential(
        nn.Conv2D(1, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(16, 32, 3, padding=1), nn.BatchNorm2D(32), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(32, 64, 3, padding=1), nn.BatchNorm2D(64), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 10))
    return net(image)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder for inference.pdmodel / inference.pdiparams")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import paddle

    paddle.enable_static()
    paddle.seed(args.seed)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    train_x, test_x = preprocess(train_x), preprocess(test_x)
    main_prog, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main_prog, startup):
        image = paddle.static.data("x", [None, 1, 28, 28], "float32")
        label = paddle.static.data("label", [None, 1], "int64")
        logits = build(paddle, image)
        test_prog = main_prog.clone(for_test=True)
        loss = paddle.nn.functional.cross_entropy(logits, label)
        paddle.optimizer.Adam(learning_rate=2e-3).minimize(loss)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = rng.permutation(len(train_x))
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            exe.run(main_prog, feed={"x": train_x[idx], "label": train_y[idx, None].astype(np.int64)},
                    fetch_list=[loss])
        print(f"epoch {epoch + 1}/{args.epochs} done ({time.perf_counter() - start:.0f} s)", flush=True)
    preds = np.concatenate([exe.run(test_prog, feed={"x": test_x[i:i + 1000]}, fetch_list=[logits])[0]
                            for i in range(0, len(test_x), 1000)])
    print(f"FP32 test top-1: {(preds.argmax(1) == test_y).mean() * 100:.2f} % on {len(test_y)} images")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paddle.static.save_inference_model(str(out / "inference"), [image], [logits], exe, program=test_prog)
    print(f"wrote {out / 'inference.pdmodel'} and {out / 'inference.pdiparams'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
