"""`slimq demo`: quantize the shipped Fashion-MNIST models and compare FP32 with INT8.

For each demo model: static PTQ (hist calibration on 256 training images), dynamic PTQ
and QAT when those modules are present, then accuracy on the 10k test images and
interleaved speed at 1 thread and all threads. Every file goes to the `--out` folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimq.bench.results import BenchResult, TimingConfig, write_json
from slimq.bench.runner import benchmark
from slimq.core.errors import unknown_choice
from slimq.zoo import ZOO_MODELS

METHODS = ("static", "dynamic", "qat")
CALIB_IMAGES = 256
HOLDOUT_IMAGES = 16  # held back from calibration for the report's FP32-vs-INT8 agreement check
DEFAULT_OUT = "slimq-demo"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; `quick` shrinks the test set and the timing for smoke tests."""

    out: Path = Path(DEFAULT_OUT)
    models: tuple[str, ...] = ZOO_MODELS
    methods: tuple[str, ...] = METHODS
    quick: bool = False
    batch: int = 1
    threads: tuple[int | str, ...] = (1, "all")
    min_time: float = 1.5

    @property
    def test_limit(self) -> int | None:
        return 500 if self.quick else None

    @property
    def timing(self) -> TimingConfig:
        if self.quick:
            return TimingConfig(warmup=2, min_iters=5, min_time=0.05, rounds=1)
        return TimingConfig(warmup=10, min_iters=20, min_time=self.min_time, rounds=3)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def calibration_images(n: int = CALIB_IMAGES + HOLDOUT_IMAGES, seed: int = 0) -> np.ndarray:
    """`n` preprocessed training images drawn with a fixed seed (classes mixed)."""
    from slimq.io.fashion_mnist import load_fashion_mnist, preprocess

    images, _ = load_fashion_mnist("train")
    idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
    return preprocess(images[np.sort(idx)])


def quantize_static_demo(fp32: Path, out: Path, calib: np.ndarray, cfg: DemoConfig) -> Path:
    from slimq.core.config import StaticConfig
    from slimq.static.method import quantize_static

    sc = StaticConfig(algo="hist", max_samples=CALIB_IMAGES, holdout=HOLDOUT_IMAGES, show_progress=not cfg.quick)
    result = quantize_static(fp32, calib, sc, output=out)
    for w in result.report.warnings:
        _say(f"    warning: {w}")
    return out


def quantize_dynamic_demo(fp32: Path, out: Path, calib: np.ndarray, cfg: DemoConfig) -> Path:
    from slimq.dynamic.method import DynamicConfig, quantize_dynamic  # optional module

    cfg_d = DynamicConfig()
    result = quantize_dynamic(fp32, cfg_d, output=out, check_data=calib[:8])
    _say(f"    {cfg_d.description}")
    for w in result.report.warnings:
        _say(f"    warning: {w}")
    return out


QAT_TRAIN_IMAGES = 4096  # the demo fine-tunes one pass over this many training images (the recipe: 60k)


def _qat_entry() -> Callable | None:
    """`slimq.qat.fmnist_recipe.run_qat_recipe`, or None when QAT (or torch) is not available."""
    try:
        module = importlib.import_module("slimq.qat.fmnist_recipe")
    except ImportError:
        return None
    return getattr(module, "run_qat_recipe", None)


def quantize_qat_demo(fp32: Path, out: Path, calib: np.ndarray, cfg: DemoConfig) -> Path:
    from dataclasses import replace

    from slimq.qat.config import load_recipe

    run = _qat_entry()
    if run is None:
        raise ModuleNotFoundError("slimq.qat.fmnist_recipe")
    base = load_recipe()
    recipe = replace(base, model=fp32.name.removesuffix(".onnx"), epochs=1.0,
                     train_limit=512 if cfg.quick else QAT_TRAIN_IMAGES,
                     calib_batches=2 if cfg.quick else base.calib_batches)
    _say(f"    recipe: {recipe.variant}, {recipe.target}, lr {recipe.lr}, {recipe.epochs} epoch(s) of "
         f"{recipe.train_limit or 60000} training images")
    result = run(recipe, out)
    _say(f"    trained {result['steps']} steps in {result['train_seconds']:.0f} s")
    return out


