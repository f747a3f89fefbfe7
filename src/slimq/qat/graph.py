"""Graph rewriting for QAT: torch.fx symbolic tracing plus module swapping.

Why FX + module swapping (and not eager-only swapping or torch.export): swapping modules in
eager mode cannot see data flow, so it cannot tell which BatchNorm follows which Conv, where a
functional ``x + y`` or ``F.relu`` sits, or which tensors already lie on a quantization grid.
``torch.fx.symbolic_trace`` gives that data flow while keeping the result an ordinary
``nn.Module`` (a GraphModule) whose QAT layers are plain submodules: it trains with any
optimizer, wraps in DistributedDataParallel, and saves/loads through ``state_dict``.
``torch.export`` graphs are functional (parameters lifted out), made for inference/compilers;
training them and wrapping them in DDP is far less robust.

Quantization placement (what ends up as QuantizeLinear/DequantizeLinear in ONNX):
every input of a quantized op (Conv, Linear, Add, AvgPool) lies on an activation grid, and
every quantized op's output is quantized right after the op, or after its ReLU/ReLU6 when
that is its only user (then the tensor is non-negative and may use the unsigned grid).
Max-pool, flatten, reshape, dropout and standalone ReLU keep their input's grid; a
re-quantization with the same quantizer (``observe=False``, numerically a no-op) follows them
so that onnxruntime sees ``DQ -> op -> Q`` and can run integer kernels.
"""

from __future__ import annotations

import fnmatch
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimq.core.errors import ModelLoadError
from slimq.core.targets import TargetRules, target_rules
from slimq.qat.add_op import QATAdd
from slimq.qat.aten_ops import aten_kind, is_aten
from slimq.qat.config import QATConfig
from slimq.qat.modules import BNType, QATConv, QATLinear
from slimq.qat.quantizers import ActQuantizer, WeightQuantizer

ACT_CONTAINER = "act_quant"

_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_ACT_FUNCS = {F.relu, torch.relu, F.relu6}
_PASS_FUNCS = {torch.flatten, torch.reshape, F.max_pool1d, F.max_pool2d, F.dropout}
_POOL_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_NEUTRAL_FUNCS = {operator.getitem, getattr}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous"}
_NEUTRAL_METHODS = {"size", "dim"}


@dataclass(frozen=True)
class FloatOp:
    """An op left in float: ``name`` is the module path or FX node name, ``op`` its type."""

    name: str
    op: str


@dataclass(frozen=True)
class MacOp:
    """A multiply-accumulate op of a prepared model: where, which ONNX op, its MACs on the example
    inputs, and whether QAT quantizes it (see :mod:`slimq.qat.coverage`)."""

    name: str
    op: str
    macs: int
    int8: bool


@dataclass(frozen=True)
class PrepareReport:
    """What :func:`slimq.qat.prepare` did. ``capture``: "fx" (module swapping on a torch.fx trace) or
    "export" (torch.export graph capture); ``mac_ops``: every MAC op run on the example inputs."""

    quantized: tuple[str, ...]
    unsupported: tuple[FloatOp, ...]
    skipped: tuple[str, ...]
    act_quantizers: tuple[str, ...]
    capture: str = "fx"
    mac_ops: tuple[MacOp, ...] = ()

    @property
    def int8_mac_share(self) -> float:
        """Fraction of the example's MACs that QAT quantizes (1.0 without MACs)."""
        total = sum(o.macs for o in self.mac_ops)
        return sum(o.macs for o in self.mac_ops if o.int8) / total if total else 1.0

    def float_macs(self) -> list[MacOp]:
        """MAC ops left in float, largest first."""
        return sorted((o for o in self.mac_ops if not o.int8), key=lambda o: -o.macs)

    def summary(self) -> str:
        """One paragraph for logs."""
        lines = [
            f"QAT ({self.capture} capture): {len(self.quantized)} quantized ops, {len(self.act_quantizers)} activation "
            f"quantizers, {len(self.skipped)} skipped, {len(self.unsupported)} left in float; "
            f"{100 * self.int8_mac_share:.1f} % of MACs int8."
        ]
        lines += [f"  float: {u.name} ({u.op})" for u in self.unsupported]
        lines += [f"  skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def is_skipped(name: str, patterns: tuple[str, ...]) -> bool:
    """True when a module path matches a skip pattern (or lies inside a matching module)."""
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


class _Tracer(fx.Tracer):
    """FX tracer that treats skipped modules as leaves and remembers where tracing failed."""

    def __init__(self, skip: tuple[str, ...]) -> None:
        super().__init__()
        self.skip = skip
        self.failed_at: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QATConv, QATLinear, ActQuantizer, QATAdd)):
            return True
        return is_skipped(qualname, self.skip) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                try:
                    path = self.path_of_module(m)
                except NameError:
                    path = "<unregistered module>"
                self.failed_at = (path, type(m).__name__)
            raise


