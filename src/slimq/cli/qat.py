"""`slimq quantize qat`: quantization-aware fine-tuning of a shipped Fashion-MNIST model.

Importing this module needs no PyTorch; running the command does (``pip install slimq[qat]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from slimq.core.errors import ConfigError

EPILOG = """\
exit codes:
  0  written; QAT INT8 top-1 >= FP32 top-1 - 0.1 pt (onnxruntime, 10k test images)
  2  bad input or settings (nothing written): unknown recipe key or flag value, missing assets
  3  written, but INT8 top-1 is more than 0.1 pt below FP32

Flags override the recipe (default: the shipped slimq/recipes/qat_fmnist.yaml).
"""

# flag -> QATRecipe field (type conversion by the dataclass' own validation after parsing)
_OVERRIDES = {
    "model": str, "variant": str, "target": str, "epochs": float, "lr": float, "batch_size": int,
    "freeze_bn_step": int, "freeze_observer_step": int, "train_limit": int, "calib_batches": int,
    "seed": int,
}


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser(
        "qat", help="quantization-aware fine-tuning of a zoo model (PyTorch), exported to QDQ ONNX",
        description="Load the shipped FP32 weights, calibrate, fine-tune with fake quantization, export "
                    "QDQ ONNX and compare FP32 vs INT8 top-1 on the Fashion-MNIST test set.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--recipe", help="QAT recipe YAML (default: the shipped qat_fmnist.yaml)")
    for name, kind in _OVERRIDES.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"override the recipe's {name}")
    p.add_argument("--json", help="also write the results as JSON to this path")
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


def run_qat(args: argparse.Namespace) -> int:
    from slimq.io.atomic import write_text
    from slimq.io.model import check_output_path

    out = check_output_path(None, args.output)  # before training, not after it
    if args.json is not None:
        check_output_path(None, args.json, suffix=None, flag="--json", companions=())
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
