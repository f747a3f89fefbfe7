"""Dynamic post-training quantization: no calibration data, weights quantized ahead of time.

Two modes:

* ``weight-only``: weights are stored as int8 (per-channel) or int4/int8 block-wise
  (``group:N``) with their scales and dequantized by DequantizeLinear; compute is
  FP32 in ONNX terms (onnxruntime fuses DequantizeLinear -> MatMul into MatMulNBits,
  which by default computes with int8 activations). Embedding tables (Gather over a
  constant) are stored int8 per row. The file shrinks about 4x (int8) or 8x (int4
  MatMul weights).
* ``dynamic-activation``: MatMul/Gemm with constant weights quantize their input at
  run time (DynamicQuantizeLinear -> MatMulInteger, u8 activations x s8 weights, fused
  by onnxruntime into DynamicQuantizeMatMul) where a timing of that shape in
  onnxruntime shows it is faster; Conv stays float (ConvInteger is slower than float
  Conv in onnxruntime, onnxruntime#12854, and wrecks PP-OCR; a weight-only
  DequantizeLinear would run at every inference). Activation x activation MatMuls,
  LayerNorm, Softmax and GELU stay float.

Every result is checked against FP32 on a few inputs; when agreement collapses the
worst nodes are demoted layer by layer (or, with ``on_collapse="refuse"``, nothing
is written). Every decision is recorded per node in the report.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from slimq.core.config import MODES, DynamicConfig
from slimq.core.errors import (
    ConfigError,
    FidelityError,
    NothingToQuantizeError,
    RuntimeTooOldError,
)
from slimq.dynamic.budget import budget_warning, budgeted_fallback
from slimq.dynamic.check import (
    Demotion,
    activation_rows,
    search_fallback,
    synthesize_feeds,
    time_matmul,
)
from slimq.dynamic.gptq import GPTQResult, PrecomputedWeights, gptq_formats, run_gptq
from slimq.dynamic.graph import (
    BLOCK_OPSET,
    INT4_W,
    INT8_W,
    Candidate,
    Choice,
    Decision,
    WeightCache,
    WeightFormat,
    apply_decisions,
    find_candidates,
    gemm_to_matmul,
    int_tensor,
)
from slimq.dynamic.report import CONV_REASON, Findings, dynamic_report, node_name_proto
from slimq.graph.passes import preprocess
from slimq.io.model import default_opset, upgrade_opset
from slimq.io.samples import load_samples, require_variation
from slimq.io.source import load_source, model_location, with_conversion
from slimq.io.spec import model_inputs
from slimq.report.agreement import Reference, worst_cosine
from slimq.report.measure import BudgetMeasure, resolve_metric
from slimq.report.publish import QuantResult, check_output, publish
from slimq.runtime.cpu import cpu_info
from slimq.tasks.metrics import Metric

log = logging.getLogger("slimq")

MIN_ORT_BLOCKED = "1.19"  # DequantizeLinear-21 with INT4 and block_size on the CPU EP


@functools.lru_cache(maxsize=4)
def _blocked_dq_runs(bits: int) -> str | None:
    """None if this onnxruntime runs block-wise DequantizeLinear-21 of `bits`-bit weights, else the error."""
    qtype = INT4_W if bits == 4 else INT8_W
    q = ir.serde.serialize_tensor(int_tensor(np.ones((4, 2), np.int8), qtype, "q"))
    nodes = [onnx.helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=0, block_size=2)]
    graph = onnx.helper.make_graph(nodes, "probe", [], [onnx.helper.make_tensor_value_info("y", 1, None)],
                                   [q, onnx.numpy_helper.from_array(np.ones((2, 2), np.float32), "s")])
    try:
        sess = ort.InferenceSession(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)])
                                    .SerializeToString(), providers=["CPUExecutionProvider"])
        sess.run(None, {})
    except Exception as e:  # onnxruntime raises NotImplemented / InvalidGraph on old versions
        return str(e).splitlines()[0][:200]
    return None


def require_blocked_runtime(bits: int) -> None:
    """Raise RuntimeTooOldError unless onnxruntime runs block-wise (and int4) DequantizeLinear."""
    err = _blocked_dq_runs(bits)
    if err is not None:
        raise RuntimeTooOldError(
            f"int{bits} group-wise weights need onnxruntime >= {MIN_ORT_BLOCKED} (DequantizeLinear-21 with "
            f"block_size{' and INT4' if bits == 4 else ''}); this is onnxruntime {ort.__version__} ({err}). "
            "Upgrade onnxruntime, or use --weight-bits 8 --granularity channel for older runtimes.")


def _prepare(model: onnx.ModelProto, config: DynamicConfig) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(FP32 reference, working copy with Gemm rewritten as MatMul), both preprocessed."""
    fp32 = preprocess(model)
    if config.weight_bits == 4 or config.block_size:
        require_blocked_runtime(config.weight_bits)
        if default_opset(fp32) < BLOCK_OPSET:
            fp32 = upgrade_opset(fp32, BLOCK_OPSET)
    work = ir.from_proto(fp32)
    gemm_to_matmul(work)
    work = ir.to_proto(work)
    del work.graph.value_info[:]  # not needed by onnxruntime; makes each rewrite attempt cheaper
    return fp32, work


