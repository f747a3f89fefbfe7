"""Helpers of the bad-input / fault corpus (tests/test_corpus.py).

Only the public CLI entry (`slimq.cli.main`) and `slimq.testing` are used from slimq; every bad
model and data file is built here with `onnx` / `numpy` directly, in the test's tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh

import slimq.testing as testing

TRACEBACK = "Traceback (most recent call last)"
SLIMQ_SRC = str(Path(testing.__file__).resolve().parents[2])  # the folder holding the imported `slimq`

# ----------------------------------------------------------------------------------------------
# running the CLI


@dataclass
class Run:
    rc: int | None  # None: an exception escaped main()
    out: str
    err: str
    exc: str | None = None  # the escaped exception's traceback
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    def last_frame(self) -> str:
        """The last 'File ..., line N, in f' line and the exception line of any traceback seen."""
        tb = self.exc or (self.text[self.text.rfind(TRACEBACK):] if TRACEBACK in self.text else "")
        if not tb:
            return ""
        frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
        last = tb.strip().splitlines()[-1] if tb.strip() else ""
        where = f"{Path(frames[-1][0]).name}:{frames[-1][1]} {frames[-1][2]}" if frames else "?"
        return f"{where}: {last[:200]}"


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_inprocess(argv: list[str], capfd) -> Run:
    """Call slimq.cli.main(argv) in this process; catch SystemExit (argparse) and any escaping exception."""
    from slimq.cli import main

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = []  # let main's logging.basicConfig write to the (captured) stderr, as on a terminal
    capfd.readouterr()
    t0 = time.perf_counter()
    exc = None
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning  # print to stderr, as the CLI does (not into pytest's record)
        saved_format = warnings.formatwarning
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors exit 2 with a usage line
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        except BaseException:  # noqa: BLE001 - anything escaping main is a traceback for the user
            rc, exc = None, traceback.format_exc()
        finally:
            warnings.formatwarning = saved_format
            for h in root.handlers:
                if h not in saved_handlers:
                    h.flush()
            root.handlers, root.level = saved_handlers, saved_level
    seconds = time.perf_counter() - t0
    out, err = capfd.readouterr()
    return Run(rc, out, err, exc, seconds)


CHILD = "import sys; from slimq.cli import main; sys.exit(main(sys.argv[1:]))"


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SLIMQ_SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def child_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", CHILD, *map(str, argv)]


def limit_memory(gib: float):
    """preexec_fn capping the child's address space (a runaway allocation then fails instead of OOM-killing)."""
    def _set():
        import resource

        lim = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    return _set


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 120, mem_gib: float | None = None) -> Run:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(child_cmd(argv), cwd=cwd, env=child_env(), capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit_memory(mem_gib) if mem_gib else None)
    except subprocess.TimeoutExpired as e:
        return Run(None, _s(e.stdout), _s(e.stderr), f"timed out after {timeout} s", time.perf_counter() - t0)
    rc = p.returncode
    return Run(rc, p.stdout, p.stderr, None, time.perf_counter() - t0)


