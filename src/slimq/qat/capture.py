"""Graph capture for QAT with ``torch.export``: what module swapping cannot see.

``torch.fx`` module swapping sees ``nn.Conv2d``/``nn.Linear`` instances only. ``torch.export`` (the
capture PyTorch's PT2E quantization uses) records every convolution, linear and matmul as an ATen op,
whether it came from a module, from ``F.conv2d`` inside a custom module (timm, EfficientNet ports), or
from ``torch.matmul``; padding modules and ``F.pad`` become ``aten.pad``.

:func:`capture` exports the model in eval mode with a dynamic batch dimension, then *lifts* the ATen
graph back into ordinary modules so the rest of QAT (BatchNorm folding, quantizer placement, training,
DDP, checkpoints) works on it unchanged:

* ``aten.conv1d/conv2d/convolution`` whose weight is a parameter -> ``nn.Conv1d``/``nn.Conv2d`` holding
  that parameter, named after it (``blocks.0.conv.weight`` -> module ``blocks.0.conv``);
* a zero constant ``aten.pad`` whose only reader is such a conv is folded into it: symmetric padding
  into the conv's own ``padding``, asymmetric (TF "SAME") padding kept as the conv's ``pre_pad``
  (:class:`PaddedConv2d`); the export pass :class:`slimq.qat.export.FusePadIntoConvPass` then writes it
  into the ONNX Conv's ``pads``. Zero is on every activation grid, so the fold is exact;
* ``aten.batch_norm`` in inference form -> ``nn.BatchNorm1d/2d`` (folded into the conv before it by
  :func:`slimq.qat.graph.swap_modules`, with live batch statistics while training);
* ``aten.linear`` -> ``nn.Linear``; ``aten.dropout`` -> ``nn.Dropout`` (active in training mode again).

Everything else stays an ATen call, classified by :mod:`slimq.qat.aten_ops`. Nodes inside modules
matched by ``QATConfig.skip`` are not lifted and stay float. The graph keeps ``torch.export``'s input
handling, so the prepared model is called like the original.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.export import Dim, ExportedProgram

from slimq.core.errors import ConfigError, ModelLoadError
from slimq.qat.aten_ops import aten, is_aten, packet
from slimq.qat.graph import is_skipped

_CONVS = {aten.conv1d, aten.conv2d, aten.convolution}
_PADS = {aten.pad, aten.constant_pad_nd}
_CONV_TYPES: dict[int, tuple[type[nn.Module], type[nn.Module]]] = {}  # spatial dims -> (plain, pre-padded)
_BN_TYPES = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}


class _PrePad:
    """Mixin: zero-pad the input by ``pre_pad`` (``F.pad`` order) before the convolution."""

    pre_pad: tuple[int, ...]

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return super()._conv_forward(F.pad(x, self.pre_pad), weight, bias)  # type: ignore[misc]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pre_pad={self.pre_pad}"  # type: ignore[misc]


class PaddedConv1d(_PrePad, nn.Conv1d):
    """Conv1d with asymmetric zero padding (exported as Pad -> Conv, fused into Conv ``pads``)."""


class PaddedConv2d(_PrePad, nn.Conv2d):
    """Conv2d with asymmetric zero padding (TF "SAME"), exported as Pad -> Conv, fused into ``pads``."""


_CONV_TYPES.update({1: (nn.Conv1d, PaddedConv1d), 2: (nn.Conv2d, PaddedConv2d)})


def module_paths(node: fx.Node) -> list[str]:
    """Paths of the modules a captured node ran inside, outermost first (``torch.export`` metadata)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [str(v[0]) for v in stack.values() if isinstance(v, tuple) and v and v[0]]


def skipped_scope(node: fx.Node, patterns: tuple[str, ...]) -> str | None:
    """The outermost module path matched by a skip pattern that this node ran inside, if any."""
    return next((p for p in module_paths(node) if is_skipped(p, patterns)), None)


def _as_tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),) * n


def export_program(model: nn.Module, example: tuple[torch.Tensor, ...]) -> ExportedProgram:
    """``torch.export`` of an eval-mode copy of ``model`` with a dynamic batch dimension on every input."""
    model = copy.deepcopy(model).eval()
    example = tuple(t if t.shape[0] > 1 else torch.cat([t, t]) for t in example)  # batch 1 would specialise
    batch = Dim("batch")
    try:
        return torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example), strict=False)
    except Exception as exc:
        raise ModelLoadError(
            f"torch.export cannot capture {type(model).__name__} with a dynamic batch dimension: "
            f"{type(exc).__name__}: {str(exc)[:600]}. Remove data-dependent Python control flow and sizes baked "
            f"into the forward (e.g. reshape(2, -1): use reshape(x.shape[0], -1)), or use QATConfig(capture=\"fx\")."
        ) from exc