def _check_feeds(fp32: onnx.ModelProto, check_data, config: DynamicConfig) -> tuple[list[dict], str]:
    if check_data is None:
        return synthesize_feeds(fp32, config.check_samples, dim=config.check_dim), "synthesised inputs"
    samples = load_samples(check_data, model_inputs(fp32))
    n = min(len(samples), max(config.check_samples, 1))
    feeds = [samples.sample(i) for i in range(n)]
    require_variation(feeds, "check-data")  # all-zero inputs would "agree" with cosine 1.0
    return feeds, "check-data inputs"


def weight_only_format(c: Candidate, config: DynamicConfig) -> tuple[WeightFormat, str]:
    """Storage format of a weight-only node and the reason for it."""
    block, bits, facts = config.block_size, config.weight_bits, c.facts
    if facts.embedding:
        why = f" ({c.op_type} cannot index packed int4 rows)" if bits == 4 else ""
        return WeightFormat(INT8_W, 0), f"embedding table: int8 rows dequantized after the lookup{why}"
    if not facts.low_bit and (bits == 4 or block):
        return WeightFormat(INT8_W, c.channel_axis), "no int4/group-wise conv kernel: int8 per-channel weights"
    qtype = INT4_W if bits == 4 else INT8_W
    why = (f"integer weights + DequantizeLinear (onnxruntime fuses it into {facts.fused_kernel})" if facts.fused_kernel
           else "integer weights + DequantizeLinear, float compute")
    if block and c.block_axis is not None:
        return WeightFormat(qtype, c.block_axis, block), why
    return WeightFormat(qtype, c.channel_axis), why


def _weight_only(c: Candidate, config: DynamicConfig) -> Decision:
    fmt, why = weight_only_format(c, config)
    return Decision(c, Choice.WEIGHT_ONLY, fmt, why)


def _skipped(c: Candidate, config: DynamicConfig) -> str | None:
    facts = c.facts
    if config.skip.matches(c.node, c.op_type):
        return "skipped by configuration"
    if config.op_types is not None and c.op_type not in config.op_types:
        return "op type not selected for quantization"
    if facts.embedding and not config.embeddings:
        return "embedding quantization disabled"
    if facts.float_with_dynamic_activation and config.mode == "dynamic-activation":
        return CONV_REASON
    return None


def _dynamic_weight(config: DynamicConfig) -> WeightFormat:
    reduce = config.reduce_range if config.reduce_range is not None else not cpu_info().vnni
    return WeightFormat(INT8_W.reduced() if reduce else INT8_W, 1)


def decide(candidates: list[Candidate], config: DynamicConfig, work: onnx.ModelProto, feeds: dict) -> list[Decision]:
    """One decision per candidate: dynamic where it is (measured) faster, else weight-only, or float if skipped."""
    decisions, dyn_fmt = [], _dynamic_weight(config)
    dyn = [c for c in candidates if config.mode == "dynamic-activation" and c.dynamic_ok and not _skipped(c, config)]
    timings = _timings(dyn, work, feeds) if config.measure_kernels else {}
    for c in candidates:
        why = _skipped(c, config)
        if why:
            decisions.append(Decision(c, Choice.FLOAT, None, why))
        elif c in dyn and c.node in timings and timings[c.node].speedup < config.min_speedup:
            t = timings[c.node]
            d = _weight_only(c, config)
            decisions.append(replace(d, reason=f"dynamic int8 not faster here ({t.dynamic_us:.0f} us vs float "
                                               f"{t.float_us:.0f} us at M={t.m}); {d.reason}"))
        elif c in dyn:
            t = timings.get(c.node)
            speed = f": {t.dynamic_us:.0f} us vs float {t.float_us:.0f} us at M={t.m}" if t else ""
            kernel = c.facts.dynamic_kernel
            decisions.append(Decision(c, Choice.DYNAMIC, dyn_fmt, "DynamicQuantizeLinear + MatMulInteger (u8 x s8), "
                                      f"fused by onnxruntime into {kernel}{speed}"))
        else:
            decisions.append(_weight_only(c, config))
    return decisions