QUANTIZERS: dict[str, Callable[[Path, Path, np.ndarray, DemoConfig], Path]] = {
    "static": quantize_static_demo, "dynamic": quantize_dynamic_demo, "qat": quantize_qat_demo}
LABELS = {"static": "INT8 static PTQ", "dynamic": "INT8 dynamic PTQ", "qat": "INT8 QAT"}


def method_missing(method: str) -> str | None:
    """Why a method cannot run in this checkout, or None when it can."""
    if method == "dynamic" and importlib.util.find_spec("slimq.dynamic.method") is None:
        return "slimq.dynamic.method is not part of this installation"
    if method == "qat":
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'slimq[qat]')"
        if _qat_entry() is None:
            return "no Fashion-MNIST QAT recipe (slimq.qat.fmnist_recipe) in this installation"
    return None


def _fp32_path(name: str) -> Path:
    from slimq import zoo

    return zoo.asset_path(name, ".onnx")


def run_model(name: str, cfg: DemoConfig, calib: np.ndarray, evaluator, methods: Sequence[str],
              step: Callable[[str], None]) -> BenchResult:
    """Quantize one demo model with every available method, then benchmark all versions together."""
    fp32 = _fp32_path(name)
    paths, labels = [fp32], ["FP32"]
    for m in methods:
        out = cfg.out / f"{name}.{m}.int8.onnx"
        step(f"{name}: {LABELS[m]} -> {out}")
        t0 = time.perf_counter()
        paths.append(QUANTIZERS[m](fp32, out, calib, cfg))
        labels.append(LABELS[m])
        _say(f"    done in {time.perf_counter() - t0:.1f} s")
    step(f"{name}: accuracy on {len(evaluator.labels)} test images, then speed (batch {cfg.batch}, "
         f"threads {', '.join(map(str, cfg.threads))})")
    names = [f"{name} {lab}" for lab in labels]
    return benchmark(paths, threads=cfg.threads, evaluator=evaluator, batch=cfg.batch, timing=cfg.timing,
                     names=names, progress=lambda m: _say("  " + m), title=name)


def run_demo(cfg: DemoConfig = DemoConfig()) -> list[BenchResult]:
    """Run the demo; writes the INT8 models, demo.md, demo.json and demo.png into `cfg.out`."""
    from slimq.bench.data import fashion_mnist_arrays
    from slimq.bench.profile import write_text
    from slimq.bench.tables import plot_results, results_markdown
    from slimq.tasks.classification import ClassificationEvaluator

    start = time.perf_counter()
    for m in cfg.methods:
        if m not in METHODS:
            raise unknown_choice("demo method", m, METHODS)
    for name in cfg.models:
        _fp32_path(name)  # fail early with the fix when an asset is missing
    cfg.out.mkdir(parents=True, exist_ok=True)
    _say(f"slimq demo: outputs go to {cfg.out.resolve()}/ (change with --out)")
    methods = []
    for m in cfg.methods:
        why = method_missing(m)
        _say(f"  {LABELS[m]}: " + (f"skipped ({why})" if why else "yes"))
        if not why:
            methods.append(m)
    total = len(cfg.models) * (len(methods) + 1) + 1
    counter = iter(range(1, total + 1))
    step = lambda msg: _say(f"[{next(counter)}/{total}] {msg}")  # noqa: E731
    step(f"loading Fashion-MNIST: {CALIB_IMAGES} calibration (+{HOLDOUT_IMAGES} check) training images, "
         f"{cfg.test_limit or 10000} test images")
    calib = calibration_images()
    images, labels = fashion_mnist_arrays("test", cfg.test_limit)
    evaluator = ClassificationEvaluator(images, labels, batch_size=250)
    results = [run_model(name, cfg, calib, evaluator, methods, step) for name in cfg.models]
    md = results_markdown(results)
    print(md)
    write_text(cfg.out / "demo.md", md + "\n")
    write_json(results, cfg.out / "demo.json")
    plot_results(results, cfg.out / "demo.png")
    _say(f"slimq demo: finished in {time.perf_counter() - start:.0f} s; wrote INT8 models, demo.md, demo.json and "
         f"demo.png to {cfg.out.resolve()}/")
    return results