def _s(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


class Child:
    """A slimq child process whose stderr is collected in the background (so polling can watch it)."""

    def __init__(self, argv: list[str], cwd: Path):
        self.p = subprocess.Popen(child_cmd(argv), cwd=cwd, env=child_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self._out, self._err = [], []
        self._threads = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                         for s, b in ((self.p.stdout, self._out), (self.p.stderr, self._err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, buf):
        for chunk in iter(lambda: stream.read1(4096), b""):
            buf.append(chunk)

    @property
    def err(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    @property
    def out(self) -> str:
        return b"".join(self._out).decode(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait_for_text(self, needle: str, timeout: float = 60) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.alive():
            if needle in self.err or needle in self.out:
                return True
            time.sleep(0.01)
        return needle in self.err or needle in self.out

    def wait_for_path(self, folder: Path, pattern: re.Pattern, timeout: float = 60) -> str | None:
        """Poll tightly until an entry of `folder` matches `pattern`; return its name (None: never seen)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                for name in os.listdir(folder):
                    if pattern.fullmatch(name):
                        return name
            except FileNotFoundError:
                pass
            if not self.alive():
                return None
        return None

    def kill(self, sig: int) -> None:
        if self.alive():
            os.kill(self.p.pid, sig)

    def finish(self, timeout: float = 120) -> Run:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = None
            self.p.wait()
        for t in self._threads:
            t.join(5)
        return Run(rc, self.out, self.err, None if rc is not None else "timed out")


# ----------------------------------------------------------------------------------------------
# file snapshots: nothing changed, nothing left behind


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root: relative path -> 'dir', 'link:<target>' or 'file:<sha256>'."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                snap[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                snap[rel] = "dir"
            elif p.is_file():
                snap[rel] = "file:" + sha256(p)
            else:
                snap[rel] = "other"
    return snap


def diff_snapshots(before: dict, after: dict) -> tuple[list[str], list[str], list[str]]:
    """(changed, removed, added) relative paths."""
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    removed = sorted(k for k in before if k not in after)
    added = sorted(k for k in after if k not in before)
    return changed, removed, added


def hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in Path(rel).parts)


TMP_RX = re.compile(r"\..+\.tmp")  # slimq's temp folders: .<out name>.<random>.tmp


# ----------------------------------------------------------------------------------------------
# models


def named_conv(opset: int = 17) -> onnx.ModelProto:
    """slimq.testing.conv_net with node names: conv1 bn1 relu1 pool1 conv2 clip2 conv3 add3 relu3 gap flat fc."""
    m = testing.conv_net(opset)
    names = ["conv1", "bn1", "relu1", "pool1", "conv2", "clip2", "conv3", "add3", "relu3", "gap", "flat", "fc"]
    for n, name in zip(m.graph.node, names):
        n.name = name
    return m


def conv_calib(n: int = 64, seed: int = 2) -> np.ndarray:
    """Good calibration data for conv_net: x86 static PTQ on it exits 0 (no fidelity warning)."""
    return np.concatenate([f["input"] for f in testing.random_inputs(testing.conv_net(), n, seed=seed)])


def mlp() -> onnx.ModelProto:
    return testing.matmul_net()


def mlp_calib(n: int = 32, seed: int = 1) -> np.ndarray:
    return np.concatenate([f["x"] for f in testing.random_inputs(testing.matmul_net(), n, seed=seed)])


def _model(nodes, inputs, outputs, inits, opset=17, name="g") -> onnx.ModelProto:
    g = oh.make_graph(nodes, name, inputs, outputs, [nh.from_array(v, k) for k, v in inits.items()])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def embedding_model(vocab: int = 50, dim: int = 16, seq: int = 6) -> onnx.ModelProto:
    """ids int64 [N, seq] -> Gather(table[vocab, dim]) -> MatMul(w[dim, 8]) -> [N, seq, 8]."""
    r = np.random.default_rng(0)
    inits = {"table": r.normal(0, 1, (vocab, dim)).astype(np.float32),
             "w": r.normal(0, 0.3, (dim, 8)).astype(np.float32)}
    nodes = [oh.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             oh.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    return _model(nodes, [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N", seq])],
                  [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", seq, 8])], inits)


def two_input_model() -> onnx.ModelProto:
    r = np.random.default_rng(0)
    inits = {"w1": r.normal(0, 0.2, (32, 16)).astype(np.float32), "w2": r.normal(0, 0.2, (32, 16)).astype(np.float32)}
    nodes = [oh.make_node("MatMul", ["x1", "w1"], ["a"], name="mm1"), oh.make_node("MatMul", ["x2", "w2"], ["b"], name="mm2"),
             oh.make_node("Add", ["a", "b"], ["y"], name="add")]
    return _model(nodes, [oh.make_tensor_value_info("x1", 1, ["N", 32]), oh.make_tensor_value_info("x2", 1, ["N", 32])],
                  [oh.make_tensor_value_info("y", 1, ["N", 16])], inits)


def if_conv_model() -> onnx.ModelProto:
    """A top-level Conv, then an If whose branches each hold a Conv (reading outer-scope tensors)."""
    r = np.random.default_rng(0)
    inits = {"w0": r.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32),
             "wt": r.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32),
             "we": r.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32),
             "zero": np.array(0.0, np.float32)}
    out_vi = oh.make_tensor_value_info("branch_out", 1, ["N", 4, 8, 8])
    then_g = oh.make_graph([oh.make_node("Conv", ["c0", "wt"], ["branch_out"], pads=[1, 1, 1, 1], name="then_conv")],
                           "then", [], [out_vi])
    else_out = oh.make_tensor_value_info("branch_out", 1, ["N", 4, 8, 8])
    else_g = oh.make_graph([oh.make_node("Conv", ["c0", "we"], ["branch_out"], pads=[1, 1, 1, 1], name="else_conv")],
                           "else", [], [else_out])
    nodes = [oh.make_node("Conv", ["input", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
             oh.make_node("ReduceMean", ["c0"], ["m"], keepdims=0, name="mean"),
             oh.make_node("Greater", ["m", "zero"], ["cond"], name="gt"),
             oh.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")]
    return _model(nodes, [oh.make_tensor_value_info("input", 1, [1, 3, 8, 8])],
                  [oh.make_tensor_value_info("y", 1, [1, 4, 8, 8])], inits)


def with_input_dims(model: onnx.ModelProto, dims: list) -> onnx.ModelProto:
    """Copy of a single-input model whose input shape is replaced by `dims` (ints or names); no checking."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    shape = m.graph.input[0].type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d
    return m


def huge_input_model() -> onnx.ModelProto:
    """x float [1, 100000, 100000] (40 GB) -> MatMul(w[100000, 4]): small file, absurd synthetic input."""
    w = np.random.default_rng(0).normal(0, 0.01, (100000, 4)).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return _model(nodes, [oh.make_tensor_value_info("x", 1, [1, 100000, 100000])],
                  [oh.make_tensor_value_info("y", 1, [1, 100000, 4])], {"w": w})


def custom_op_model() -> onnx.ModelProto:
    m = named_conv()
    relu = next(n for n in m.graph.node if n.name == "relu1")
    relu.op_type, relu.domain = "FancyActivation", "com.example"
    m.opset_import.append(oh.make_opsetid("com.example", 1))
    return m


def no_nodes_model() -> onnx.ModelProto:
    g = oh.make_graph([], "empty", [oh.make_tensor_value_info("x", 1, ["N", 4])],
                      [oh.make_tensor_value_info("x", 1, ["N", 4])])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def no_weights_model() -> onnx.ModelProto:
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="relu")]
    return _model(nodes, [oh.make_tensor_value_info("x", 1, ["N", 32])], [oh.make_tensor_value_info("y", 1, ["N", 32])], {})


def dangling_input_model() -> onnx.ModelProto:
    m = named_conv()
    conv2 = next(n for n in m.graph.node if n.name == "conv2")
    conv2.input[0] = "ghost_tensor"
    return m


def cycle_model() -> onnx.ModelProto:
    m = named_conv()
    conv1 = next(n for n in m.graph.node if n.name == "conv1")
    conv1.input[0] = "r1"  # conv1 reads relu1's output, which depends on conv1
    return m


def short_initializer_model() -> onnx.ModelProto:
    m = named_conv()
    w = next(t for t in m.graph.initializer if t.name == "w2")
    raw = nh.to_array(w).tobytes()
    w.ClearField("float_data")
    w.raw_data = raw[: len(raw) // 3]
    return m


def string_input_model() -> onnx.ModelProto:
    m = named_conv()
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.STRING
    return m


def with_opset(model: onnx.ModelProto, version: int | None) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.opset_import[:]
    if version is not None:
        m.opset_import.append(oh.make_opsetid("", version))
    return m


def slow_conv_model(size: int = 96, ch: int = 48, layers: int = 4) -> onnx.ModelProto:
    """A conv net big enough that calibration takes a few seconds (for signal tests)."""
    r = np.random.default_rng(0)
    inits, nodes, prev, cin = {}, [], "input", 3
    for i in range(layers):
        inits[f"w{i}"] = r.normal(0, np.sqrt(2 / (cin * 9)), (ch, cin, 3, 3)).astype(np.float32)
        inits[f"b{i}"] = r.normal(0, 0.1, ch).astype(np.float32)
        nodes += [oh.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  oh.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev, cin = f"r{i}", ch
    inits["wfc"] = r.normal(0, 0.1, (10, ch)).astype(np.float32)
    nodes += [oh.make_node("GlobalAveragePool", [prev], ["g"], name="gap"),
              oh.make_node("Flatten", ["g"], ["f"], name="flat"),
              oh.make_node("Gemm", ["f", "wfc"], ["logits"], transB=1, name="fc")]
    return _model(nodes, [oh.make_tensor_value_info("input", 1, ["N", 3, size, size])],
                  [oh.make_tensor_value_info("logits", 1, ["N", 10])], inits)


def big_matmul_model(width: int = 2048, layers: int = 4) -> onnx.ModelProto:
    """MatMul chain with large weights (width^2 floats each): saving its quantized copy takes a while."""
    r = np.random.default_rng(0)
    inits, nodes, prev = {}, [], "x"
    for i in range(layers):
        inits[f"w{i}"] = (r.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(np.float32)
        nodes.append(oh.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        prev = f"h{i}"
    nodes.append(oh.make_node("Identity", [prev], ["y"], name="out"))
    return _model(nodes, [oh.make_tensor_value_info("x", 1, ["N", width])],
                  [oh.make_tensor_value_info("y", 1, ["N", width])], inits)


# ----------------------------------------------------------------------------------------------
# files


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def save_external(model: onnx.ModelProto, path: Path, location: str, data_path: Path | None = None,
                  threshold: int = 64, declare_extra: int = 0, offset_extra: int = 0) -> Path:
    """Save `model` with every initializer over `threshold` bytes in one external file, written at
    `data_path` (default: next to the model, named `location`) and referenced as `location` verbatim.
    declare_extra: add this many bytes to each declared length (data shorter than declared)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    blob = io.BytesIO()
    for t in m.graph.initializer:
        raw = nh.to_array(t).tobytes()
        if len(raw) < threshold:
            continue
        offset = blob.tell()
        blob.write(raw)
        for f in ("float_data", "int32_data", "int64_data", "double_data", "raw_data"):
            t.ClearField(f)
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset + offset_extra)),
                     ("length", str(len(raw) + declare_extra))):
            e = t.external_data.add()
            e.key, e.value = k, v
    path.write_bytes(m.SerializeToString())
    target = data_path if data_path is not None else path.parent / location
    if target is not False:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob.getvalue())
    return path


def write_png(path: Path, width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> Path:
    """A valid all-zero PNG of any size, streamed (a decompression bomb stays tiny on disk)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3}[color_type]
    row = b"\x00" + b"\x00" * ((width * channels * bit_depth + 7) // 8)
    comp = zlib.compressobj(9)
    idat = bytearray()
    rows_per_chunk = max(1, (1 << 22) // len(row))
    block = row * rows_per_chunk
    done = 0
    while done < height:
        n = min(rows_per_chunk, height - done)
        idat += comp.compress(block if n == rows_per_chunk else row * n)
        done += n
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))
    return path


def write_rgb_png(path: Path, size: int = 16, seed: int = 0, value: int | None = None) -> Path:
    from PIL import Image

    r = np.random.default_rng(seed)
    a = np.full((size, size, 3), value, np.uint8) if value is not None else r.integers(0, 256, (size, size, 3), np.uint8)
    Image.fromarray(a).save(path)
    return path


def write_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.onnx", testing.conv_net().SerializeToString())
    return path


def write_pickled_npy(path: Path) -> Path:
    a = np.empty(4, dtype=object)
    for i in range(4):
        a[i] = np.zeros((1, 3, 16, 16), np.float32)
    np.save(path, a, allow_pickle=True)
    return path


def write_pickled_npz(path: Path, key: str = "input") -> Path:
    a = np.empty(4, dtype=object)
    for i in range(4):
        a[i] = {"evil": i}
    np.savez(path, **{key: a})
    return path


# ----------------------------------------------------------------------------------------------
# checks of written models and reports


def load_ok(path: Path) -> str | None:
    """None if the model at `path` (with its external data) loads, checks and runs in onnxruntime; else why not."""
    import onnxruntime as ort

    try:
        m = onnx.load(str(path))
        onnx.checker.check_model(str(path))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            if "int64" in i.type:
                feeds[i.name] = np.zeros(shape, np.int64)
            else:
                feeds[i.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        sess.run(None, feeds)
        del m
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None


def read_report(model_path: Path) -> dict | None:
    p = model_path.with_name(model_path.name + ".report.json")
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def find_keys(obj, rx: re.Pattern, path: str = "") -> list[tuple[str, object]]:
    """All (dotted key, value) pairs in a nested dict/list whose key matches rx."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if rx.search(str(k)):
                found.append((p, v))
            found += find_keys(v, rx, p)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += find_keys(v, rx, f"{path}[{i}]")
    return found


def weight_dq_granularity(path: Path) -> set[str]:
    """'per-tensor' / 'per-channel' / 'block' for each DequantizeLinear of a constant in the model."""
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    kinds = set()
    for n in m.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        attrs = {a.name: a for a in n.attribute}
        scale = inits.get(n.input[1])
        if "block_size" in attrs and attrs["block_size"].i:
            kinds.add("block")
        elif scale is not None and len(scale.dims) >= 1 and int(np.prod(scale.dims)) > 1:
            kinds.add("per-channel")
        else:
            kinds.add("per-tensor")
    return kinds


SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