def trace(model: nn.Module, skip: tuple[str, ...]) -> fx.GraphModule:
    """Symbolically trace ``model``; a failure raises ModelLoadError naming the module."""
    tracer = _Tracer(skip)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        path, kind = tracer.failed_at or ("<top-level forward>", type(model).__name__)
        raise ModelLoadError(
            f"torch.fx cannot trace {type(model).__name__}: it failed inside module '{path}' "
            f"({kind}) with {type(exc).__name__}: {exc}. Remove data-dependent Python control "
            f"flow from that forward, or add '{path}' to QATConfig.skip to keep it in float "
            f"as an opaque block."
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _kind(gm: fx.GraphModule, node: fx.Node, rules: TargetRules | None = None) -> str:
    """Classify a node: conv, linear, bn, act, pass, pool, add, neutral or float (and for the ATen ops of a
    ``torch.export`` graph also matmul and compute, see :func:`slimq.qat.aten_ops.aten_kind`)."""
    if node.op in ("placeholder", "output", "get_attr") or (node.op == "call_module" and not node.users):
        return "neutral"  # also torch.export's input guard (its result is unused)
    if is_aten(node):
        return aten_kind(node, rules if rules is not None else target_rules("x86"))
    if node.op == "call_module":
        m = _module(gm, node)
        for kind, types in (
            ("conv", (nn.Conv1d, nn.Conv2d, QATConv)), ("linear", (nn.Linear, QATLinear)),
            ("bn", (nn.BatchNorm1d, nn.BatchNorm2d)), ("act", (nn.ReLU, nn.ReLU6)),
            ("pass", _PASS_MODULES), ("pool", _POOL_MODULES),
        ):
            if isinstance(m, types):
                return kind
        return "float"
    if node.op == "call_method":
        method = node.target
        if method in ("relu", "relu_"):
            return "act"
        if method in ("add", "add_"):
            return "add" if _is_tensor_add(node) else "float"
        return "pass" if method in _PASS_METHODS else "neutral" if method in _NEUTRAL_METHODS else "float"
    fn = node.target
    if fn in _ADD_FUNCS:
        return "add" if _is_tensor_add(node) else "float"
    for kind, fns in (("act", _ACT_FUNCS), ("pass", _PASS_FUNCS), ("pool", _POOL_FUNCS),
                      ("neutral", _NEUTRAL_FUNCS)):
        if fn in fns:
            return kind
    return "float"


def _is_tensor_add(node: fx.Node) -> bool:
    return len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args) and not node.kwargs


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module:
    """The module a call_module node calls (its target is the module's path)."""
    return gm.get_submodule(str(node.target))


def _op_name(gm: fx.GraphModule, node: fx.Node) -> FloatOp:
    if node.op == "call_module":
        return FloatOp(str(node.target), type(_module(gm, node)).__name__)
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return FloatOp(node.name, f"{'Tensor.' if node.op == 'call_method' else ''}{target}")


def _set_module(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _foldable_bn(gm: fx.GraphModule, conv_node: fx.Node, conv: nn.Conv1d | nn.Conv2d, uses: Counter,
                 cfg: QATConfig) -> tuple[fx.Node, BNType] | None:
    """The BatchNorm node (and module) that alone consumes ``conv``'s output, if it can be folded."""
    users = list(conv_node.users)
    if len(users) != 1 or users[0].op != "call_module":
        return None
    bn_node = users[0]
    bn = _module(gm, bn_node)
    if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return None
    dims_match = isinstance(conv, nn.Conv2d) == isinstance(bn, nn.BatchNorm2d)
    ok = (dims_match and bn.track_running_stats and bn.num_features == conv.out_channels
          and uses[bn_node.target] == 1 and uses[conv_node.target] == 1
          and not is_skipped(str(bn_node.target), cfg.skip))
    return (bn_node, bn) if ok else None


def swap_modules(gm: fx.GraphModule, cfg: QATConfig) -> list[str]:
    """Replace Conv(+BN) and Linear by QAT modules (not skipped ones); returns their paths."""
    uses = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    swapped: list[str] = []
    erased: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        if node in erased:
            continue
        kind = _kind(gm, node)
        if kind not in ("conv", "linear") or node.target in swapped:
            continue
        mod, path = _module(gm, node), str(node.target)
        if isinstance(mod, (QATConv, QATLinear)):
            raise ModelLoadError(f"Module '{path}' is already QAT-prepared; pass the float model.")
        if is_skipped(path, cfg.skip):
            continue
        if isinstance(mod, nn.Linear):
            _set_module(gm, path, QATLinear(mod, WeightQuantizer(cfg.variant, cfg.weight_bits, mod.out_features)))
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            wq = WeightQuantizer(cfg.variant, cfg.weight_bits, mod.out_channels)
            folded = _foldable_bn(gm, node, mod, uses, cfg)
            _set_module(gm, path, QATConv(mod, folded[1] if folded else None, wq))
            if folded is not None:
                bn_node = folded[0]
                bn_node.replace_all_uses_with(node)
                gm.graph.erase_node(bn_node)
                erased.add(bn_node)
                gm.delete_submodule(str(bn_node.target))  # it now lives inside the QATConv
        swapped.append(path)
    return swapped
