"""`slimq quantize qat`: quantization-aware fine-tuning of a shipped Fashion-MNIST model, or of your own
PyTorch model (``--model module:factory`` or a ``.pt2`` program) on your data, optionally without labels
(``--distill``).

Importing this module needs no PyTorch; running the command does (``pip install slimq[qat]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from slimq.core.errors import ConfigError

EPILOG = """\
your model (no labels needed):
  slimq quantize qat --model mypkg.models:build --calib images/ [--train more_images/ --distill] \\
      --size 224,224 -o model.int8.onnx
  --model module:factory (called without arguments, run from the folder that holds the module) or a
  torch.export .pt2 program saved with a dynamic batch dimension. --calib/--train: image folders (with
  --size/--resize-short/--mean/--std) or .npy/.npz files or folders; --input-shape C,H,W when neither the
  model nor the data tell the size. Without --distill: prepare, calibrate, convert (no training).

shipped Fashion-MNIST models (--model fmnist_resnet | fmnist_mobilenet, or none): the YAML recipe, trained
with labels; flags override it (default recipe: the shipped slimq/recipes/qat_fmnist.yaml).

exit codes:
  0  written; Fashion-MNIST: QAT INT8 top-1 >= FP32 top-1 - 0.1 pt (onnxruntime, 10k test images)
  2  bad input or settings (nothing written): unknown recipe key or flag value, missing assets or data
  3  written, but Fashion-MNIST INT8 top-1 is more than 0.1 pt below FP32 / your model's report has warnings
"""

# flag -> QATRecipe field (type conversion by the dataclass' own validation after parsing)
_OVERRIDES = {
    "model": str, "variant": str, "target": str, "epochs": float, "lr": float, "batch_size": int,
    "freeze_bn_step": int, "freeze_observer_step": int, "train_limit": int, "calib_batches": int,
    "seed": int,
}


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser(
        "qat", help="quantization-aware training of your PyTorch model or a zoo model, exported to QDQ ONNX",
        description="Your model (--model module:factory or file.pt2, --calib data): prepare, calibrate and "
                    "convert, optionally with label-free distillation (--distill). A zoo model: load the shipped "
                    "FP32 weights, calibrate, fine-tune with labels, export QDQ ONNX and compare FP32 vs INT8 "
                    "top-1 on the Fashion-MNIST test set.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--recipe", help="QAT recipe YAML (default: the shipped qat_fmnist.yaml)")
    for name, kind in _OVERRIDES.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"override the recipe's {name}"
                       + (" (or your model: module:factory / file.pt2)" if name == "model" else ""))
    p.add_argument("--json", help="also write the results as JSON to this path")
    user = p.add_argument_group("your own model (--model module:factory or file.pt2)")
    user.add_argument("--calib", help="calibration data: image folder, .npy/.npz file or folder")
    user.add_argument("--train", help="unlabeled training data for --distill (default: the calibration data)")
    user.add_argument("--distill", action="store_true", help="label-free QAT: match the FP32 model's outputs")
    user.add_argument("--steps", type=int, help="distillation steps (default 300)")
    user.add_argument("--input-shape", help="model input shape without the batch, e.g. 3,224,224")
    user.add_argument("--size", help="image H,W for image folders")
    user.add_argument("--resize-short", type=int, help="resize the short side then center-crop (images)")
    user.add_argument("--mean", help="per-channel mean, e.g. 0.485,0.456,0.406")
    user.add_argument("--std", help="per-channel std")
    user.add_argument("--capture", choices=("auto", "fx", "export"), help="graph capture (default auto)")
    user.add_argument("--min-int8-mac-share", type=float, help="fail below this int8 MAC share (default 0.5)")
    user.add_argument("--no-speed-guard", action="store_true",
                      help="quantize every layer, even the op classes whose int8 form measures slower than float")
    p.set_defaults(func=run_qat)


def recipe_from_args(args: argparse.Namespace) -> Any:
    """The recipe file with the command-line overrides applied (validated)."""
    from slimq.qat.config import load_recipe

    recipe = load_recipe(args.recipe)
    changes = {name: getattr(args, name) for name in _OVERRIDES if getattr(args, name, None) is not None}
    return dataclasses.replace(recipe, **changes)


def format_result(result: dict[str, Any]) -> str:
    """Human-readable summary of :func:`slimq.qat.fmnist_recipe.run_qat_recipe`'s result."""
    return "\n".join([
        f"QAT {result['model']} ({result['variant']}, target {result['target']}): "
        f"{result['steps']} steps in {result['train_seconds']:.0f} s",
        f"  top-1 FP32 {100 * result['fp32_top1']:.2f} %  INT8 {100 * result['int8_top1']:.2f} %  "
        f"({result['delta_pt']:+.2f} pt)",
        f"  size {result['fp32_size_bytes'] / 1024:.0f} KiB -> {result['int8_size_bytes'] / 1024:.0f} KiB; "
        f"onnxruntime: {result['ort_qlinear_conv']} QLinearConv, {result['ort_float_conv']} float Conv; "
        f"ONNX vs PyTorch within one step: {100 * result['agreement_within_step']:.2f} %",
        f"  int8 share of MACs in onnxruntime: {100 * result['int8_mac_share']:.1f} %",
        *(f"  WARNING: {w}" for w in result["fidelity_warnings"]),
    ])