def _timings(dyn: list[Candidate], work: onnx.ModelProto, feeds: dict) -> dict:
    graph = {node_name_proto(n): n for n in work.graph.node}
    acts = {c.node: graph[c.node].input[c.activation_input] for c in dyn}
    rows = activation_rows(work, sorted(set(acts.values())), feeds)
    cache, out = {}, {}
    for c in dyn:
        key = (rows[acts[c.node]], *c.shape)
        if key not in cache:
            cache[key] = time_matmul(*key)
        out[c.node] = cache[key]
    return out


def quantize_dynamic(model: str | os.PathLike | onnx.ModelProto, config: DynamicConfig = DynamicConfig(),
                     output: str | os.PathLike | None = None, check_data: object = None,
                     calib_data: object = None, eval_data: object = None,
                     metric: Metric | Callable[..., float] | None = None) -> QuantResult:
    """Quantize `model`'s weights ahead of time; check it against FP32; write it if it is not broken.

    check_data: inputs for the fidelity check (.npz/.npy file or folder, array, dict, list of feeds); by default
    they are synthesised from the model's input spec. calib_data (same forms): the inputs GPTQ minimises the
    layer output error on, required by and only used with ``config.weight_rounding="gptq"`` (the default,
    round-to-nearest, needs no data). With `output`, the model and `<output>.report.json` are written
    atomically (never over the input). With ``config.budget`` the fallback demotes nodes until the model meets
    it (:mod:`slimq.dynamic.budget`; `eval_data`/`metric` serve a max_drop budget as in static PTQ) and writes
    the best model found, with a warning, if none does. Raises NothingToQuantizeError, RuntimeTooOldError,
    ConfigError, or FidelityError (on_collapse="refuse" and the check failed; nothing written).
    """
    _check_rounding(config, calib_data)
    out = check_output(model_location(model), output)
    src = load_source(model, check_data)
    fp32, work = _prepare(src.model, config)
    candidates, floats = find_candidates(ir.from_proto(work).graph)
    config.skip.validate([node_name_proto(n) for n in work.graph.node], {n.op_type for n in work.graph.node})
    if not candidates:
        raise NothingToQuantizeError("This model has no constant float32 weights in MatMul/Gemm/Conv/Gather "
                                     "nodes, so dynamic quantization has nothing to do. Nothing was written.")
    feeds, source = _check_feeds(fp32, check_data, config)
    check = Reference(fp32, feeds)
    decisions = decide(candidates, config, work, feeds[0])
    if all(d.choice is Choice.FLOAT for d in decisions):
        why = "; ".join(sorted({f"{d.candidate.op_type}: {d.reason}" for d in decisions}))
        raise NothingToQuantizeError(f"No node would be quantized ({why}). Nothing was written.")
    cache, rounding = _weight_cache(work, decisions, config, calib_data)
    build = functools.partial(_build, work, cache)
    quantized = build(decisions)
    agree = check(quantized)
    warnings: list[str] = []
    demotions: list[Demotion] = []
    search = None
    if config.budget is not None:
        metric_fn = resolve_metric(config.budget, metric, eval_data, src.path or src.model, fp32)
        decisions, demotions, warnings, quantized, agree, search = _with_budget(fp32, feeds, check, build,
                                                                                decisions, config, metric_fn)
    elif worst_cosine(agree) < config.min_cosine:
        decisions, demotions, warnings, quantized, agree = _on_collapse(check, build, decisions, quantized, agree,
                                                                         config)
    found = Findings(decisions, demotions, floats, agree, warnings, check.runs, rounding, search)
    report = with_conversion(dynamic_report(fp32, quantized, work, feeds, source, found, config, cache), src)
    return publish(quantized, report, out, source=src.size_source, external_data=config.external_data,
                   artifacts={"decisions": decisions, "demotions": demotions})