def _check_dynamic_batch(program: ExportedProgram) -> None:
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs and \
                isinstance(val, torch.Tensor) and val.dim() and isinstance(val.shape[0], int):
            raise ConfigError(
                f"The exported program's input {node.name} has a fixed batch size {val.shape[0]}; QAT trains and "
                f"exports with any batch size. Export it with dynamic_shapes={{'{node.name}': {{0: "
                f"torch.export.Dim('batch')}}}} (and an example batch of at least 2).")


class _Lifter:
    """Rewrites ATen conv/linear/batch-norm/dropout calls of a captured graph into module calls."""

    def __init__(self, gm: fx.GraphModule, skip: tuple[str, ...]) -> None:
        self.gm, self.graph, self.skip = gm, gm.graph, skip
        self.modules: dict[str, nn.Module] = {}
        self.by_weight: dict[str, str] = {}

    def fetch(self, value: Any) -> torch.Tensor | None:
        """The tensor a get_attr node reads (None for anything else)."""
        if not (isinstance(value, fx.Node) and value.op == "get_attr"):
            return None
        obj = operator.attrgetter(str(value.target))(self.gm)
        return obj if isinstance(obj, torch.Tensor) else None

    def _path(self, source: fx.Node, suffix: str, fallback: str) -> str:
        target = str(source.target)
        base = target[: -len(suffix)] if target.endswith(suffix) and len(target) > len(suffix) else target + fallback
        path, i = base, 1
        while path in self.modules:
            path, i = f"{base}_{i}", i + 1
        return path

    def _replace(self, node: fx.Node, path: str, module: nn.Module, x: fx.Node) -> None:
        self.modules[path] = module
        with self.graph.inserting_before(node):
            new = self.graph.create_node("call_module", path, (x,))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)

    def run(self) -> None:
        handlers: dict[object, Any] = {aten.linear: self.linear, aten.batch_norm: self.batch_norm, aten.dropout: self.dropout,
                    **{op: self.conv for op in _CONVS}}
        for node in list(self.graph.nodes):
            handler = handlers.get(packet(node)) if is_aten(node) else None
            if handler is not None and skipped_scope(node, self.skip) is None:
                handler(node)
        for node in list(self.graph.nodes):
            if node.op == "get_attr" and not node.users:
                self.graph.erase_node(node)

    def _fold_pad(self, x: fx.Node, spatial: int) -> tuple[tuple[int, ...] | None, fx.Node]:
        """(pads, its input) when ``x`` is a zero constant pad of the spatial dims read only by the conv."""
        if not (is_aten(x) and packet(x) in _PADS and len(x.users) == 1 and skipped_scope(x, self.skip) is None):
            return None, x
        pads: Any = x.args[1] if len(x.args) > 1 else x.kwargs.get("pad")
        is_pad = packet(x) is aten.pad
        mode = (x.args[2] if len(x.args) > 2 else x.kwargs.get("mode", "constant")) if is_pad else "constant"
        value = x.args[3 if is_pad else 2] if len(x.args) > (3 if is_pad else 2) else x.kwargs.get("value")
        ok = (mode == "constant" and value in (None, 0, 0.0) and isinstance(pads, (list, tuple))
              and len(pads) == 2 * spatial and all(isinstance(p, int) and p >= 0 for p in pads))
        source: Any = x.args[0]
        return (tuple(pads), source) if ok else (None, x)

    def conv(self, node: fx.Node) -> None:
        args: list[Any] = list(node.args)
        if packet(node) is aten.convolution:
            if len(args) < 9 or args[6]:
                return  # transposed convolutions stay float (no int8 kernel on x86)
            x, w, b, stride, padding, dilation, groups = args[0], args[1], args[2], args[3], args[4], args[5], args[8]
        else:
            defaults = [None, None, None, 1, 0, 1, 1]
            args += defaults[len(args):]
            x, w, b, stride, padding, dilation, groups = args[:7]
        weight, bias = self.fetch(w), self.fetch(b)
        spatial = weight.dim() - 2 if weight is not None else 0
        if weight is None or (b is not None and bias is None) or isinstance(padding, str) or spatial not in _CONV_TYPES:
            return  # a computed weight, or "same"/"valid" padding: the conv stays float
        pads, source = self._fold_pad(x, spatial)
        padding = list(_as_tuple(padding, spatial))
        symmetric = pads is not None and all(pads[2 * i] == pads[2 * i + 1] for i in range(spatial))
        if symmetric:
            for i in range(spatial):
                padding[i] += pads[2 * (spatial - 1 - i)]  # type: ignore[index,unused-ignore]
        plain, padded = _CONV_TYPES[spatial]
        cls = padded if pads is not None and not symmetric else plain
        conv = nn.utils.skip_init(cls, weight.shape[1] * int(groups), weight.shape[0], tuple(weight.shape[2:]),
                                  stride=_as_tuple(stride, spatial), padding=tuple(padding),
                                  dilation=_as_tuple(dilation, spatial), groups=int(groups), bias=bias is not None)
        conv.weight = _parameter(weight)
        conv.bias = None if bias is None else _parameter(bias)
        if cls is padded:
            conv.pre_pad = pads
        self._replace(node, self._path(w, ".weight", "_conv"), conv, source)
        if source is not x:
            self.graph.erase_node(x)

    def linear(self, node: fx.Node) -> None:
        w: Any = node.args[1]
        b: Any = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        weight, bias = self.fetch(w), self.fetch(b)
        if weight is None or weight.dim() != 2 or (b is not None and bias is None):
            return
        linear = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None)
        linear.weight = _parameter(weight)
        linear.bias = None if bias is None else _parameter(bias)
        source: Any = node.args[0]
        self._replace(node, self._path(w, ".weight", "_linear"), linear, source)

    def batch_norm(self, node: fx.Node) -> None:
        args: list[Any] = list(node.args) + [None] * (9 - len(node.args))
        x, w, b, mean_node, var_node, training, momentum, eps = args[:8]
        mean, var = self.fetch(mean_node), self.fetch(var_node)
        val = node.meta.get("val")
        cls = _BN_TYPES.get(val.dim()) if isinstance(val, torch.Tensor) else None
        if training or mean is None or var is None or cls is None or (w is not None and self.fetch(w) is None):
            return  # batch statistics in inference too (track_running_stats=False): stays float
        bn = nn.utils.skip_init(cls, mean.shape[0], eps=float(eps), momentum=momentum, affine=w is not None)
        if w is not None:
            bn.weight, bn.bias = _parameter(self.fetch(w)), _parameter(self.fetch(b))
        bn.running_mean, bn.running_var = mean, var
        bn.num_batches_tracked = torch.zeros((), dtype=torch.long)
        source = w if w is not None else mean_node
        self._replace(node, self._path(source, ".weight" if w is not None else ".running_mean", "_bn"), bn, x)

    def dropout(self, node: fx.Node) -> None:
        p: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        paths = module_paths(node)
        base = paths[-1] if paths else "dropout"
        path, i = base, 1
        while path in self.modules:
            path, i = f"{base}_{i}", i + 1
        source: Any = node.args[0]
        self._replace(node, path, nn.Dropout(float(p)), source)


