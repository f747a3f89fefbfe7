"""The validated config loader (typed fields, ranges, recipes) and the reliability mechanisms of issue 10:
the output-location check, external-data bounds, data checks before onnxruntime, and the CLI's handling of
internal errors and signals."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import pytest

from slimq.core.config import DynamicConfig, SkipSpec, StaticConfig
from slimq.core.errors import CalibrationDataError, ConfigError, ModelLoadError, OutputPathError
from slimq.core.fields import require_int, require_number, require_str_tuple
from slimq.io.images import PreprocessSpec
from slimq.io.model import check_output_path, load_model, save_model
from slimq.io.recipe import load_static_recipe, read_yaml_document
from slimq.io.samples import load_samples, require_variation, validate_feeds
from slimq.io.spec import InputSpec, model_inputs

# -- typed fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, "8", 8.0, None, [8]])
def test_int_fields_refuse_other_types(value):
    with pytest.raises(ConfigError, match=r"batch_size must be an integer"):
        require_int("batch_size", value, 1)


def test_number_fields_check_finiteness_and_open_bounds():
    assert require_number("min_cosine", 1, 0.0, 1.0, low_open=True) == 1.0
    for bad in (0.0, -0.5, 1.01, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="min_cosine"):
            require_number("min_cosine", bad, 0.0, 1.0, low_open=True)
    with pytest.raises(ConfigError, match=r"must be a number, got '0\.99' \(a string\)"):
        require_number("hist_percent", "0.99")


def test_string_list_refuses_a_bare_string():
    assert require_str_tuple("names", ["a", "b"]) == ("a", "b")
    with pytest.raises(ConfigError, match=r"names must be a list of strings, got 'conv1'"):
        require_str_tuple("names", "conv1")
    with pytest.raises(ConfigError, match=r"holds 3"):
        require_str_tuple("names", ["a", 3])


# -- the config dataclasses -----------------------------------------------------------------------


@pytest.mark.parametrize("key,value,match", [
    ("batch_size", "8", r"batch_size must be an integer"),
    ("batch_size", True, r"batch_size must be an integer"),
    ("max_samples", "1e9", r"max_samples must be an integer.*1\.0e9"),
    ("bins", 2048.5, r"bins must be an integer"),
    ("bins", 100, r"bins must be a power of two"),
    ("bins", 10**400, r"bins must be in \[16, 1048576\], got 1000"),
    ("hist_percent", "0.99", r"hist_percent must be a number"),
    ("min_cosine", 5, r"min_cosine must be in \(0, 1\], got 5"),
    ("min_cosine", -0.5, r"min_cosine"),
    ("per_channel", "sometimes", r"per_channel must be true or false"),
    ("algo", 5, r"algo must be one of .*hist"),
    ("algo", "hsit", r'Did you mean "hist"'),
    ("skip", ["conv1"], r"skip must be a mapping"),
    ("skip", {"names": "conv1"}, r"skip\.names must be a list of strings"),
    ("skip", {"nmes": ["conv1"]}, r'Unknown skip key "nmes". Did you mean "names"'),
    ("op_types", "Conv", r"op_types must be a list of strings"),
    ("memory_budget_mb", 0, r"memory_budget_mb must be >= 1"),
    ("holdout", -3, r"holdout must be >= 0"),
])
def test_static_config_from_dict_refuses_bad_values(key, value, match):
    with pytest.raises(ConfigError, match=match):
        StaticConfig.from_dict({key: value})


def test_static_config_normalizes_recipe_lists():
    cfg = StaticConfig.from_dict({"skip": {"names": ["conv1"], "patterns": ["^fc"]}, "op_types": ["Conv"],
                                  "min_cosine": 1})
    assert cfg.skip == SkipSpec(("conv1",), (), ("^fc",))
    assert cfg.op_types == ("Conv",) and cfg.min_cosine == 1


@pytest.mark.parametrize("data,match", [([1, 2], r"mapping"), ({"algorithm": "hist"}, r'"algorithm".*"algo"')])
def test_static_config_from_dict_needs_a_mapping_of_known_keys(data, match):
    with pytest.raises(ConfigError, match=match):
        StaticConfig.from_dict(data)


@pytest.mark.parametrize("kwargs,match", [
    ({"min_cosine": float("nan")}, r"min_cosine"), ({"check_samples": 0}, r"check_samples must be >= 1"),
    ({"weight_bits": True}, r"weight bits"), ({"embeddings": "no"}, r"embeddings must be true or false"),
    ({"mode": "weight_only"}, r'Did you mean "weight-only"'), ({"skip": {"names": "mm"}}, r"skip\.names"),
])
def test_dynamic_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DynamicConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"size": (3,)}, r"size must be two positive integers"), ({"size": (0, 0)}, r"size\[0\] must be in \[1, "),
    ({"size": "16"}, r"size must be two"), ({"size": (16.5, 16)}, r"size\[0\] must be an integer"),
    ({"mean": (0.5, 0.5)}, r"mean must have 1 or 3 values, got 2"), ({"mean": "abc"}, r"mean must be a list"),
    ({"std": (0.0, 1.0, 1.0)}, r"std must be > 0"), ({"std": (float("nan"),)}, r"std\[0\] must be a finite"),
    ({"resize_short": 0}, r"resize_short must be in \[1, "), ({"resize_short": -5}, r"resize_short"),
    ({"layout": "NWHC"}, r'layout must be "NCHW" or "NHWC", got \'NWHC\'. Did you mean "NHWC"'),
    ({"color": ["RGB"]}, r'color must be "RGB", "BGR" or "GRAY"'),
])
def test_preprocess_spec_refuses_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PreprocessSpec(**kwargs)


def test_preprocess_spec_accepts_one_or_three_values():
    assert PreprocessSpec(size=[16, 16], mean=(0.5,), std=[0.2, 0.2, 0.2]).size == (16, 16)


# -- recipe files ---------------------------------------------------------------------------------


def test_recipe_reader_turns_every_file_problem_into_a_config_error(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"static:\n  algo: h\xe9st\n")
    (tmp_path / "tag.yaml").write_text("static: !!python/object/apply:os.getcwd []\n")
    cases = {tmp_path / "latin1.yaml": r"not UTF-8", tmp_path: r"is a directory",
             tmp_path / "nope.yaml": r"not found", tmp_path / "tag.yaml": r"not valid YAML"}
    for path, match in cases.items():
        with pytest.raises(ConfigError, match=match):
            read_yaml_document(path)


def test_static_recipe_values_are_checked_with_the_recipe_name(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("static:\n  batch_size: 4\n  skip:\n    names: [conv1]\npreprocess:\n  size: [16, 16]\n")
    static, pre = load_static_recipe(r)
    assert StaticConfig.from_dict(static).skip.names == ("conv1",) and pre == {"size": [16, 16]}
    r.write_text("static: [1, 2]\n")
    with pytest.raises(ConfigError, match=r'r\.yaml: section "static" must be a mapping'):
        load_static_recipe(r)
    r.write_text("preprocess:\n  mean: abc\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: mean must be a list"):
        load_static_recipe(r)


def test_qat_recipe_loader_uses_the_same_reader(tmp_path):
    from slimq.qat.config import load_recipe

    (tmp_path / "q.yaml").write_bytes(b"model: fmnist_r\xe9snet\n")
    with pytest.raises(ConfigError, match=r"QAT recipe .* not UTF-8"):
        load_recipe(tmp_path / "q.yaml")


# -- output locations -----------------------------------------------------------------------------


def test_output_check_refuses_every_bad_location(tmp_path, conv_model):
    model = tmp_path / "in.onnx"
    onnx.save(conv_model, model)
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "r.onnx.report.json").mkdir()
    cases = {"": r"empty", str(model): r"overwrite .*the input model", str(tmp_path / "dir.onnx"): r"directory",
             str(tmp_path / "file.txt" / "q.onnx"): r"not a folder", str(tmp_path / "q.bin"): r"end in \.onnx",
             str(tmp_path / "r.onnx"): r"report path .* is a directory",
             str(tmp_path / "nope" / "q.onnx"): r"does not exist"}
    for out, match in cases.items():
        with pytest.raises(OutputPathError, match=match):
            check_output_path(model, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx", "file.txt", "in.onnx", "r.onnx.report.json"]


def test_output_check_for_extra_outputs_with_several_inputs(tmp_path, conv_model):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(conv_model, a)
    onnx.save(conv_model, b)
    with pytest.raises(OutputPathError, match=r"--json .*b\.onnx, the input model"):
        check_output_path([a, b], b, suffix=None, flag="--json", companions=())
    assert check_output_path([a, b], tmp_path / "results.anything", suffix=None, flag="--json",
                             companions=()) == tmp_path / "results.anything"


def test_external_data_rerun_inside_the_output_folder(tmp_path, monkeypatch, conv_model):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.onnx.data").write_bytes(os.urandom(100))  # a previous run's data file, in the CWD
    save_model(conv_model, "q.onnx", external_data=True)
    loaded = load_model("q.onnx")
    w = {t.name: nh.to_array(t) for t in loaded.graph.initializer}
    ref = {t.name: nh.to_array(t) for t in conv_model.graph.initializer}
    assert all(np.array_equal(w[k], ref[k]) for k in ref)
    assert (tmp_path / "q.onnx.data").stat().st_size > 1024
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- model loading ---------------------------------------------------------------------------------


def _external(tmp_path: Path, model: onnx.ModelProto, extra_len: int = 0, extra_offset: int = 0,
              cut: int = 0) -> Path:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    blob = io.BytesIO()
    for t in m.graph.initializer:
        raw = nh.to_array(t).tobytes()
        if len(raw) < 64:
            continue
        off = blob.tell()
        blob.write(raw)
        t.ClearField("float_data")
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", "w.bin"), ("offset", str(off + extra_offset)), ("length", str(len(raw) + extra_len))):
            e = t.external_data.add()
            e.key, e.value = k, v
    data = blob.getvalue()
    (tmp_path / "w.bin").write_bytes(data[:len(data) - cut])
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("kw,match", [({"cut": 64}, r"shorter than tensor .* declares"),
                                      ({"extra_len": 64}, r"declares \d+ bytes of external data .* needs"),
                                      ({"extra_offset": 10**6}, r"past the end")])
def test_external_data_bounds_are_checked(tmp_path, conv_model, kw, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(_external(tmp_path, conv_model, **kw))


def test_external_data_directory_is_refused(tmp_path, conv_model):
    path = _external(tmp_path, conv_model)
    (tmp_path / "w.bin").unlink()
    (tmp_path / "w.bin").mkdir()
    with pytest.raises(ModelLoadError, match=r"is a directory"):
        load_model(path)


def test_model_without_opset_import_is_called_truncated(tmp_path, conv_model):
    m = onnx.ModelProto()
    m.CopyFrom(conv_model)
    del m.opset_import[:]
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match=r"declares no opset .*truncated or corrupt") as e:
        load_model(tmp_path / "m.onnx")
    assert "opset 0" not in str(e.value)


# -- data checks -----------------------------------------------------------------------------------


def _embedding(vocab: int = 50) -> onnx.ModelProto:
    table = nh.from_array(np.zeros((vocab, 4), np.float32), "table")
    g = oh.make_graph([oh.make_node("Cast", ["ids"], ["i"], to=onnx.TensorProto.INT64),
                       oh.make_node("Gather", ["table", "i"], ["y"])], "g",
                      [oh.make_tensor_value_info("ids", onnx.TensorProto.INT32, [-1, 6])],
                      [oh.make_tensor_value_info("y", 1, None)], [table])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_ids_are_checked_against_the_table_they_index():
    (spec,) = model_inputs(_embedding(50))
    assert spec.index_rows == 50 and spec.shape == (None, 6)  # dim_value -1: dynamic
    validate_feeds({"ids": np.array([[0, 49, -50, 1, 2, 3]], np.int32)}, [spec])
    for bad in (50, -51):
        with pytest.raises(CalibrationDataError, match=rf"index {bad}, outside the embedding table .*50 rows"):
            validate_feeds({"ids": np.full((1, 6), bad, np.int32)}, [spec])


def test_zero_size_scalar_and_non_numeric_data_are_refused(conv_model):
    inputs = model_inputs(conv_model)
    with pytest.raises(CalibrationDataError, match=r"zero-size dimension"):
        validate_feeds({"input": np.zeros((1, 3, 0, 16), np.float32)}, [InputSpec("input", (None, 3, 0, 16), np.float32)])
    with pytest.raises(CalibrationDataError, match=r"scalar"):
        load_samples(np.float32(1.0), inputs)
    with pytest.raises(CalibrationDataError, match=r"not numeric"):
        validate_feeds({"input": np.full((1, 3, 16, 16), "a")}, inputs)


def test_preprocessing_settings_are_refused_for_arrays(tmp_path, conv_model, conv_calib):
    np.save(tmp_path / "c.npy", conv_calib)
    with pytest.raises(ConfigError, match=r"apply to image folders only"):
        load_samples(tmp_path / "c.npy", model_inputs(conv_model), PreprocessSpec(size=(16, 16)))
    assert len(load_samples(tmp_path / "c.npy", model_inputs(conv_model))) == len(conv_calib)


def test_flat_data_is_refused_also_per_channel():
    rng = np.random.default_rng(0)
    per_channel = np.broadcast_to(np.array([-2.1, -2.0, -1.8], np.float32)[None, :, None, None], (4, 3, 8, 8))
    for flat in (np.zeros((4, 8), np.float32), per_channel, per_channel.transpose(0, 2, 3, 1)):
        with pytest.raises(CalibrationDataError, match=r"constant"):
            require_variation([{"x": flat[i:i + 1]} for i in range(4)], "check")
    require_variation([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}], "check")
    require_variation([{"x": rng.standard_normal((1, 8)).astype(np.float32)}], "check")  # one sample, varied


def test_huge_declared_dims_are_not_synthesised():
    from slimq.dynamic.check import synthesize_feeds

    g = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", 1, [1, 100000, 100000])], [oh.make_tensor_value_info("y", 1, None)])
    with pytest.raises(CalibrationDataError, match=r'"x" .*dim 1 = 100000.*GiB.*--check-data'):
        synthesize_feeds(oh.make_model(g), 8)


# -- the CLI: internal errors and signals -----------------------------------------------------------


def test_internal_error_is_one_line_and_a_traceback_file(monkeypatch, capsys, tmp_path):
    import slimq.cli.inspect as inspect_cmd
    from slimq.cli import main

    def boom(args):
        raise RuntimeError("synthetic bug")

    monkeypatch.setattr(inspect_cmd, "run_inspect", boom)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert main(["inspect", "x.onnx"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(r"internal error \(a bug in slimq.*RuntimeError: synthetic bug", err)
    path = Path(re.search(r"traceback is in (\S+\.txt)", err).group(1))
    assert path.parent == tmp_path and "Traceback (most recent call last)" in path.read_text()
    assert main(["--debug", "inspect", "x.onnx"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_are_handled_like_ctrl_c(tmp_path, sig, code):
    script = ("import sys, time\nfrom slimq.cli import main\nimport slimq.cli.inspect as m\n"
              "def slow(args):\n    print('started', flush=True)\n    time.sleep(30)\n"
              "m.run_inspect = slow\nsys.exit(main(['inspect', 'x.onnx']))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         cwd=tmp_path, text=True)
    assert p.stdout.readline().strip() == "started"
    time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode == code
    assert "interrupted; no output was written" in err and "Traceback" not in err


# -- regressions found by fuzzing (scripts/fuzz.py) ---------------------------------------------------


def test_non_utf8_names_and_bad_external_fields_are_load_errors(tmp_path, conv_model):
    m = onnx.ModelProto()
    m.CopyFrom(conv_model)
    m.graph.node[0].name = "ABCDEF"
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString().replace(b"ABCDEF", b"AB\xff\xfeEF"))
    with pytest.raises(ModelLoadError, match=r"not valid UTF-8"):
        load_model(tmp_path / "m.onnx")
    path = _external(tmp_path, conv_model)
    m = onnx.load(str(path), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.external_data)
    for key, value, match in (("location", "w.bin\x00x", r"unusable external-data location"),
                              ("length", "3", r"declares 3 bytes .* needs"), ("offset", "-4", r"not a non-negative")):
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        t2 = next(x for x in m2.graph.initializer if x.name == t.name)
        next(e for e in t2.external_data if e.key == key).value = value
        path.write_bytes(m2.SerializeToString())
        with pytest.raises(ModelLoadError, match=match):
            load_model(path)


@pytest.mark.parametrize("text,match", [("target: [x86]\n", r"QAT target must be one of"),
                                        ("epochs: .inf\n", r"epochs must be a finite number"),
                                        ("lr: .nan\n", r"lr must be a finite number"),
                                        ("model: 5\n", r"model must be a string")])
def test_qat_recipe_values_are_typed(tmp_path, text, match):
    from slimq.qat.config import load_recipe

    (tmp_path / "q.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_recipe(tmp_path / "q.yaml")


@pytest.mark.parametrize("text", ['static:\n  algo: "\\U00110000"\n', "static:\n  when: 2001-13-01\n",
                                  "static: " + "[" * 5000 + "]" * 5000 + "\n"])
def test_yaml_constructor_errors_are_config_errors(tmp_path, text):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_static_recipe(tmp_path / "r.yaml")


def test_huge_numbers_and_sizes_are_range_errors():
    with pytest.raises(ConfigError, match=r"hist_percent must be a finite number"):
        StaticConfig(hist_percent=10**400)
    with pytest.raises(ConfigError, match=r"size\[0\] must be in \[1, 16384\]"):
        PreprocessSpec(size=(100000, 100000))
