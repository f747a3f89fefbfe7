"""`slimq quantize dynamic`: weight-only or dynamic-activation quantization without calibration data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from slimq.cli.budget import DYNAMIC_BUDGET_HELP, add_budget_flags, budget_from_args
from slimq.core.config import SkipSpec
from slimq.core.errors import ConfigError, unknown_choice

if TYPE_CHECKING:
    from slimq.dynamic.method import DynamicConfig

EPILOG = """\
exit codes:
  0  written; the quantized model agrees with FP32 (worst output cosine >= --min-cosine)
  2  bad input or settings (nothing written): unreadable model, unknown flag value, no quantizable
     weights, onnxruntime too old for int4 / group-wise weights, ...
  3  written with warnings: the fidelity check collapsed and slimq fell back layer by layer
     (the demoted nodes are listed), or --on-collapse warn wrote it anyway
  4  refused: the quantized model failed the fidelity check (--on-collapse refuse, or the
     fallback could not recover it); nothing was written

The fidelity check runs FP32 and the quantized model on --check-data (an .npz with one array per
model input, .npy, or a folder of them) or, by default, on 8 inputs synthesised from the model's
input spec: random token ids within the vocabulary of the embedding table they index, attention
masks of ones, standard-normal floats. A report is written to OUT.report.json.

--gptq --calib DATA rounds MatMul/Gemm weights with GPTQ (Frantar et al. 2023) on DATA's inputs
instead of to nearest: same scales and file size, lower layer output error (most useful for
--weight-bits 4). The report's weight_rounding entry gives the time and the error reduction.
"""


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


def register(sub: argparse._SubParsersAction, methods: argparse._SubParsersAction) -> None:
    p = methods.add_parser("dynamic", help="weight-only or dynamic-activation quantization (no calibration data)",
                           description="Quantize weights ahead of time; optionally quantize MatMul activations "
                                       "at run time. Checks the result against FP32 before writing it.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="FP32 model: .onnx, a PyTorch .pt2 (torch.export.save) or a Paddle inference "
                                  "model folder")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (never the input)")
    p.add_argument("--mode", default="weight-only",
                   help="weight-only (int8/int4 weights, float compute; default) or dynamic-activation "
                        "(MatMul/Gemm activations quantized at run time: faster on CPU)")
    p.add_argument("--weight-bits", default="8", help="8 (default) or 4 (int4, weight-only, group-wise)")
    p.add_argument("--granularity", default="auto",
                   help="channel or group:N (block-wise scales, e.g. group:128); default: channel for 8-bit, "
                        "group:128 for 4-bit")
    p.add_argument("--check-data", help="inputs for the fidelity check (.npz/.npy file or folder)")
    p.add_argument("--gptq", action="store_true",
                   help="round MatMul/Gemm weights with GPTQ (lower layer output error than round-to-nearest at the "
                        "same size; needs --calib); default: round to nearest, no data needed")
    p.add_argument("--calib", help="calibration inputs for --gptq (.npz/.npy file or folder, like --check-data)")
    p.add_argument("--on-collapse", default="fallback",
                   help="when the fidelity check fails: fallback (demote the most damaging layers; default), "
                        "warn (write anyway, exit 3) or refuse (write nothing, exit 4)")
    p.add_argument("--min-cosine", type=float, default=0.99, help="worst output cosine vs FP32 to accept (0.99)")
    p.add_argument("--no-embeddings", action="store_true", help="keep Gather embedding tables in float")
    p.add_argument("--no-measure", action="store_true",
                   help="dynamic-activation: quantize every MatMul without timing its shape in onnxruntime first")
    p.add_argument("--skip-nodes", help="comma-separated node names to keep in float")
    p.add_argument("--skip-ops", help="comma-separated op types to keep in float")
    p.add_argument("--skip-regex", help="comma-separated regexes over node names to keep in float")
    p.add_argument("--external-data", action="store_true", help="store weights in OUT.data (automatic over 2 GB)")
    add_budget_flags(p, min_cosine=False, help_text=DYNAMIC_BUDGET_HELP)
    p.set_defaults(func=run_dynamic)


def _bits(text: str) -> int:
    if text.strip() not in ("8", "4"):
        raise unknown_choice("--weight-bits value", text, ("8", "4"))
    return int(text)


def dynamic_config(args: argparse.Namespace) -> DynamicConfig:
    """The DynamicConfig the flags describe (validated: unknown values get a "did you mean")."""
    from slimq.dynamic.method import DynamicConfig

    skip = SkipSpec(_csv(args.skip_nodes), _csv(args.skip_ops), _csv(args.skip_regex))
    for flag in ("time_budget", "min_int8_share"):
        if getattr(args, flag, None) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} is not used by dynamic PTQ: its fallback is bounded (two "
                              "rounds of demotions) and keeps every node it can in int8; drop the flag.")
    return DynamicConfig(mode=args.mode, weight_bits=_bits(args.weight_bits), granularity=args.granularity,
                         embeddings=not args.no_embeddings, skip=skip, measure_kernels=not args.no_measure,
                         min_cosine=args.min_cosine, on_collapse=args.on_collapse,
                         external_data=True if args.external_data else None,
                         weight_rounding="gptq" if args.gptq else "rtn",
                         budget=budget_from_args(args, None, triggers=("min_agreement", "max_drop", "metric")))


def run_dynamic(args: argparse.Namespace) -> int:
    from slimq.dynamic.method import quantize_dynamic

    result = quantize_dynamic(args.model, dynamic_config(args), args.output, args.check_data, args.calib,
                              eval_data=args.eval_data)
    print(result.report.format())
    print(f"wrote {args.output} and {Path(args.output).name}.report.json")
    return 3 if result.report.warnings else 0