def _parameter(t: torch.Tensor | None) -> nn.Parameter:
    if t is None:
        raise ModelLoadError("A captured layer's weight is not a constant of the program.")
    if isinstance(t, nn.Parameter):
        return t
    return nn.Parameter(t.detach(), requires_grad=False)  # a buffer used as a weight stays frozen


def capture(model: nn.Module | ExportedProgram, example: tuple[torch.Tensor, ...],
            skip: tuple[str, ...] = ()) -> fx.GraphModule:
    """``torch.export`` ``model`` (or take an exported program) and lift it into a module graph."""
    if isinstance(model, ExportedProgram):
        _check_dynamic_batch(model)
        program, name = model, "ExportedProgram"
    else:
        program, name = export_program(model, example), type(model).__name__
    gm = program.module()
    if program is model:
        gm = copy.deepcopy(gm)  # training must not change the caller's program
    lifter = _Lifter(gm, skip)
    lifter.run()
    root: dict[str, Any] = dict(lifter.modules)
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "call_module") and str(node.target) not in root:
            root[str(node.target)] = operator.attrgetter(str(node.target))(gm)  # constants, the input guards
    out = fx.GraphModule(root, gm.graph, name)
    out.graph.lint()
    return out.eval()


__all__ = ["PaddedConv1d", "PaddedConv2d", "capture", "export_program", "module_paths", "skipped_scope"]