def _with_budget(fp32: onnx.ModelProto, feeds: list[dict], check: Reference, build, decisions: list[Decision],
                 config: DynamicConfig, metric: Metric | None):
    """The budgeted fallback; returns (decisions, demotions, warnings, model, agreement, search details)."""
    assert config.budget is not None  # checked by the caller
    budgeted = budgeted_fallback(BudgetMeasure(config.budget, fp32, feeds, metric), check.subset(config.rank_samples),
                                 build, decisions, config.budget, config.min_cosine,
                                 lambda d: _weight_only(d.candidate, config))
    quantized = build(budgeted.decisions)
    return (budgeted.decisions, budgeted.demotions, budget_warning(budgeted, config.budget), quantized,
            check(quantized), budgeted.details)


def _check_rounding(config: DynamicConfig, calib_data: object) -> None:
    if config.weight_rounding == "gptq" and calib_data is None:
        raise ConfigError("GPTQ rounding needs calibration data (representative model inputs: a .npz/.npy file or "
                          "folder, arrays, or a list of feed dicts): pass calib_data= (CLI: --calib DATA), or use "
                          'weight_rounding="rtn", which needs none.')
    if config.weight_rounding != "gptq" and calib_data is not None:
        raise ConfigError('calib_data is only used by GPTQ rounding: set weight_rounding="gptq" (CLI: --gptq), or drop '
                          "it (inputs for the fidelity check go in check_data).")


def _weight_cache(work: onnx.ModelProto, decisions: list[Decision], config: DynamicConfig,
                  calib_data: object) -> tuple[WeightCache, GPTQResult | None]:
    """RTN integers (data-free), or GPTQ integers for the quantized MatMul weights and RTN for the rest."""
    if config.weight_rounding != "gptq":
        return WeightCache(), None
    formats = gptq_formats(decisions)
    if not formats:
        raise NothingToQuantizeError("GPTQ rounding was asked for, but no MatMul/Gemm weight is quantized here "
                                     "(all skipped or float); use weight_rounding=\"rtn\".")
    result = run_gptq(work, calib_data, formats)
    log.info("slimq: %s", result.note())
    return PrecomputedWeights(result.weights, formats), result


def _build(work: onnx.ModelProto, cache: WeightCache, decisions) -> onnx.ModelProto:
    return apply_decisions(work, decisions, cache)


def _on_collapse(check: Reference, build, decisions: list[Decision], quantized: onnx.ModelProto, agree,
                 config: DynamicConfig):
    """Refuse, warn, or fall back layer by layer; returns (decisions, demotions, warnings, model, agreement)."""
    worst = min(agree, key=lambda a: a.cosine)
    msg = (f'fidelity collapsed: output "{worst.name}" cosine {worst.cosine:.4f} < {config.min_cosine} '
           f"(SQNR {worst.sqnr_db:.1f} dB)")
    if config.on_collapse == "refuse":
        raise FidelityError(f"{msg}. Nothing was written. Rerun with --on-collapse fallback (the "
                                   "default) to demote the damaging layers, or skip them.")
    if config.on_collapse == "warn":
        return decisions, [], [msg + "; written anyway (on_collapse=warn)."], quantized, agree
    log.warning("slimq: %s; searching for the layers to fall back", msg)
    rank_check = check.subset(config.rank_samples)
    new, demotions = search_fallback(check, rank_check, build, decisions, config.min_cosine,
                                     lambda d: _weight_only(d.candidate, config))
    quantized = build(new)
    agree = check(quantized)
    cos = worst_cosine(agree)
    if all(d.choice is Choice.FLOAT for d in new):
        raise FidelityError(f"{msg}; only leaving every node in float recovers it, so there is nothing "
                                   "worth writing. Nothing was written.")
    if cos < config.min_cosine:
        raise FidelityError(f"{msg}, and falling back layer by layer did not recover it (worst cosine "
                                   f"{cos:.4f} with {len(demotions)} node(s) demoted). Nothing was written.")
    names = ", ".join(f"{d.node} ({d.before.value} -> {d.after.value})" for d in demotions[:8])
    more = f" and {len(demotions) - 8} more" if len(demotions) > 8 else ""
    warning = (f"{msg}; fell back on {len(demotions)} node(s), ranked by the damage each does alone: {names}{more}. "
               f"Worst cosine is now {cos:.4f}.")
    return new, demotions, [warning], quantized, agree


__all__ = ["DynamicConfig", "MODES", "quantize_dynamic", "require_blocked_runtime"]