_RECIPE_ONLY = ("recipe", "epochs", "freeze_bn_step", "freeze_observer_step", "train_limit", "calib_batches", "json")
_USER_ONLY = ("calib", "train", "distill", "steps", "input_shape", "size", "resize_short", "mean", "std", "capture",
              "min_int8_mac_share", "no_speed_guard")


def _numbers(text: str | None, flag: str, kind: type = float) -> tuple[Any, ...] | None:
    if not text:
        return None
    try:
        values = tuple(kind(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f'{flag} expects comma-separated numbers, got "{text}".') from None
    if not values or any(v <= 0 for v in values if flag != "--mean"):
        raise ConfigError(f'{flag} expects positive numbers, got "{text}".')
    return values


def _preprocess(args: argparse.Namespace) -> Any:
    """A PreprocessSpec when preprocessing was asked for, else None (array data refuses one)."""
    from slimq.io.images import PreprocessSpec

    size = _numbers(args.size, "--size", int)
    if size is not None and len(size) != 2:
        raise ConfigError(f'--size expects H,W, got "{args.size}".')
    changes = {k: v for k, v in {"size": size, "resize_short": args.resize_short, "mean": _numbers(args.mean, "--mean"),
                                 "std": _numbers(args.std, "--std")}.items() if v is not None}
    return PreprocessSpec(**changes) if changes else None


def run_user_model(args: argparse.Namespace, out: Path) -> int:
    """QAT of a user model (module:factory or .pt2) on the given data; exit 3 when the report warns."""
    recipe_only = [f"--{k.replace('_', '-')}" for k in _RECIPE_ONLY if getattr(args, k, None) is not None]
    if recipe_only:
        raise ConfigError(f"{', '.join(recipe_only)} belong to the Fashion-MNIST recipe, not to --model {args.model}; "
                          f"for your model use --calib/--train/--distill/--steps/--lr/--batch-size.")
    if not args.calib:
        raise ConfigError("--model module:factory / .pt2 needs calibration data: --calib DIR_OR_FILE.")
    if args.train and not args.distill:
        raise ConfigError("--train data is only used with --distill (label-free training); add --distill.")
    try:
        from slimq.qat.config import QATConfig
        from slimq.qat.distillation import DistillConfig
        from slimq.qat.user_model import quantize_user_model
    except ModuleNotFoundError as exc:
        raise ConfigError(f"slimq quantize qat needs PyTorch ({exc.name} is missing): pip install 'slimq[qat]'.") from exc
    cfg = {k: getattr(args, k) for k in ("variant", "target", "capture", "min_int8_mac_share") if getattr(args, k)
           is not None}
    distill_cfg = None
    if args.distill:
        distill_cfg = DistillConfig(**{k: v for k, v in {"steps": args.steps, "lr": args.lr,
                                                           "batch_size": args.batch_size, "seed": args.seed}.items()
                                       if v is not None})
    result = quantize_user_model(args.model, args.calib, out, QATConfig(**cfg), train=args.train,
                                 distill_config=distill_cfg, input_shape=_numbers(args.input_shape, "--input-shape", int),
                                 preprocess=_preprocess(args), speed_guard=not args.no_speed_guard,
                                 log=lambda step, loss: print(f"distill step {step}: loss {loss:.5f}", flush=True))
    print(result.report.format())
    print(f"wrote {out} and {out.name}.report.json")
    return 3 if result.report.warnings else 0


def run_qat(args: argparse.Namespace) -> int:
    from slimq.io.atomic import write_text
    from slimq.io.model import check_output_path

    out = check_output_path(None, args.output)  # before training, not after it
    if args.json is not None:
        check_output_path(None, args.json, suffix=None, flag="--json", companions=())
    if args.model and (":" in args.model or args.model.lower().endswith(".pt2")):
        return run_user_model(args, out)
    used = [f"--{k.replace('_', '-')}" for k in _USER_ONLY if getattr(args, k, None) not in (None, False)]
    if used:
        raise ConfigError(f"{', '.join(used)} apply to your own model: give --model module:factory or a .pt2 file "
                          f"(the shipped Fashion-MNIST recipe trains with labels on its own data).")
    recipe = recipe_from_args(args)
    try:
        from slimq.qat.fmnist_recipe import run_qat_recipe
    except ModuleNotFoundError as exc:
        raise ConfigError(f"slimq quantize qat needs PyTorch ({exc.name} is missing): "
                          f"pip install 'slimq[qat]'.") from exc
    result = run_qat_recipe(recipe, out)
    print(format_result(result))
    print(f"wrote {out} and {out.name}.report.json")
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0 if result["delta_pt"] >= -0.1 else 3
