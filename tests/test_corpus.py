"""Reliability corpus (issue 10): bad inputs and faults, each run through the real CLI.

Every case asserts
  * the exit code (2 bad input, 4 refused, 0/3 where the input is fine; never 1, nothing escaping main),
  * no Python traceback in stdout/stderr,
  * a message that names the problem (a case-specific regex),
  * that no input file changed (sha256 of everything under the test's tmp_path, external data included),
  * that a failed run leaves nothing behind (no model, no report, no hidden `.*.tmp` entry), and that a
    successful one writes only the model, its `.report.json` (and `.data`), all loadable.

Most cases call `slimq.cli.main(argv)` in-process; signals, concurrency, QAT (which would train if its
validation let a bad value through), memory bombs (run under an address-space limit) use a child process.
The child-process tests are named test_signal_* / test_concurrent_*: `-k "not signal and not concurrent"`
runs the in-process corpus alone.

Set SLIMQ_CORPUS_LOG=/path/file.jsonl to get one JSON line per case (rc, problems, last traceback frame).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest

import corpus_helpers as h

S = ["quantize", "static"]
D = ["quantize", "dynamic"]
FAST_BENCH = ["--threads", "1", "--iters", "1", "--warmup", "0", "--min-time", "0", "--rounds", "1"]
FAIL_CODES = (2, 4)


# ----------------------------------------------------------------------------------------------
# the case registry


@dataclass
class Spec:
    argv: list
    outputs: list = field(default_factory=list)  # extra paths a successful run may write (besides -o's)
    replaceable: list = field(default_factory=list)  # pre-existing files (old outputs) a successful run may replace
    check: Callable | None = None  # (run) -> list of problems, run after the generic checks
    mode: str = "inproc"  # inproc | sub
    cwd: Path | None = None  # default: an empty folder beside the inputs
    mem_gib: float | None = None
    timeout: float = 120


@dataclass
class Case:
    id: str
    cls: str
    build: Callable[[Path, Path], Spec]  # (work dir, tmp root) -> Spec
    rc: tuple
    msg: str | None = None  # regex (re.I | re.M) the output must match
    forbid: str | None = None  # regex the output must not match
    msg_rcs: tuple | None = None  # only demand `msg` for these exit codes (default: all)


CASES: list[Case] = []


def case(id, cls, rc, msg=None, forbid=None, msg_rcs=None):
    rc = rc if isinstance(rc, tuple) else (rc,)

    def deco(fn):
        CASES.append(Case(id, cls, fn, rc, msg, forbid, msg_rcs))
        return fn
    return deco


def add(id, cls, rc, build, msg=None, forbid=None, msg_rcs=None):
    case(id, cls, rc, msg, forbid, msg_rcs)(build)


# ----------------------------------------------------------------------------------------------
# common inputs


def conv_in(w: Path, name="in.onnx", model=None) -> Path:
    return h.save(model if model is not None else h.named_conv(), w / name)


def npy(w: Path, a: np.ndarray, name="calib.npy") -> Path:
    p = w / name
    np.save(p, a)
    return p


def conv_files(w: Path):
    return conv_in(w), npy(w, h.conv_calib())


def mlp_in(w: Path, name="mlp.onnx") -> Path:
    return h.save(h.mlp(), w / name)


def image_folder(w: Path, n=6, value=None, name="imgs") -> Path:
    d = w / name
    d.mkdir()
    for i in range(n):
        h.write_rgb_png(d / f"img{i}.png", 20, seed=i, value=value)
    return d


def static_argv(model, calib, out, *extra):
    return [*S, model, "--calib", calib, "-o", out, *extra]


def recipe(w: Path, text: str | bytes, name="recipe.yaml") -> Path:
    p = w / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


# ----------------------------------------------------------------------------------------------
# 1. external-data tricks

def _ext_model(w, location, data_path=None, **kw):
    return h.save_external(h.named_conv(), w / "in.onnx", location, data_path, **kw)


def _input_still_loads(path):
    def check(run):
        why = h.load_ok(path)
        return [] if why is None else [f"input {path.name} no longer loads: {why}"]
    return check


@case("ext_data_named_like_output_dynamic_flag", "1 external data", (0, 2), r"q\.onnx\.data", msg_rcs=(2,))
def _(w, t):
    m = _ext_model(w, "q.onnx.data")
    return Spec([*D, m, "-o", w / "q.onnx", "--external-data"], check=_input_still_loads(m))


@case("ext_data_named_like_output_dynamic_flag_cwd_model_folder", "1 external data", (0, 2), r"q\.onnx\.data",
      msg_rcs=(2,))
def _(w, t):
    m = _ext_model(w, "q.onnx.data")
    return Spec([*D, "in.onnx", "-o", "q.onnx", "--external-data"], check=_input_still_loads(m), cwd=w)


@case("ext_data_named_like_output_dynamic_noflag", "1 external data", (0, 2), r"q\.onnx\.data", msg_rcs=(2,))
def _(w, t):
    m = _ext_model(w, "q.onnx.data")
    return Spec([*D, m, "-o", w / "q.onnx"], check=_input_still_loads(m))


@case("ext_data_named_like_output_static", "1 external data", (0, 2), r"q\.onnx\.data", msg_rcs=(2,))
def _(w, t):
    m = _ext_model(w, "q.onnx.data")
    return Spec(static_argv(m, npy(w, h.conv_calib()), w / "q.onnx"), check=_input_still_loads(m))


@case("ext_output_is_inputs_data_file_dynamic", "1 external data", 2, r"external[- ]data")
def _(w, t):
    m = _ext_model(w, "weights.onnx")
    return Spec([*D, m, "-o", w / "weights.onnx"], check=_input_still_loads(m))


@case("ext_output_is_inputs_data_file_static", "1 external data", 2, r"external[- ]data")
def _(w, t):
    m = _ext_model(w, "weights.onnx")
    return Spec(static_argv(m, npy(w, h.conv_calib()), w / "weights.onnx"), check=_input_still_loads(m))


def _ext_argv(cmd, w, m):
    if cmd == "dynamic":
        return [*D, m, "-o", w / "q.onnx"]
    if cmd == "static":
        return static_argv(m, npy(w, h.conv_calib()), w / "q.onnx")
    return ["inspect", m]


for _cmd in ("dynamic", "static", "inspect"):
    add(f"ext_parent_escape_{_cmd}", "1 external data", 2,
        lambda w, t, c=_cmd: Spec(_ext_argv(c, w, _ext_model(w, "../x.bin", t / "x.bin"))), r"outside")
    add(f"ext_absolute_path_{_cmd}", "1 external data", 2,
        lambda w, t, c=_cmd: Spec(_ext_argv(c, w, _ext_model(w, str(t / "abs" / "x.bin"), t / "abs" / "x.bin"))),
        r"(outside|absolute)")
    add(f"ext_missing_{_cmd}", "1 external data", 2,
        lambda w, t, c=_cmd: Spec(_ext_argv(c, w, _ext_model(w, "gone.bin", False))), r"(missing|not found)")
    add(f"ext_shorter_than_declared_{_cmd}", "1 external data", 2,
        lambda w, t, c=_cmd: Spec(_ext_argv(c, w, _ext_model(w, "in.data", declare_extra=64))),
        r"(shorter|truncated|past the end|beyond|declares? \d+ bytes|length)")

add("ext_offset_past_end_dynamic", "1 external data", 2,
    lambda w, t: Spec([*D, _ext_model(w, "in.data", offset_extra=10**6), "-o", w / "q.onnx"]),
    r"(shorter|truncated|past the end|beyond|offset|length)")


@case("ext_location_is_directory_dynamic", "1 external data", 2, r"(directory|not a file)")
def _(w, t):
    (w / "datadir").mkdir()
    return Spec([*D, _ext_model(w, "datadir", t / "elsewhere.bin"), "-o", w / "q.onnx"])


@case("ext_symlink_escape_dynamic", "1 external data", 2, r"outside")
def _(w, t):
    (t / "outside").mkdir()
    m = _ext_model(w, "link.bin", t / "outside" / "x.bin")
    (w / "link.bin").symlink_to(t / "outside" / "x.bin")
    return Spec([*D, m, "-o", w / "q.onnx"])


@case("ext_missing_bench", "1 external data", 2, r"(missing|not found)")
def _(w, t):
    return Spec(["bench", _ext_model(w, "gone.bin", False), *FAST_BENCH])


@case("ext_missing_debug", "1 external data", 2, r"(missing|not found)")
def _(w, t):
    m = _ext_model(w, "gone.bin", False)
    return Spec(["debug", m, conv_in(w, "other.onnx"), "--data", npy(w, h.conv_calib(8))])


@case("ext_rerun_existing_output_in_cwd_dynamic", "1 external data", 0)
def _(w, t):
    mlp_in(w)
    h.save(h.mlp(), w / "q.onnx")  # the outputs of an earlier run of the same command
    (w / "q.onnx.data").write_bytes(os.urandom(4096))
    return Spec([*D, "mlp.onnx", "-o", "q.onnx", "--external-data"], cwd=w,  # relative paths, as typed in a shell
                replaceable=[w / "q.onnx", w / "q.onnx.data"])


# ----------------------------------------------------------------------------------------------
# 2. skipping the first Conv


def _first_conv_float(out: Path):
    def check(run):
        if not out.exists():
            return []
        m = onnx.load(str(out))
        inits = {t.name: t for t in m.graph.initializer}
        convs = [n for n in m.graph.node if n.op_type == "Conv"]
        if not convs:
            return ["no Conv left in the output"]
        first = convs[0]
        w = inits.get(first.input[1])
        if w is None or w.data_type != onnx.TensorProto.FLOAT:
            return [f"the first Conv ({first.name}) does not read a float weight: it was quantized despite the skip"]
        return []
    return check


for _label, _extra in {"nodes": ["--skip-nodes", "conv1"], "regex": ["--skip-regex", "^conv1$"],
                       "nodes_tensorrt": ["--skip-nodes", "conv1", "--target", "tensorrt"],
                       "nodes_arm": ["--skip-nodes", "conv1", "--target", "arm"],
                       "regex_openvino": ["--skip-regex", "^conv1$", "--target", "openvino"],
                       "nodes_per_tensor": ["--skip-nodes", "conv1", "--per-tensor"]}.items():
    add(f"skip_first_conv_{_label}_static", "2 skip first conv", (0, 3),
        lambda w, t, e=_extra: Spec(static_argv(*conv_files(w), w / "q.onnx", *e), check=_first_conv_float(w / "q.onnx")))


@case("skip_first_conv_recipe_static", "2 skip first conv", (0, 3))
def _(w, t):
    r = recipe(w, "static:\n  skip:\n    names: [conv1]\n")
    return Spec(static_argv(*conv_files(w), w / "q.onnx", "--recipe", r), check=_first_conv_float(w / "q.onnx"))


@case("skip_first_conv_dynamic", "2 skip first conv", (0, 3))
def _(w, t):
    return Spec([*D, conv_in(w), "-o", w / "q.onnx", "--skip-nodes", "conv1"], check=_first_conv_float(w / "q.onnx"))


add("skip_all_convs_regex_static", "2 skip first conv", (0, 3),
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--skip-regex", "^conv")))
add("skip_last_gemm_static", "2 skip first conv", (0, 3),
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--skip-nodes", "fc")))
add("skip_unknown_node_static", "2 skip first conv", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--skip-nodes", "conv9")), r'"conv9".*not in the model')
add("skip_invalid_regex_static", "2 skip first conv", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--skip-regex", "([")), r"regular expression")
add("skip_ops_typo_static", "2 skip first conv", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--skip-ops", "Convv")), r'Did you mean "Conv"')


# ----------------------------------------------------------------------------------------------
# 3. degenerate calibration data

DEGENERATE = r"(all[- ]zeros?|zeros|constant|degenerate|no variation|zero range)"  # paths are scrubbed first

add("degen_all_zero_static", "3 degenerate calibration", (2, 3),
    lambda w, t: Spec(static_argv(conv_in(w), npy(w, np.zeros((48, 3, 16, 16), np.float32)), w / "q.onnx")), DEGENERATE)
add("degen_constant_static", "3 degenerate calibration", (2, 3),
    lambda w, t: Spec(static_argv(conv_in(w), npy(w, np.full((48, 3, 16, 16), 0.5, np.float32)), w / "q.onnx")),
    DEGENERATE)
add("degen_all_zero_strict_static", "3 degenerate calibration", (2, 4),
    lambda w, t: Spec(static_argv(conv_in(w), npy(w, np.zeros((48, 3, 16, 16), np.float32)), w / "q.onnx",
                                  "--strict")), DEGENERATE)
add("degen_all_zero_mlp_static", "3 degenerate calibration", (2, 3),
    lambda w, t: Spec(static_argv(mlp_in(w), npy(w, np.zeros((32, 32), np.float32)), w / "q.onnx")), DEGENERATE)
add("degen_black_images_static", "3 degenerate calibration", (2, 3),
    lambda w, t: Spec(static_argv(conv_in(w), image_folder(w, 8, value=0), w / "q.onnx", "--size", "16,16")),
    DEGENERATE)
add("degen_zero_check_data_dynamic", "3 degenerate calibration", (2, 3),
    lambda w, t: Spec([*D, mlp_in(w), "-o", w / "q.onnx", "--check-data", npy(w, np.zeros((8, 32), np.float32))]),
    DEGENERATE)


# ----------------------------------------------------------------------------------------------
# 4. targets whose int8 kernels onnxruntime's CPU EP does not run

for _label, _extra in {"tensorrt": ["--target", "tensorrt"], "arm": ["--target", "arm"],
                       "tensorrt_min_max": ["--target", "tensorrt", "--algo", "min_max"],
                       "arm_per_tensor": ["--target", "arm", "--per-tensor"]}.items():
    add(f"target_{_label}_good_data", "4 targets", 0,
        lambda w, t, e=_extra: Spec(static_argv(*conv_files(w), w / "q.onnx", *e)), forbid=r"of MACs run in int8")


# ----------------------------------------------------------------------------------------------
# 5. recipes with values of the wrong type

RECIPES = {
    "batch_size_string": ('static:\n  batch_size: "8"\n', r"batch_size"),
    "max_samples_1e9_string": ("static:\n  max_samples: 1e9\n", r"max_samples"),
    "skip_as_list": ("static:\n  skip: [conv1]\n", r"skip"),
    "skip_names_as_string": ("static:\n  skip:\n    names: conv1\n",
                             r"names.{0,60}(must be|should be|expected|not a list|a list of)"),
    "op_types_as_string": ("static:\n  op_types: Conv\n", r"op_types"),
    "non_utf8": (b"static:\n  algo: h\xe9st\xff\xfe\n", r"(utf-?8|encoding|decode)"),
    "python_object_tag": ("static: !!python/object/apply:os.getcwd []\n", r"(python/object|tag|not valid YAML)"),
    "top_level_list": ("- static\n- preprocess\n", r"mapping"),
    "unknown_section": ("statik:\n  algo: hist\n", r'"statik"'),
    "unknown_static_key": ("static:\n  algorithm: hist\n", r'"algorithm"'),
    "unknown_preprocess_key": ("preprocess:\n  sizes: [16, 16]\n", r'"sizes"'),
    "static_section_is_list": ("static: [1, 2]\n", r"static"),
    "negative_batch_size": ("static:\n  batch_size: -4\n", r"batch_size"),
    "negative_max_samples": ("static:\n  max_samples: -1\n", r"max_samples"),
    "negative_holdout": ("static:\n  holdout: -3\n", r"holdout"),
    "min_cosine_5": ("static:\n  min_cosine: 5\n", r"min_cosine"),
    "min_cosine_negative": ("static:\n  min_cosine: -0.5\n", r"min_cosine"),
    "bool_batch_size": ("static:\n  batch_size: true\n", r"batch_size"),
    "bool_max_samples": ("static:\n  max_samples: yes\n", r"max_samples"),
    "hist_percent_string": ('static:\n  hist_percent: "0.99"\n', r"hist_percent"),
    "bins_float": ("static:\n  bins: 2048.5\n", r"bins"),
    "algo_int": ("static:\n  algo: 5\n", r"(algo|algorithm)"),
    "per_channel_string": ('static:\n  per_channel: "sometimes"\n', r"per_channel"),
    "memory_budget_zero": ("static:\n  memory_budget_mb: 0\n", r"memory_budget_mb"),
}
for _label, (_text, _rx) in RECIPES.items():
    add(f"recipe_{_label}", "5 recipes", 2,
        lambda w, t, x=_text: Spec(static_argv(*conv_files(w), w / "q.onnx", "--recipe", recipe(w, x))), _rx)

add("recipe_preprocess_size_string", "5 recipes", 2,
    lambda w, t: Spec(static_argv(conv_in(w), image_folder(w), w / "q.onnx", "--recipe",
                                  recipe(w, "preprocess:\n  size: '16'\n"))), r"size")
add("recipe_preprocess_mean_string", "5 recipes", 2,
    lambda w, t: Spec(static_argv(conv_in(w), image_folder(w), w / "q.onnx", "--recipe",
                                  recipe(w, "preprocess:\n  mean: abc\n"))), r"mean")
add("recipe_missing_file", "5 recipes", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--recipe", w / "nope.yaml")), r"not found")
add("recipe_is_directory", "5 recipes", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--recipe", w)), r"(directory|cannot read)")

QAT_RECIPES = {
    "batch_size_string": ('batch_size: "8"\n', r"batch_size"),
    "lr_1e-3_string": ("lr: 1e-3\n", r"\blr\b"),
    "non_utf8": (b"model: fmnist_r\xe9snet\xff\n", r"(utf-?8|encoding|decode)"),
    "python_object_tag": ("model: !!python/object/apply:os.getcwd []\n", r"(python/object|tag|not valid YAML)"),
    "top_level_list": ("- model\n- epochs\n", r"mapping"),
    "unknown_key": ("epochz: 1\n", r'"epochz"'),
    "negative_freeze_bn_step": ("freeze_bn_step: -5\n", r"freeze_bn_step"),
    "epochs_bool": ("epochs: true\n", r"epochs"),
}
for _label, (_text, _rx) in QAT_RECIPES.items():
    add(f"qat_recipe_{_label}", "5 recipes", 2,
        lambda w, t, x=_text: Spec(["quantize", "qat", "-o", w / "q.onnx", "--recipe", recipe(w, x)], mode="sub",
                                   timeout=90), _rx)
add("qat_recipe_is_directory", "5 recipes", 2,
    lambda w, t: Spec(["quantize", "qat", "-o", w / "q.onnx", "--recipe", w], mode="sub", timeout=90),
    r"(directory|cannot read)")
add("qat_epochs_zero", "5 recipes", 2,
    lambda w, t: Spec(["quantize", "qat", "-o", w / "q.onnx", "--epochs", "0"], mode="sub", timeout=90), r"epochs")
add("qat_variant_typo", "5 recipes", 2,
    lambda w, t: Spec(["quantize", "qat", "-o", w / "q.onnx", "--variant", "lsqq"], mode="sub", timeout=90),
    r'Did you mean "lsq"')


# ----------------------------------------------------------------------------------------------
# 6. output path problems

UNWRITABLE = r"(writ|permission|read-only|not allowed)"


def _out_dir(w):
    (w / "q.onnx").mkdir()
    return w / "q.onnx"


def _under_file(w):
    (w / "file.txt").write_text("a regular file")
    return w / "file.txt" / "q.onnx"


def _symlink_to_input(w, m):
    (w / "link.onnx").symlink_to(m)
    return w / "link.onnx"


def _hardlink_to_input(w, m):
    os.link(m, w / "hard.onnx")
    return w / "hard.onnx"


def _report_dir(w):
    (w / "q.onnx.report.json").mkdir()
    return w / "q.onnx"


def _other_spelling(w, m):
    (w / "sub").mkdir()
    return w / "sub" / ".." / m.name


OUTS = {
    "existing_directory": (lambda w, m: _out_dir(w), r"directory"),
    "proc_readonly": (lambda w, m: Path("/proc/slimq_corpus_q.onnx"), UNWRITABLE),
    "under_regular_file": (lambda w, m: _under_file(w), r"(not a (directory|folder)|is a file|does not exist)"),
    "is_input": (lambda w, m: m, r"input"),
    "symlink_to_input": (_symlink_to_input, r"input"),
    "hardlink_to_input": (_hardlink_to_input, r"input"),
    "input_other_spelling": (_other_spelling, r"input"),
    "suffix_not_onnx": (lambda w, m: w / "q.bin", r"\.onnx"),
    "report_path_is_directory": (lambda w, m: _report_dir(w), r"report"),
    "missing_folder": (lambda w, m: w / "nope" / "q.onnx", r"does not exist"),
    "empty_string": (lambda w, m: "", r"(\.onnx|output)"),
}
for _label, (_make, _rx) in OUTS.items():
    add(f"out_{_label}_static", "6 output paths", 2,
        lambda w, t, mk=_make: Spec(static_argv(conv_in(w), npy(w, h.conv_calib()), mk(w, w / "in.onnx"))), _rx)
    if _label in ("existing_directory", "proc_readonly", "under_regular_file", "symlink_to_input", "is_input",
                  "suffix_not_onnx", "report_path_is_directory"):
        add(f"out_{_label}_dynamic", "6 output paths", 2,
            lambda w, t, mk=_make: Spec([*D, mlp_in(w, "in.onnx"), "-o", mk(w, w / "in.onnx")]), _rx)


@case("out_data_path_is_directory_dynamic_external", "6 output paths", 2, r"(q\.onnx\.data|directory)")
def _(w, t):
    (w / "q.onnx.data").mkdir()
    return Spec([*D, mlp_in(w), "-o", w / "q.onnx", "--external-data"])


add("out_optimize_is_input", "6 output paths", 2, lambda w, t: Spec(["optimize", conv_in(w), "-o", w / "in.onnx"]),
    r"input")
add("out_optimize_existing_directory", "6 output paths", 2,
    lambda w, t: Spec(["optimize", conv_in(w), "-o", _out_dir(w)]), r"directory")
add("out_bench_json_is_input_model", "6 output paths", 2,
    lambda w, t: Spec(["bench", conv_in(w), *FAST_BENCH, "--json", w / "in.onnx"]),
    r"(overwrit|is the (input|model)|input model)")
add("out_bench_json_is_directory", "6 output paths", 2,
    lambda w, t: Spec(["bench", conv_in(w), *FAST_BENCH, "--json", w]), r"(directory|--json)")
add("out_bench_png_under_file", "6 output paths", 2,
    lambda w, t: Spec(["bench", conv_in(w), *FAST_BENCH, "--png", _under_file(w).with_suffix(".png")]),
    r"(not a (directory|folder)|is a file|does not exist|--png)")


def _old_outputs(w):
    h.save(h.mlp(), w / "q.onnx")  # an earlier run's model and report must survive a failed run
    (w / "q.onnx.report.json").write_text('{"old": true}')


@case("out_failed_run_keeps_old_output_static", "6 output paths", 2, r"NaN")
def _(w, t):
    _old_outputs(w)
    a = h.conv_calib()
    a[3, 0, 0, 0] = np.nan
    return Spec(static_argv(conv_in(w), npy(w, a), w / "q.onnx"))


@case("out_refusal_keeps_old_output_dynamic", "6 output paths", 4, r"(refus|nothing was written)")
def _(w, t):
    _old_outputs(w)
    return Spec([*D, mlp_in(w, "in.onnx"), "-o", w / "q.onnx", "--on-collapse", "refuse", "--min-cosine", "1.0"])


@case("out_refusal_strict_static", "6 output paths", 4, r"(fidelity|cosine)")
def _(w, t):
    r = recipe(w, "static:\n  min_cosine: 1.0\n")  # no INT8 model reaches cosine 1.0: --strict refuses
    return Spec(static_argv(*conv_files(w), w / "q.onnx", "--strict", "--recipe", r))


# ----------------------------------------------------------------------------------------------
# 7. corrupt, truncated, empty, non-ONNX and unusual models

NOT_ONNX = r"(not a valid ONNX|not an ONNX|corrupt|truncated)"


def _model_file(kind: str, w: Path) -> Path:
    p = w / "bad.onnx"
    good = h.named_conv().SerializeToString()
    if kind == "random_bytes":
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    elif kind == "truncated_half":
        p.write_bytes(good[: len(good) // 2])
    elif kind == "truncated_before_opset":
        p.write_bytes(h.with_opset(h.named_conv(), None).SerializeToString())
        assert good.startswith(p.read_bytes())  # a prefix of the real file: the tail (opset_import) is cut off
    elif kind == "zip":
        h.write_zip(p)
    elif kind == "text":
        p.write_text("graph {\n  node: Conv\n}\n" * 20)
    elif kind == "empty":
        p.write_bytes(b"")
    return p


for _kind in ("random_bytes", "truncated_half", "zip", "text", "empty"):
    add(f"model_{_kind}_static", "7 corrupt models", 2,
        lambda w, t, k=_kind: Spec(static_argv(_model_file(k, w), npy(w, h.conv_calib()), w / "q.onnx")),
        NOT_ONNX if _kind != "empty" else r"empty")
for _kind in ("random_bytes", "truncated_half"):
    add(f"model_{_kind}_dynamic", "7 corrupt models", 2,
        lambda w, t, k=_kind: Spec([*D, _model_file(k, w), "-o", w / "q.onnx"]), NOT_ONNX)
    add(f"model_{_kind}_inspect", "7 corrupt models", 2,
        lambda w, t, k=_kind: Spec(["inspect", _model_file(k, w)]), NOT_ONNX, forbid=r"opset 0\b")
add("model_random_bytes_optimize", "7 corrupt models", 2,
    lambda w, t: Spec(["optimize", _model_file("random_bytes", w), "-o", w / "q.onnx"]), NOT_ONNX)
add("model_truncated_before_opset_inspect", "7 corrupt models", 2,
    lambda w, t: Spec(["inspect", _model_file("truncated_before_opset", w)]),
    r"(truncat|corrupt|no (default[- ])?opset|opset_import|declares no opset)", forbid=r"opset 0\b")
add("model_truncated_before_opset_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(_model_file("truncated_before_opset", w), npy(w, h.conv_calib()), w / "q.onnx")),
    r"(truncat|corrupt|no (default[- ])?opset|opset_import|declares no opset)", forbid=r"opset 0\b")
add("model_opset0_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(conv_in(w, model=h.with_opset(h.named_conv(), 0)), npy(w, h.conv_calib()),
                                  w / "q.onnx")), r"opset")
add("model_opset3_dynamic", "7 corrupt models", 2,
    lambda w, t: Spec([*D, conv_in(w, model=h.with_opset(h.named_conv(), 3)), "-o", w / "q.onnx"]), r"opset 3")
add("model_no_nodes_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(h.save(h.no_nodes_model(), w / "in.onnx"), npy(w, np.ones((8, 4), np.float32)),
                                  w / "q.onnx")), r"(no nodes|empty graph|nothing|no op)")
add("model_no_nodes_dynamic", "7 corrupt models", 2,
    lambda w, t: Spec([*D, h.save(h.no_nodes_model(), w / "in.onnx"), "-o", w / "q.onnx"]),
    r"(no nodes|empty graph|nothing|no op)")
add("model_no_weights_dynamic", "7 corrupt models", 2,
    lambda w, t: Spec([*D, h.save(h.no_weights_model(), w / "in.onnx"), "-o", w / "q.onnx"]), r"nothing")
add("model_directory_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(w, npy(w, h.conv_calib()), w / "q.onnx")), r"directory")
add("model_missing_dynamic", "7 corrupt models", 2,
    lambda w, t: Spec([*D, w / "nope.onnx", "-o", w / "q.onnx"]), r"not found")
add("model_if_subgraph_conv_static", "7 corrupt models", (2, 3),
    lambda w, t: Spec(static_argv(h.save(h.if_conv_model(), w / "in.onnx"),
                                  npy(w, np.random.default_rng(0).standard_normal((24, 3, 8, 8)).astype(np.float32)),
                                  w / "q.onnx")), r"(subgraph|then_conv|else_conv|\bIf\b)")
add("model_if_subgraph_conv_dynamic", "7 corrupt models", (0, 2, 3),
    lambda w, t: Spec([*D, h.save(h.if_conv_model(), w / "in.onnx"), "-o", w / "q.onnx"]),
    r"(subgraph|then_conv|else_conv|\bIf\b)")
add("model_zero_size_dim_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(h.save(h.with_input_dims(h.named_conv(), ["N", 3, 0, 16]), w / "in.onnx"),
                                  npy(w, np.zeros((8, 3, 0, 16), np.float32)), w / "q.onnx")),
    r"(zero[- ]size|size 0|empty|0 elements|no elements)")
add("model_zero_size_dim_dynamic", "7 corrupt models", 2,
    lambda w, t: Spec([*D, h.save(h.with_input_dims(h.named_conv(), ["N", 3, 0, 16]), w / "in.onnx"),
                       "-o", w / "q.onnx"]), r"(zero[- ]size|size 0|empty|0 elements|no elements|dimension)")
add("model_huge_dims_dynamic", "7 corrupt models", 2,
    lambda w, t: Spec([*D, h.save(h.huge_input_model(), w / "in.onnx"), "-o", w / "q.onnx"], mode="sub",
                      mem_gib=6, timeout=90), r"(too large|too big|GB|GiB|memory|huge)")
add("model_ir_version_99_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(conv_in(w, model=_ir99()), npy(w, h.conv_calib()), w / "q.onnx")),
    r"(IR version|ir_version)")
add("model_custom_op_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(conv_in(w, model=h.custom_op_model()), npy(w, h.conv_calib()), w / "q.onnx")),
    r"FancyActivation")
add("model_custom_op_dynamic", "7 corrupt models", 2,
    lambda w, t: Spec([*D, conv_in(w, model=h.custom_op_model()), "-o", w / "q.onnx"]), r"FancyActivation")
add("model_dangling_input_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(conv_in(w, model=h.dangling_input_model()), npy(w, h.conv_calib()), w / "q.onnx")),
    r"ghost_tensor")
add("model_cycle_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(conv_in(w, model=h.cycle_model()), npy(w, h.conv_calib()), w / "q.onnx")),
    r"(cycle|cyclic|topolog|sorted)")
add("model_short_initializer_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(conv_in(w, model=h.short_initializer_model()), npy(w, h.conv_calib()),
                                  w / "q.onnx")), r"\bw2\b")
add("model_string_input_static", "7 corrupt models", 2,
    lambda w, t: Spec(static_argv(conv_in(w, model=h.string_input_model()), npy(w, h.conv_calib()), w / "q.onnx")),
    r"(string|dtype|type)")
add("model_corrupt_second_bench", "7 corrupt models", 2,
    lambda w, t: Spec(["bench", conv_in(w), _model_file("truncated_half", w), *FAST_BENCH]), NOT_ONNX)
add("model_corrupt_int8_debug", "7 corrupt models", 2,
    lambda w, t: Spec(["debug", conv_in(w), _model_file("random_bytes", w), "--data", npy(w, h.conv_calib(8))]),
    NOT_ONNX)


def _ir99():
    m = h.named_conv()
    m.ir_version = 99
    return m


# ----------------------------------------------------------------------------------------------
# 8. calibration data problems


def _with(a, idx, value):
    a = a.copy()
    a[idx] = value
    return a


def _npz(w, name="calib.npz", **arrays):
    p = w / name
    np.savez(p, **arrays)
    return p


def _truncated_npy(w):
    p = npy(w, h.conv_calib(), "full.npy")
    b = p.read_bytes()
    p.unlink()
    q = w / "calib.npy"
    q.write_bytes(b[: len(b) // 3])
    return q


def _emb_ids(value, n=16):
    return np.full((n, 6), value, np.int64)


def _mixed_folder(w):
    d = w / "arrays"
    d.mkdir()
    np.save(d / "a.npy", h.conv_calib(4))
    np.save(d / "b.npy", np.zeros((4, 3, 8, 8), np.float32))
    return d


def _fake_png_folder(w):
    d = image_folder(w, 3)
    (d / "zz_notes.png").write_text("this is not an image")
    return d


def _bomb_folder(w):
    d = w / "imgs"
    d.mkdir()
    h.write_png(d / "bomb.png", 30000, 30000, bit_depth=1)
    return d


DATA = {
    "nan": (lambda w: npy(w, _with(h.conv_calib(), (3, 0, 0, 0), np.nan)), r"NaN"),
    "inf": (lambda w: npy(w, _with(h.conv_calib(), (5, 1, 2, 2), np.inf)), r"Inf"),
    "nan_last_sample": (lambda w: npy(w, _with(h.conv_calib(), (47, 2, 3, 3), np.nan)), r"NaN"),
    "wrong_shape": (lambda w: npy(w, np.zeros((8, 3, 8, 8), np.float32) + 1), r"shape"),
    "wrong_rank": (lambda w: npy(w, np.ones((8, 768), np.float32)), r"(rank|shape)"),
    "scalar_npy": (lambda w: npy(w, np.float32(1.0)), r"(rank|shape|scalar)"),
    "wrong_dtype": (lambda w: npy(w, np.ones((8, 3, 16, 16), np.int64)), r"dtype"),
    "wrong_npz_names": (lambda w: _npz(w, image=h.conv_calib(), extra=h.conv_calib()), r'"(image|extra)"'),
    "empty_folder": (lambda w: (w / "empty").mkdir() or (w / "empty"), r"(no \.npy|empty|no images)"),
    "fake_png": (_fake_png_folder, r"(cannot read image|not an image|zz_notes\.png)"),
    "pickled_npy": (lambda w: h.write_pickled_npy(w / "calib.npy"), r"(pickle|object)"),
    "pickled_npz": (lambda w: h.write_pickled_npz(w / "calib.npz"), r"(pickle|object)"),
    "truncated_npy": (_truncated_npy, r"cannot read"),
    "txt_file": (lambda w: (w / "calib.txt").write_text("1 2 3") and (w / "calib.txt"), r"unsupported"),
    "missing_path": (lambda w: w / "nope.npy", r"not found"),
    "zero_samples": (lambda w: npy(w, np.zeros((0, 3, 16, 16), np.float32)), r"(empty|no samples|0 samples)"),
    "mixed_shapes_folder": (_mixed_folder, r"shape"),
    "model_as_calib": (lambda w: conv_in(w, "other.onnx"), r"unsupported"),
}
for _label, (_make, _rx) in DATA.items():
    add(f"data_{_label}_static", "8 calibration data", 2,
        lambda w, t, mk=_make: Spec(static_argv(conv_in(w), mk(w), w / "q.onnx")), _rx)

add("data_decompression_bomb_png_static", "8 calibration data", 2,
    lambda w, t: Spec(static_argv(conv_in(w), _bomb_folder(w), w / "q.onnx"), mode="sub", mem_gib=4, timeout=90),
    r"(decompression|too large|too big|pixels|bomb)")
add("data_two_input_count_mismatch_static", "8 calibration data", 2,
    lambda w, t: Spec(static_argv(h.save(h.two_input_model(), w / "in.onnx"),
                                  _npz(w, x1=np.ones((8, 32), np.float32), x2=np.ones((5, 32), np.float32)),
                                  w / "q.onnx")), r"different numbers")
add("data_images_for_two_input_model_static", "8 calibration data", 2,
    lambda w, t: Spec(static_argv(h.save(h.two_input_model(), w / "in.onnx"), image_folder(w), w / "q.onnx")),
    r"(single-input|inputs)")
add("data_images_dynamic_hw_no_size_static", "8 calibration data", 2,
    lambda w, t: Spec(static_argv(h.save(h.with_input_dims(h.named_conv(), ["N", 3, "H", "W"]), w / "in.onnx"),
                                  image_folder(w), w / "q.onnx")), r"size")
for _label, _value in {"out_of_range": 10**6, "negative_out_of_range": -1000}.items():
    add(f"data_embedding_ids_{_label}_static", "8 calibration data", 2,
        lambda w, t, v=_value: Spec(static_argv(h.save(h.embedding_model(), w / "in.onnx"),
                                                _npz(w, ids=_emb_ids(v)), w / "q.onnx")),
        r"(out of range|outside|vocab|index|table|rows|bounds)")
add("data_embedding_ids_out_of_range_dynamic", "8 calibration data", 2,
    lambda w, t: Spec([*D, h.save(h.embedding_model(), w / "in.onnx"), "-o", w / "q.onnx", "--check-data",
                       _npz(w, ids=_emb_ids(10**6))]), r"(out of range|outside|vocab|index|table|rows|bounds)")


def _calibrated_on(n):
    def check(run):
        rep = h.read_report(Path(run.out_path))
        if rep is None:
            return ["no report written"]
        # any int under a key path mentioning calibration whose own key counts samples
        # (the report schema nests it: details.calibration.samples)
        found = [(k, v) for k, v in h.find_keys(rep, re.compile(r".")) if re.search(r"calib", k, re.I)
                 and isinstance(v, int) and not isinstance(v, bool) and re.search(r"sample|count|num|^n_", k.split(".")[-1], re.I)]
        if not found:
            return [f"the report records no calibration sample count (keys: {sorted(rep)})"]
        if not any(v == n for _, v in found):
            return [f"calibrated on {found} samples, not {n}"]
        return []
    return check


@case("data_max_samples_4_static", "8 calibration data", (0, 3))
def _(w, t):
    spec = Spec(static_argv(*conv_files(w), w / "q.onnx", "--max-samples", "4"))
    spec.check = _calibrated_on(4)
    return spec


@case("data_max_samples_4_progress_static", "8 calibration data", (0, 3))
def _(w, t):
    def check(run):  # with --batch-size 1 the progress bar counts calibration samples
        totals = re.findall(r"calibrating \([^)]*\):.*?\| *\d+/(\d+)", run.text)
        if not totals:
            return ["no calibration progress line to count samples in"]
        return [] if int(totals[-1]) == 4 else [f"calibrated on {totals[-1]} samples, not 4 (--max-samples 4)"]
    return Spec(static_argv(*conv_files(w), w / "q.onnx", "--max-samples", "4", "--batch-size", "1"), check=check)


PREPROCESS_IGNORED = r"(--mean|--std|--size|--color|--layout|mean|std|size|preprocess).{0,80}(ignor|only (apply|for|used)|image|not used|no effect)"
add("data_preprocess_flags_with_npz_static", "8 calibration data", (2, 3),
    lambda w, t: Spec(static_argv(conv_in(w), _npz(w, input=h.conv_calib()), w / "q.onnx",
                                  "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2")), PREPROCESS_IGNORED)
add("data_size_flag_with_npy_static", "8 calibration data", (2, 3),
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--size", "32,32", "--layout", "NHWC")),
    PREPROCESS_IGNORED)

IMG_FLAGS = {
    "size_3": (["--size", "3"], r"size"),
    "size_0_0": (["--size", "0,0"], r"size"),
    "size_negative": (["--size", "-4,-4"], r"size"),
    "size_abc": (["--size", "abc"], r"(size|numbers)"),
    "mean_two_values": (["--mean", "0.5,0.5"], r"mean"),
    "std_zero": (["--std", "0,0,0"], r"std"),
    "std_nan": (["--std", "nan,1,1"], r"std"),
    "resize_short_zero": (["--resize-short", "0"], r"resize"),
    "resize_short_negative": (["--resize-short", "-5"], r"resize"),
}
for _label, (_flags, _rx) in IMG_FLAGS.items():
    add(f"data_images_{_label}_static", "8 calibration data", 2,
        lambda w, t, f=_flags: Spec(static_argv(conv_in(w), image_folder(w), w / "q.onnx", *f)), _rx)

add("data_max_samples_zero_static", "8 calibration data", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--max-samples", "0")), r"max_samples")
add("data_batch_size_zero_static", "8 calibration data", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--batch-size", "0")), r"batch_size")
add("data_debug_nan", "8 calibration data", 2,
    lambda w, t: Spec(["debug", conv_in(w), conv_in(w, "other.onnx"), "--data",
                       npy(w, _with(h.conv_calib(8), (0, 0, 0, 0), np.nan))]), r"NaN")
add("data_check_data_wrong_shape_dynamic", "8 calibration data", 2,
    lambda w, t: Spec([*D, mlp_in(w), "-o", w / "q.onnx", "--check-data", npy(w, np.ones((8, 31), np.float32))]),
    r"shape")
add("data_check_data_nan_dynamic", "8 calibration data", 2,
    lambda w, t: Spec([*D, mlp_in(w), "-o", w / "q.onnx", "--check-data",
                       npy(w, _with(np.ones((8, 32), np.float32), (1, 1), np.nan))]), r"NaN")
add("data_bench_wrong_shape", "8 calibration data", 2,
    lambda w, t: Spec(["bench", conv_in(w), "--data", npy(w, np.ones((4, 3, 8, 8), np.float32)), *FAST_BENCH]),
    r"shape")


# ----------------------------------------------------------------------------------------------
# 9. CLI flag problems


def _debug_pair(w, *extra):
    return ["debug", conv_in(w), conv_in(w, "other.onnx"), "--data", npy(w, h.conv_calib(8)), *extra]


def _minus1(w):
    return h.save(h.with_input_dims(h.named_conv(), [-1, 3, 16, 16]), w / "paddle.onnx")


add("flag_debug_samples_0", "9 CLI flags", 2, lambda w, t: Spec(_debug_pair(w, "--samples", "0")), r"sample")
add("flag_debug_samples_negative", "9 CLI flags", 2, lambda w, t: Spec(_debug_pair(w, "--samples", "-3")), r"sample")
add("flag_debug_worst_negative", "9 CLI flags", 2, lambda w, t: Spec(_debug_pair(w, "--worst", "-1")), r"worst")
add("flag_debug_unrelated_models", "9 CLI flags", 2,
    lambda w, t: Spec(["debug", conv_in(w), mlp_in(w), "--data", npy(w, h.conv_calib(8))]),
    r"(unrelated|no (shared|common)|not .{0,30}(same|quantized (version|copy))|different model)")
add("flag_bench_batch_dim_minus1", "9 CLI flags", 0,
    lambda w, t: Spec(["bench", _minus1(w), *FAST_BENCH]), forbid=r"fixed batch size of -1")
add("flag_static_batch_dim_minus1", "9 CLI flags", (0, 3),
    lambda w, t: Spec(static_argv(_minus1(w), npy(w, h.conv_calib()), w / "q.onnx")),
    forbid=r"(batch size of -1|--batch -1|batch_size.{0,20}-1)")
add("flag_dynamic_batch_dim_minus1", "9 CLI flags", (0, 3),
    lambda w, t: Spec([*D, _minus1(w), "-o", w / "q.onnx"]))
for _label, _val in {"0_minus1_abc": "0,-1,abc", "minus1": "-1", "abc": "abc"}.items():
    add(f"flag_bench_threads_{_label}", "9 CLI flags", 2,
        lambda w, t, v=_val: Spec(["bench", conv_in(w), *FAST_BENCH[2:], "--threads", v]), r"threads")
BENCH_FLAGS = {
    "batch_0": (["--batch", "0"], r"batch"),
    "batch_negative": (["--batch", "-2"], r"batch"),
    "iters_0": (["--iters", "0"], r"iters"),
    "rounds_0": (["--rounds", "0"], r"rounds"),
    "min_time_negative": (["--min-time", "-1"], r"min.time"),
    "warmup_negative": (["--warmup", "-1"], r"warmup"),
    "names_count": (["--names", "a,b,c"], r"name"),
    "backend_typo": (["--backend", "openvno"], r'Did you mean "openvino"'),
    "data_typo": (["--data", "fashion-mnst"], r'Did you mean "fashion-mnist"'),
    "task_classification_no_labels": (["--task", "classification"], r"labels"),
}
for _label, (_flags, _rx) in BENCH_FLAGS.items():
    add(f"flag_bench_{_label}", "9 CLI flags", 2,
        lambda w, t, f=_flags: Spec(["bench", conv_in(w), *FAST_BENCH, *f]), _rx)
for _label, _val in {"negative": "-1", "zero": "0"}.items():
    add(f"flag_bench_limit_{_label}", "9 CLI flags", 2,
        lambda w, t, v=_val: Spec(["bench", conv_in(w), *FAST_BENCH, "--limit", v, "--data",
                                   _npz(w, input=h.conv_calib(16), labels=np.arange(16) % 10)]), r"limit")
add("flag_bench_unrelated_models", "9 CLI flags", 2,
    lambda w, t: Spec(["bench", conv_in(w), mlp_in(w), *FAST_BENCH]), r"not comparable")
add("flag_static_algo_typo", "9 CLI flags", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--algo", "hsit")), r'Did you mean "hist"')
add("flag_static_target_typo", "9 CLI flags", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--target", "x68")), r'Did you mean "x86"')
DYN_FLAGS = {
    "mode_typo": (["--mode", "weight_only"], r'Did you mean "weight-only"'),
    "on_collapse_typo": (["--on-collapse", "refuze"], r'Did you mean "refuse"'),
    "granularity_bad": (["--granularity", "group:abc"], r"granularity"),
    "weight_bits_3": (["--weight-bits", "3"], r"weight.bits"),
    "min_cosine_5": (["--min-cosine", "5"], r"min.cosine"),
    "min_cosine_nan": (["--min-cosine", "nan"], r"min.cosine"),
}
for _label, (_flags, _rx) in DYN_FLAGS.items():
    add(f"flag_dynamic_{_label}", "9 CLI flags", 2,
        lambda w, t, f=_flags: Spec([*D, mlp_in(w), "-o", w / "q.onnx", *f]), _rx)
add("flag_unknown_command", "9 CLI flags", 2, lambda w, t: Spec(["quantise", "static"]), r"invalid choice")
add("flag_static_batch_size_abc", "9 CLI flags", 2,
    lambda w, t: Spec(static_argv(*conv_files(w), w / "q.onnx", "--batch-size", "abc")), r"batch.size")
add("flag_static_missing_calib", "9 CLI flags", 2,
    lambda w, t: Spec([*S, conv_in(w), "-o", w / "q.onnx"]), r"--calib")


# ----------------------------------------------------------------------------------------------
# the generic checks


def _log(record: dict) -> None:
    path = os.environ.get("SLIMQ_CORPUS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _output_of(argv) -> Path | None:
    argv = [str(a) for a in argv]
    for flag in ("-o", "--output"):
        if flag in argv:
            return Path(argv[argv.index(flag) + 1])
    return None


def verify(c_id, rc_ok, msg, forbid, msg_rcs, spec: Spec, run: h.Run, before, after, root: Path, cwd: Path,
           extra_problems=()) -> list[str]:
    problems = list(extra_problems)
    if run.exc:
        problems.append(f"exception escaped main: {run.last_frame() or run.exc.strip().splitlines()[-1]}")
    if h.TRACEBACK in run.text:
        problems.append(f"traceback printed: {run.last_frame()}")
    if run.rc == 1:
        problems.append("exit code 1")
    if run.rc not in rc_ok:
        problems.append(f"exit code {run.rc}, expected {' or '.join(map(str, rc_ok))}")
    flags = re.I | re.M
    text = _scrub(run.text, root)  # the case id is part of tmp_path: never match it
    if msg and (msg_rcs is None or run.rc in msg_rcs) and not re.search(msg, text, flags):
        problems.append(f"message does not match /{msg}/")
    if forbid and re.search(forbid, text, flags):
        problems.append(f"message matches forbidden /{forbid}/: {re.search(forbid, text, flags).group(0)!r}")

    out = _output_of(spec.argv)
    if out is not None and not out.is_absolute():
        out = cwd / out
    allowed = set()
    if out is not None:
        allowed |= {out, out.with_name(out.name + ".report.json"), out.with_name(out.name + ".data"),
                    out.with_name(out.name + ".report.html"),  # the HTML report (report/html) beside the JSON one
                    out.with_suffix(".ort")}  # --target arm: the ORT-format model (static/mobile)
    allowed |= {Path(p) for p in spec.outputs}
    allowed_rel = {os.path.relpath(os.path.abspath(p), root) for p in allowed}
    changed, removed, added = h.diff_snapshots(before, after)
    success = run.rc in (0, 3)
    replaceable = {os.path.relpath(os.path.abspath(p), root) for p in spec.replaceable}
    touched_inputs = [p for p in changed + removed if not (success and p in replaceable)]
    if touched_inputs:
        problems.append(f"input files changed/removed: {touched_inputs}")
    if not success:
        if added:
            problems.append(f"failed run left files behind: {added}")
    else:
        strays = [p for p in added if p not in allowed_rel or h.hidden(p)]
        if strays:
            problems.append(f"unexpected files written: {strays}")
        if out is not None and out.suffix == ".onnx" and run.rc is not None:
            if not out.is_file():
                problems.append(f"exit {run.rc} but no model at {out.name}")
            else:
                why = h.load_ok(out)
                if why:
                    problems.append(f"written model does not load/run: {why}")
                try:
                    if h.read_report(out) is None:
                        problems.append("model written without its .report.json")
                except ValueError as e:
                    problems.append(f"report is not JSON: {e}")
    if spec.check is not None:
        run.out_path = str(out) if out is not None else ""
        problems += spec.check(run)
    return problems


def _scrub(text: str, root: Path) -> str:
    for p in {str(root), str(root.resolve())}:
        text = text.replace(p, "<tmp>")
    return text


def _fmt(c_id, run, problems) -> str:
    tail = run.text.strip()[-1500:]
    return f"[{c_id}] rc={run.rc}\n  - " + "\n  - ".join(problems) + f"\n--- output tail ---\n{tail}"


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_corpus(c: Case, tmp_path, capfd, monkeypatch):
    root = tmp_path
    w = root / "w"
    w.mkdir()
    cwd = root / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    spec = c.build(w, root)
    cwd = spec.cwd or cwd
    monkeypatch.chdir(cwd)
    before = h.snapshot(root)
    if spec.mode == "sub":
        run = h.run_subprocess(spec.argv, cwd, timeout=spec.timeout, mem_gib=spec.mem_gib)
    else:
        run = h.run_inprocess(spec.argv, capfd)
    after = h.snapshot(root)
    problems = verify(c.id, c.rc, c.msg, c.forbid, c.msg_rcs, spec, run, before, after, root, cwd)
    _log({"id": c.id, "cls": c.cls, "rc": run.rc, "ok": not problems, "problems": problems,
          "last_frame": run.last_frame(), "seconds": round(run.seconds, 2),
          "message": _first_message(run.text)})
    assert not problems, _fmt(c.id, run, problems)


def _first_message(text: str) -> str:
    for line in text.splitlines():
        if re.search(r"(slimq: error|slimq: warning|WARNING|error:|Error)", line):
            return line.strip()[:300]
    return text.strip().splitlines()[-1][:300] if text.strip() else ""


def test_corpus_size():
    """Issue 10 asks for at least 110 cases (the parametrized corpus plus the signal/concurrency tests)."""
    assert len(CASES) + len(SIGNAL_CASES) + len(CONCURRENT_CASES) >= 110
    assert len({c.id for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------------------------
# 10. signals and concurrency (child processes)


def _calib_setup(w: Path):
    m = h.save(h.slow_conv_model(), w / "slow.onnx")
    c = npy(w, np.random.default_rng(0).standard_normal((96, 3, 96, 96)).astype(np.float32), "slow.npy")
    return static_argv(m, c, w / "q.onnx", "--batch-size", "2")


def _saving_setup(w: Path):
    m = h.save(h.big_matmul_model(), w / "big.onnx")
    return [*D, m, "-o", w / "q.onnx", "--external-data"]


SIGNAL_CASES = [(sig, moment) for moment in ("calibration", "saving") for sig in ("SIGINT", "SIGTERM", "SIGKILL")]
SIGNAL_CASES.append(("SIGINT-twice", "calibration"))


def _final_state_problems(w: Path, out: Path, clean_tmp: bool) -> list[str]:
    problems = []
    report = out.with_name(out.name + ".report.json")
    if out.exists() or report.exists():
        if not (out.exists() and report.exists()):
            problems.append(f"partial output left: model {out.exists()}, report {report.exists()}")
        else:
            why = h.load_ok(out)
            if why:
                problems.append(f"model left at the final path does not load: {why}")
    tmp = [n for n in os.listdir(w) if h.TMP_RX.fullmatch(n)]
    if clean_tmp and tmp:
        problems.append(f"temp entries left behind: {tmp}")
    return problems


MISSED = ("never saw the temp folder", "finished before the signal could be sent")


@pytest.mark.parametrize("sig,moment", SIGNAL_CASES, ids=[f"{s}-{m}" for s, m in SIGNAL_CASES])
def test_signal(sig, moment, tmp_path):
    """A run that the signal could not hit at `moment` (a save that finished between two polls) proves
    nothing either way: it is retried, up to three times, before counting as a failure."""
    for attempt in range(3):
        problems, run = _signal_case(sig, moment, tmp_path / f"try{attempt}")
        if not any(m in p for p in problems for m in MISSED):
            break
    _log({"id": f"signal_{sig}_{moment}", "cls": "10 signals", "rc": run.rc, "ok": not problems,
          "problems": problems, "last_frame": run.last_frame(), "message": _first_message(run.text)})
    assert not problems, _fmt(f"signal {sig} during {moment}", run, problems)


def _signal_case(sig: str, moment: str, tmp_path: Path):
    w = tmp_path / "w"
    w.mkdir(parents=True)
    argv = _calib_setup(w) if moment == "calibration" else _saving_setup(w)
    out = w / "q.onnx"
    inputs = h.snapshot(w)
    cwd = tmp_path / "cwd"  # not the output folder: onnx resolves external-data names against the cwd
    cwd.mkdir()
    child = h.Child(argv, cwd)
    problems = []
    if moment == "calibration":
        if not child.wait_for_text("calibrating", 60):
            problems.append("calibration never started")
        time.sleep(0.5)
        if not child.alive():
            problems.append("the child finished before the signal could be sent during calibration")
    else:
        seen = child.wait_for_path(w, h.TMP_RX, 60)
        if seen is None:
            problems.append("never saw the temp folder of the save (could not hit the saving moment)")
    signum = h.SIGNALS[sig.split("-")[0]]
    child.kill(signum)
    if sig == "SIGINT-twice":
        time.sleep(0.05)
        child.kill(signum)
    run = child.finish(120)
    rc = run.rc
    # 130, or death by the signal itself (what a shell also reports as 130 / 143)
    expected = {"SIGINT": (130, -signal.SIGINT), "SIGINT-twice": (130, -signal.SIGINT),
                "SIGTERM": (130, 143, -signal.SIGTERM),
                "SIGKILL": (-signal.SIGKILL,)}[sig]
    wrote = out.exists() and out.with_name(out.name + ".report.json").exists()
    if rc not in expected and not (moment == "saving" and rc in (0, 3) and wrote):
        problems.append(f"exit code {rc}, expected {expected}")
    if sig != "SIGKILL" and h.TRACEBACK in run.text:
        problems.append(f"traceback printed: {run.last_frame()}")
    if rc == 130 and (out.exists() or out.with_name(out.name + ".report.json").exists()):
        problems.append(f"exit {rc} (interrupted, 'no output was written') but output exists")
    problems += _final_state_problems(w, out, clean_tmp=sig != "SIGKILL")
    changed, removed, _ = h.diff_snapshots(inputs, h.snapshot(w))
    if changed or removed:
        problems.append(f"inputs changed: {changed + removed}")
    # a second run to the same output succeeds and cleans up what the interrupted one left
    second = [*D, mlp_in(w), "-o", out] if moment == "saving" else static_argv(*conv_files(w), out)
    run2 = h.run_subprocess(second, cwd, timeout=120)
    if run2.rc not in (0, 3) or h.TRACEBACK in run2.text:
        problems.append(f"second run: exit {run2.rc} {run2.last_frame()}")
    left = [n for n in os.listdir(w) if h.TMP_RX.fullmatch(n)]
    if left:
        problems.append(f"second run left stale temp folders of the interrupted run: {left}")
    if run2.rc in (0, 3):
        why = h.load_ok(out)
        if why:
            problems.append(f"second run's model does not load: {why}")
    return problems, run


CONCURRENT_CASES = ["static_same_output", "dynamic_external_same_output"]


def _report_granularity(rep: dict) -> str | None:
    """What the report says about weight granularity (schema-agnostic: searches every string in it)."""
    text = json.dumps(rep)
    for word, kind in (("group:", "block"), ("per-tensor", "per-tensor"), ("per-channel", "per-channel")):
        if word in text:
            return kind
    return None


def _consistent(out: Path) -> list[str]:
    """The report beside the model describes that model (not another run's)."""
    rep = h.read_report(out)
    said, kinds = _report_granularity(rep), h.weight_dq_granularity(out)
    if said is None:
        return ["the report does not say which weight granularity it describes"]
    if kinds != {said}:
        return [f"the report describes {said} weights but the model holds {sorted(kinds)} weights: "
                "model and report come from different runs"]
    sizes = [v for k, v in h.find_keys(rep, re.compile(r"size", re.I)) if isinstance(v, dict)
             for kk, v in v.items() if re.fullmatch(r"(int8|quantized)(_bytes)?", kk) and isinstance(v, int)]
    data = out.with_name(out.name + ".data")
    on_disk = {out.stat().st_size, out.stat().st_size + (data.stat().st_size if data.exists() else 0)}
    if sizes and not on_disk & set(sizes):
        return [f"report size {sizes} matches neither the model nor model+data on disk {sorted(on_disk)}"]
    return []


@pytest.mark.parametrize("kind", CONCURRENT_CASES)
def test_concurrent(kind, tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    out = w / "q.onnx"
    if kind == "static_same_output":
        m, c = conv_in(w, "slow.onnx", h.slow_conv_model(48, 16, 3)), npy(
            w, np.random.default_rng(0).standard_normal((32, 3, 48, 48)).astype(np.float32))
        argvs = [static_argv(m, c, out), static_argv(m, c, out, "--per-tensor", "--algo", "min_max")]

    else:
        m = h.save(h.big_matmul_model(1024, 4), w / "big.onnx")
        argvs = [[*D, m, "-o", out, "--external-data"],
                 [*D, m, "-o", out, "--external-data", "--granularity", "group:64"]]

    inputs = h.snapshot(w)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    children = [h.Child(a, cwd) for a in argvs]
    runs = [ch.finish(180) for ch in children]
    problems = []
    for i, r in enumerate(runs):
        if r.rc not in (0, 2, 3) or h.TRACEBACK in r.text:
            problems.append(f"run {i}: exit {r.rc} {r.last_frame()}")
        if r.rc == 2 and not re.search(r"(in use|another|busy|lock|concurrent)", r.text, re.I):
            problems.append(f"run {i} refused without saying the output is in use by another run")
    if not any(r.rc in (0, 3) for r in runs):
        problems.append("neither run wrote the model")
    problems += _final_state_problems(w, out, clean_tmp=True)
    if out.exists():
        why = h.load_ok(out)
        if why is None and h.read_report(out) is not None:
            problems += _consistent(out)
    changed, removed, _ = h.diff_snapshots({k: v for k, v in inputs.items()}, h.snapshot(w))
    changed = [p for p in changed + removed if not p.startswith("q.onnx")]
    if changed:
        problems.append(f"inputs changed: {changed}")
    _log({"id": f"concurrent_{kind}", "cls": "10 concurrency", "rc": [r.rc for r in runs], "ok": not problems,
          "problems": problems, "last_frame": " | ".join(r.last_frame() for r in runs),
          "message": " | ".join(_first_message(r.text) for r in runs)})
    assert not problems, _fmt(f"concurrent {kind}", runs[0], problems)
