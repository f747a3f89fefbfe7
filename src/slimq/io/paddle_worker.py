"""Child-process worker for Paddle imports: runs in the interpreter that has paddlepaddle + paddle2onnx.

It imports nothing from slimq (the Paddle venv may not have slimq installed), only the standard library,
numpy, paddle and paddle2onnx. Two commands:

``convert MODEL PARAMS OUT.onnx OPSET``  paddle2onnx.export (a failed export ends the process, hence a child);
``infer MODEL PARAMS FEEDS.npz OUT.npz``  paddle.inference on each sample; keys ``"<i>/<name>"`` in both files.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import numpy as np


def convert(model: str, params: str, out: str, opset: str) -> int:
    import paddle2onnx

    kw: dict[str, object] = {"opset_version": int(opset), "auto_upgrade_opset": True, "enable_onnx_checker": True}
    if "optimize_tool" in inspect.signature(paddle2onnx.export).parameters:  # paddle2onnx 2.x
        kw["optimize_tool"] = "onnxoptimizer"  # the default, polygraphy, pip-installs packages while converting
    paddle2onnx.export(model, params, out, **kw)
    return 0


def _samples(path: str) -> dict[int, dict[str, np.ndarray]]:
    out: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            i, name = key.split("/", 1)
            out.setdefault(int(i), {})[name] = z[key]
    return out


def infer(model: str, params: str, feeds: str, out: str) -> int:
    import paddle
    import paddle.inference as pi
    import paddle2onnx

    cfg = pi.Config(model, params)
    cfg.disable_gpu()
    cfg.switch_ir_optim(False)  # the program as saved, no fusion passes: the cleanest reference
    cfg.disable_glog_info()
    cfg.set_cpu_math_library_num_threads(1)
    predictor = pi.create_predictor(cfg)
    results: dict[str, np.ndarray] = {}
    for i, sample in sorted(_samples(feeds).items()):
        for name, array in sample.items():
            handle = predictor.get_input_handle(name)
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(np.ascontiguousarray(array))
        predictor.run()
        for k, name in enumerate(predictor.get_output_names()):
            results[f"{i}/{k:03d}"] = predictor.get_output_handle(name).copy_to_cpu()
    np.savez(out, **results)  # type: ignore[arg-type]  # numpy's stub reserves the keyword allow_pickle
    print(f"paddle {paddle.__version__}, paddle2onnx {paddle2onnx.__version__}")
    return 0


def versions() -> int:
    import paddle
    import paddle2onnx

    print(f"paddle {paddle.__version__}, paddle2onnx {paddle2onnx.__version__}")
    return 0


def main(argv: list[str]) -> int:
    commands: dict[str, Callable[..., int]] = {"convert": convert, "infer": infer, "versions": versions}
    if not argv or argv[0] not in commands:
        print(f"usage: paddle_worker.py {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
