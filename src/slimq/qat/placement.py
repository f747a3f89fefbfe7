"""Insertion of activation quantizers into a traced graph (rules in :mod:`slimq.qat.graph`).

Float MAC outputs stay float: the output of a Conv/Linear/MatMul kept in float (skipped by
``QATConfig.skip`` or unsupported) that reads a quantized tensor, also after a BatchNorm, ReLU/ReLU6/clamp
or a grid-keeping op (max-pool, flatten, ...) that directly follows it, gets no activation quantizer, and
its readers take it in float. With a QuantizeLinear behind it onnxruntime would fold the BatchNorm,
quantize the float weight itself and run the "float" layer as QLinearConv anyway. A float MAC reading a
float tensor (a float stem conv on the image) has no such risk: its output is quantized for its readers.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import Argument

from slimq.core.ops import op_info
from slimq.qat.add_op import QATAdd
from slimq.qat.aten_ops import activation_bounds, is_aten, is_mac
from slimq.qat.capture import skipped_scope
from slimq.qat.config import QATConfig
from slimq.qat.graph import ACT_CONTAINER, FloatOp, _kind, _op_name, is_skipped
from slimq.qat.modules import QATConv, QATLinear, bind_input, bind_output
from slimq.qat.quantizers import ActQuantizer

_MAC_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d, nn.Linear, nn.Bilinear)
_MAC_FUNCS = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
              F.linear, F.bilinear, torch.matmul, torch.mm, torch.bmm, operator.matmul}
_MAC_METHODS = {"matmul", "mm", "bmm"}
_CLIP_FUNCS = {torch.clamp, torch.clip, F.hardtanh}
_CLIP_METHODS = {"clamp", "clip", "clamp_", "clip_"}
# Quantized kinds whose ONNX op has an integer kernel with float output (op table: float_output_ok).
_FLOAT_OUTPUT = {"linear": "Gemm", "matmul": "MatMul"}
# Between a float MAC and its output quantizer onnxruntime would fold or move these ops.
_SEE_THROUGH = ("act", "pass", "bn")


def _ends_in_mac(module: nn.Module) -> bool:
    """True when ``module`` (a skipped/unsupported leaf) computes a MAC last; a Sequential is
    followed back through its trailing BatchNorm/activation/grid-keeping children."""
    if isinstance(module, _MAC_MODULES):
        return True
    if isinstance(module, nn.Sequential):
        for child in reversed(list(module)):
            if not isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.ReLU, nn.ReLU6,
                                      nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout,
                                      nn.Identity)):
                return _ends_in_mac(child)
    return False


class _Placer:
    """Walks the graph once in topological order and inserts ActQuantizer calls."""

    def __init__(self, gm: fx.GraphModule, cfg: QATConfig) -> None:
        self.gm, self.graph, self.cfg = gm, gm.graph, cfg
        self.container = nn.Module()
        gm.add_module(ACT_CONTAINER, self.container)
        self.grid_of: dict[fx.Node, str] = {}  # value -> quantizer whose grid it lies on
        self.input_q: dict[fx.Node, fx.Node] = {}
        self.names: list[str] = []
        self.quantizers: dict[str, ActQuantizer] = {}  # path -> inserted quantizer
        self.quantized_ops: list[str] = []
        self.float_ops: list[FloatOp] = []
        self.skipped: list[str] = []
        self.input_grids: dict[str, set[str | None]] = {}  # QAT module -> quantizers of its inputs (None: float)
        self.output_grids: dict[str, set[str | None]] = {}  # QAT module -> quantizer of its output (None: other)

    def _new_quantizer(self, base: str, unsigned: bool) -> str:
        name, i = base, 1
        while hasattr(self.container, name):
            name, i = f"{base}_{i}", i + 1
        cfg = self.cfg
        unsigned = unsigned and cfg.rules.unsigned_grid
        quantizer = ActQuantizer(cfg.variant, cfg.act_bits, unsigned, cfg.moving_rate)
        self.container.add_module(name, quantizer)
        path = f"{ACT_CONTAINER}.{name}"
        self.names.append(path)
        self.quantizers[path] = quantizer
        return path

    def _unsigned_input(self, value: Argument) -> bool:
        """Whether a pool's output grid is unsigned: its input's grid is, or its input is an activation's."""
        if not isinstance(value, fx.Node):
            return False
        if value in self.grid_of:
            return self.quantizers[self.grid_of[value]].unsigned
        return self._kind(value) == "act"

    def _insert_after(self, node: fx.Node, qname: str, observe: bool = True) -> fx.Node:
        kwargs: dict[str, Argument] = {} if observe else {"observe": False}
        with self.graph.inserting_after(node):
            q = self.graph.call_module(qname, (node,), kwargs)
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        self.grid_of[q] = qname
        return q

    def _is_float_mac(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            return self._kind(node) in ("skipped", "float") and _ends_in_mac(module)
        if node.op == "call_method":
            return node.target in _MAC_METHODS
        return node.op == "call_function" and (node.target in _MAC_FUNCS or is_mac(node))

    def _is_clip(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.gm.get_submodule(str(node.target)), nn.Hardtanh)
        if node.op == "call_method":
            return node.target in _CLIP_METHODS
        return node.op == "call_function" and (node.target in _CLIP_FUNCS or activation_bounds(node) is not None)

    def from_float_mac(self, value: fx.Node) -> bool:
        """True when ``value`` is the output of a float MAC (through BN/ReLU/clamp/max-pool...) that reads a
        quantized tensor. One that reads a float tensor (a graph input, a float op) cannot become an integer
        kernel, so its output is quantized for its int8 readers like any other (a float stem conv must not
        leave the next layer float too)."""
        node = value
        while node not in self.grid_of and node.args and isinstance(node.args[0], fx.Node) and (
                self._see_through_kind(node) in _SEE_THROUGH or self._is_clip(node)):
            node = node.args[0]
        if node in self.grid_of or not self._is_float_mac(node):
            return False
        data = node.args[0] if node.args else None
        return isinstance(data, fx.Node) and data in self.grid_of

    def _ensure_input(self, value: fx.Node, consumer: fx.Node) -> None:
        if value in self.grid_of or self.from_float_mac(value):
            return
        if value not in self.input_q:
            qname = self._new_quantizer(f"in_{value.name}", self._kind(value) == "act")
            with self.graph.inserting_before(consumer):
                q = self.graph.call_module(qname, (value,))
            self.grid_of[q] = qname
            self.input_q[value] = q
        consumer.replace_input_with(value, self.input_q[value])

    def _kind(self, node: fx.Node) -> str:
        if node.op == "call_module" and is_skipped(str(node.target), self.cfg.skip):
            return "skipped"
        if node.op == "call_function" and skipped_scope(node, self.cfg.skip) is not None:
            return "skipped"
        return _kind(self.gm, node, self.cfg.rules)

    def _see_through_kind(self, node: fx.Node) -> str:
        """The kind of a node, also inside a skipped module (captured graphs keep skipped modules' ops)."""
        if node.op == "call_function":
            return _kind(self.gm, node, self.cfg.rules)
        return self._kind(node)

    def _ceiling(self, act: fx.Node) -> float | None:
        """The upper clip bound of a fused activation (ReLU6: 6), None when unbounded."""
        if act.op == "call_module":
            return 6.0 if isinstance(self.gm.get_submodule(str(act.target)), nn.ReLU6) else None
        if act.op == "call_function" and act.target is F.relu6:
            return 6.0
        bounds = activation_bounds(act)
        return bounds[1] if bounds is not None else None

    def _drops_act(self, act: fx.Node, qname: str) -> bool:
        """True when onnxruntime drops ``act`` before the quantizer ``qname`` (fusing the MAC into a
        QLinear kernel): its lower clip bound is 0 and the (capped) grid is unsigned, so it clips nothing."""
        if act.op == "call_function" and is_aten(act):
            bounds = activation_bounds(act)
            low = bounds[0] if bounds is not None else None
        else:
            low = 0.0
        return low == 0.0 and self.quantizers[qname].unsigned

    def _quantize_op(self, node: fx.Node, kind: str) -> None:
        inputs = list(node.args[:2]) if kind in ("add", "matmul") else [node.args[0]]
        for value in inputs:
            if isinstance(value, fx.Node):
                self._ensure_input(value, node)
        users = list(node.users)
        self.quantized_ops.append(str(node.target) if node.op == "call_module" else node.name)
        if kind in ("conv", "linear") and node.op == "call_module":
            source = node.args[0]
            grid = self.grid_of.get(source) if isinstance(source, fx.Node) else None
            self.input_grids.setdefault(str(node.target), set()).add(grid)
        if kind in _FLOAT_OUTPUT and op_info(_FLOAT_OUTPUT[kind]).float_output_ok and users and \
                all(u.op == "output" for u in users):
            return  # a model output: integer kernels write it in float (QGemm), as static PTQ leaves it
        target = node
        unsigned = kind == "pool" and self._unsigned_input(node.args[0])
        ceiling = None
        if len(users) == 1 and self._kind(users[0]) == "act" and users[0].args[0] is node:
            target, unsigned, ceiling = users[0], True, self._ceiling(users[0])
        qname = self._new_quantizer(node.name, unsigned)
        if ceiling is not None:
            self.quantizers[qname].cap_range(ceiling)
        self._insert_after(target, qname)
        if kind == "add" and target is node:
            self._exact_add(node, qname)
        if kind in ("conv", "linear") and node.op == "call_module":
            fused = target is node or self._drops_act(target, qname)
            self.output_grids.setdefault(str(node.target), set()).add(qname if fused else None)

    def _exact_add(self, node: fx.Node, qname: str) -> None:
        """Turn ``a + b`` of two quantized tensors into a :class:`QATAdd` bound to both input grids and
        its output grid (integer-exact eval: onnxruntime's QLinearAdd). Adds with other arguments
        (alpha, a constant, a float input) stay as they are."""
        args = node.args
        if len(args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) and a in self.grid_of for a in args):
            return
        a, b = (self.grid_of[v] for v in args if isinstance(v, fx.Node))
        module = QATAdd(self.cfg.rules.act_dtype)
        module.bind(self.quantizers[a], self.quantizers[b], self.quantizers[qname])
        name = f"{qname.rpartition('.')[2]}_op"
        self.container.add_module(name, module)
        with self.graph.inserting_after(node):
            new = self.graph.call_module(f"{ACT_CONTAINER}.{name}", args)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)

    def bind_inputs(self) -> None:
        """Give each QAT Conv/Linear its input quantizer (int32 bias scale ``s_in * s_w``).

        A module called at several places on different grids, or reading a float input (the
        output of a float MAC), has no single int32 bias; it keeps a float bias (onnxruntime
        then rounds it per call site, or runs the layer in float).
        """
        for target, grids in self.input_grids.items():
            module = self.gm.get_submodule(target)
            grid = next(iter(grids)) if len(grids) == 1 else None
            if isinstance(module, (QATConv, QATLinear)) and grid is not None:
                bind_input(module, self.quantizers[grid])
        for target, grids in self.output_grids.items():
            module = self.gm.get_submodule(target)
            grid = next(iter(grids)) if len(grids) == 1 else None
            if isinstance(module, (QATConv, QATLinear)) and grid is not None:
                bind_output(module, self.quantizers[grid])

    def run(self) -> None:
        for node in list(self.graph.nodes):
            kind = self._kind(node)
            if kind in ("conv", "linear", "add", "pool", "matmul", "compute"):
                self._quantize_op(node, kind)
            elif kind in ("pass", "act") and node.args and node.args[0] in self.grid_of:
                self._insert_after(node, self.grid_of[node.args[0]], observe=False)
            elif kind in ("float", "bn"):
                self.float_ops.append(_op_name(self.gm, node))
            elif kind == "skipped":
                scope = str(node.target) if node.op == "call_module" else skipped_scope(node, self.cfg.skip)
                if scope not in self.skipped:
                    self.skipped.append(str(scope))


def insert_quantizers(
    gm: fx.GraphModule, cfg: QATConfig
) -> tuple[list[str], list[str], list[FloatOp], list[str]]:
    """Insert activation quantizers; returns (quantizer names, quantized ops, float ops, skipped)."""
    placer = _Placer(gm, cfg)
    placer.run()
    placer.bind_inputs()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return placer.names, placer.quantized_ops, placer.float_ops, placer.skipped
