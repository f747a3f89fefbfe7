"""Quantization-aware training: fake quantization math, BN folding, schedules, config, errors."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import slimq.qat as qat  # noqa: E402
from slimq.core.errors import CalibrationDataError, ConfigError, ModelLoadError  # noqa: E402
from slimq.qat.modules import QATConv, QATLinear  # noqa: E402
from slimq.qat.quantizers import ActQuantizer, WeightQuantizer  # noqa: E402
from slimq.qat.testing_models import (  # noqa: E402
    NetWithUnsupported,
    UntraceableNet,
    build,
    teacher_labels,
)

X = torch.Generator().manual_seed(1)


def images(n: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * scale


def train(qmodel: nn.Module, steps: int, seed: int = 0, lr: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(qmodel.parameters(), lr=lr, momentum=0.9)
    qmodel.train()
    for _ in range(steps):
        x = torch.randn(16, 1, 16, 16, generator=gen)
        y = teacher_labels(x)
        loss = F.cross_entropy(qmodel(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def ready_act(variant: str, unsigned: bool, abs_max: float) -> ActQuantizer:
    q = ActQuantizer(variant, 8, unsigned, 0.9)
    q._set_range(torch.tensor(abs_max))
    return q


def numpy_qdq(x: np.ndarray, scale: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    return (np.clip(np.rint(x / scale), qmin, qmax) * scale).astype(np.float32)


def away_from_ties(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    frac = np.abs(x / scale - np.floor(x / scale) - 0.5)
    return frac > 1e-3


# --- prepare -------------------------------------------------------------------------------


def test_prepare_leaves_original_untouched() -> None:
    model = build("resnet")
    before = copy.deepcopy(model.state_dict())
    types_before = [type(m) for m in model.modules()]
    x = images(4)
    ref = model(x)
    qmodel = qat.prepare(model, x)
    train(qmodel, 3)
    assert [type(m) for m in model.modules()] == types_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(model(x), ref)
    assert any(isinstance(m, QATConv) for m in qmodel.modules())
    assert not any(isinstance(m, (QATConv, ActQuantizer)) for m in model.modules())


def test_conv_bn_relu_fused_and_quantizers_placed() -> None:
    qmodel = qat.prepare(build("convnet"), images(2))
    convs = {n: m for n, m in qmodel.net.named_modules() if isinstance(m, QATConv)}
    assert set(convs) == {"conv1", "conv2"} and all(m.bn is not None for m in convs.values())
    assert isinstance(qmodel.net.get_submodule("fc"), QATLinear)
    assert not any(isinstance(m, nn.BatchNorm2d) and n.startswith("bn") for n, m in qmodel.net.named_modules())
    quantizers = dict(qmodel.quantizers())
    assert quantizers["act_quant.in_x"].unsigned is False  # network input: signed grid
    assert quantizers["act_quant.conv1"].unsigned is True  # after fused ReLU
    assert "act_quant.fc" not in quantizers  # logits: the integer Gemm writes float, as static PTQ leaves them
    assert quantizers["act_quant.gap"].unsigned is True  # the fc input, after ReLU and pooling


# --- fake quantization math ----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["ste", "pact", "lsq"])
@pytest.mark.parametrize("unsigned", [False, True])
def test_activation_fake_quant_matches_numpy(variant: str, unsigned: bool) -> None:
    q = ready_act(variant, unsigned, abs_max=2.5).eval()
    x = torch.randn(4000, generator=X) * 2.0
    y = q(x).detach().numpy()
    qmin, qmax = (0, 255) if unsigned else (-128, 127)
    scale = np.float32(2.5 / qmax)
    assert float(q.current_scale()) == pytest.approx(scale, rel=1e-6)
    ref = numpy_qdq(x.numpy(), scale, qmin, qmax)
    keep = away_from_ties(x.numpy(), scale)
    assert keep.mean() > 0.99
    np.testing.assert_allclose(y[keep], ref[keep], rtol=0, atol=1e-6)
    assert len(np.unique(y)) <= qmax - qmin + 1


@pytest.mark.parametrize("variant", ["ste", "lsq"])
def test_weight_fake_quant_per_channel_matches_numpy(variant: str) -> None:
    w = torch.randn(6, 3, 3, 3, generator=X) * torch.linspace(0.1, 2.0, 6).reshape(-1, 1, 1, 1)
    wq = WeightQuantizer(variant, 8, 6)
    wq.init_scale(w)
    y = wq(w).detach().numpy()
    scale = (np.abs(w.numpy()).reshape(6, -1).max(1) / 127).astype(np.float32).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(wq.current_scale(w).numpy(), scale.ravel(), rtol=1e-6)
    ref = numpy_qdq(w.numpy(), scale, -127, 127)
    keep = away_from_ties(w.numpy(), scale)
    np.testing.assert_allclose(y[keep], ref[keep], rtol=0, atol=1e-6)
    assert np.abs(np.rint(y / scale)).max() == 127


def test_ste_gradient_passes_inside_range_and_is_zero_outside() -> None:
    q = ready_act("ste", False, abs_max=1.27).eval()  # scale 0.01, range [-1.28, 1.27]
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.2, 1.4, 5.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_pact_alpha_gets_clipping_gradient() -> None:
    q = ready_act("pact", False, abs_max=1.0).train()
    q.observer_enabled.fill_(False)
    x = torch.tensor([-5.0, -2.0, 0.3, 0.5, 3.0, 4.0, 7.0])
    q(x).sum().backward()
    # +1 per element clipped above alpha, qmin/qmax per element clipped below -128/127 alpha.
    assert q.alpha.grad.item() == pytest.approx(3.0 - 2.0 * 128 / 127, rel=1e-5)


def test_lsq_scales_get_gradients() -> None:
    q = ready_act("lsq", False, abs_max=1.0).train()
    x = torch.randn(256, generator=X) * 2.0
    q(x).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().item() > 0
    qmodel = qat.prepare(build("convnet"), images(2), qat.QATConfig(variant="lsq"))
    train(qmodel, 1)
    wq = qmodel.net.get_submodule("conv2").weight_quant
    assert wq.scale.grad is not None and bool((wq.scale.grad != 0).any())
    act = dict(qmodel.quantizers())["act_quant.conv2"]
    assert act.scale.grad is not None and act.scale.grad.abs().item() > 0


def test_moving_average_abs_max_follows_paddleslim_formula() -> None:
    q = ActQuantizer("ste", 8, False, 0.9).train()
    accum = state = 0.0
    for m in (1.0, 3.0, 2.0):
        q(torch.tensor([0.1, -m, 0.5]))
        accum, state = 0.9 * accum + m, 0.9 * state + 1.0
    assert float(q.current_scale()) == pytest.approx(accum / state / 127, rel=1e-6)


def test_calibrate_sets_mean_batch_abs_max() -> None:
    qmodel = qat.prepare(build("convnet"), images(2))
    batches = [images(8, seed=s, scale=1.0 + s) for s in range(3)]
    assert qat.calibrate(qmodel, batches) == 3
    expected = np.mean([float(b.abs().max()) for b in batches]) / 127
    quantizers = dict(qmodel.quantizers())
    assert float(quantizers["act_quant.in_x"].current_scale()) == pytest.approx(expected, rel=1e-5)
    assert all(bool(q.initialized) for q in quantizers.values())
    with pytest.raises(CalibrationDataError, match="no batches"):
        qat.calibrate(qmodel, [])
    with pytest.raises(CalibrationDataError, match="NaN"):
        qat.calibrate(qmodel, [torch.full((2, 1, 16, 16), float("nan"))])


# --- schedules and BatchNorm ---------------------------------------------------------------


def test_freeze_observer_step_stops_range_updates() -> None:
    qmodel = qat.prepare(build("convnet"), images(2), qat.QATConfig(freeze_observer_step=2))
    q = dict(qmodel.quantizers())["act_quant.in_x"]
    qmodel.train()
    scales = []
    for s in range(4):
        with torch.no_grad():
            qmodel(images(8, seed=s, scale=1.0 + s))
        scales.append(float(q.current_scale()))
    assert scales[0] != scales[1]
    assert scales[1] == scales[2] == scales[3]
    assert int(qmodel.step) == 4 and not bool(q.observer_enabled)


def test_freeze_bn_step_freezes_running_stats_and_uses_folded_path() -> None:
    qmodel = qat.prepare(build("convnet"), images(2), qat.QATConfig(freeze_bn_step=2))
    conv = qmodel.net.get_submodule("conv1")
    history = []
    for step in range(4):
        train(qmodel, 1, seed=step)
        history.append(conv.bn.running_var.clone())
    assert not torch.equal(history[0], history[1])
    assert torch.equal(history[1], history[2]) and torch.equal(history[2], history[3])
    assert bool(conv.bn_frozen)
    # Frozen training forward == eval forward == conv with the fake-quantized folded weight
    # and the folded bias rounded to int32 with scale s_in * s_w (what QLinearConv adds).
    x = images(4)
    w, b = conv.folded()
    assert conv.input_quant is dict(qmodel.quantizers())["act_quant.in_x"]
    b_scale = conv.input_quant.current_scale() * conv.weight_quant.current_scale(w)
    b_int = torch.round(b / b_scale)
    assert float((b_int * b_scale - b).detach().abs().max()) <= float(b_scale.max()) / 2
    expected = F.conv2d(x, conv.weight_quant(w), b_int * b_scale, padding=1)
    conv.train()
    assert torch.allclose(conv(x), expected, atol=1e-6)
    # Eval: the integer kernels' result on the output grid, within one rounding tie of the float path.
    qmodel.eval()
    out_q = conv.output_quant
    assert out_q is dict(qmodel.quantizers())["act_quant.conv1"]
    xq, step = conv.input_quant(x), out_q.current_scale()
    got = conv(xq)
    assert torch.equal(torch.round(got / step) * step, got)
    ref = out_q(F.conv2d(xq, conv.weight_quant(w), b_int * b_scale, padding=1))
    assert float((got - ref).detach().abs().max()) <= 1.0001 * float(step)


@pytest.mark.parametrize("variant", ["ste", "lsq"])
def test_live_bn_training_is_batchnorm_over_the_conv_with_fake_quantized_folded_weight(variant: str) -> None:
    """Live BN (Jacob et al. 2018, 3.2): conv with fq(w * f) / f, f = gamma / sqrt(running_var + eps),
    then the real BatchNorm in training mode. Checked against that formula computed in numpy (at step 0
    LSQ's learned scale is still its abs-max initialisation from the folded weight, like STE's)."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
    with torch.no_grad():  # non-trivial folding factors and running statistics
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.25, 4.0)
        bn.running_mean.uniform_(-0.2, 0.2)
    ref_bn = copy.deepcopy(bn)
    qconv = QATConv(copy.deepcopy(conv), bn, WeightQuantizer(variant, 8, 8)).train()
    x = torch.randn(16, 3, 8, 8)
    out = qconv(x).detach()

    w = conv.weight.detach().numpy().astype(np.float64)
    f = ref_bn.weight.detach().numpy() / np.sqrt(ref_bn.running_var.numpy() + ref_bn.eps)
    w_f = w * f[:, None, None, None]
    scale = np.abs(w_f).reshape(8, -1).max(1) / 127
    w_q = np.clip(np.rint(w_f / scale[:, None, None, None]), -127, 127) * scale[:, None, None, None]
    w_eff = torch.from_numpy((w_q / f[:, None, None, None]).astype(np.float32))
    y = F.conv2d(x, w_eff, conv.bias.detach(), padding=1)  # the conv the BN sees
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    expected = (y - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
    expected = expected * ref_bn.weight.detach()[None, :, None, None] + ref_bn.bias.detach()[None, :, None, None]
    assert torch.allclose(out, expected, atol=2e-5, rtol=1e-5), (out - expected).abs().max()
    # running statistics follow the same batch (momentum 0.1, unbiased variance), to float precision
    n = y.numel() / y.shape[1]
    run_mean = 0.9 * ref_bn.running_mean + 0.1 * mean
    run_var = 0.9 * ref_bn.running_var + 0.1 * var * n / (n - 1)
    assert torch.allclose(bn.running_mean, run_mean, atol=1e-6) and torch.allclose(bn.running_var, run_var, rtol=1e-5)


# --- config, errors, reports ---------------------------------------------------------------


def test_config_unknown_key_suggests_fix() -> None:
    with pytest.raises(ConfigError, match='Did you mean "freeze_bn_step"'):
        qat.QATConfig.from_dict({"variant": "lsq", "freeze_bn_steps": 3})
    with pytest.raises(ConfigError, match='Did you mean "pact"'):
        qat.QATConfig(variant="pacts")
    with pytest.raises(ConfigError, match="moving_rate"):
        qat.QATConfig(moving_rate=1.5)
    cfg = qat.QATConfig.from_dict({"variant": "pact", "skip": ["fc"], "freeze_bn_step": 10})
    assert cfg.skip == ("fc",) and cfg.variant == "pact" and cfg.freeze_bn_step == 10


def test_recipe_yaml_typo_suggests_fix(tmp_path) -> None:
    recipe = qat.load_recipe()
    assert recipe.epochs > 0 and recipe.qat_config().variant in qat.VARIANTS
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nbach_size: 64\n")
    with pytest.raises(ConfigError, match='Did you mean "batch_size"'):
        qat.load_recipe(bad)
    bad.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        qat.load_recipe(bad)


def test_unsupported_modules_listed_and_left_in_float() -> None:
    with pytest.warns(qat.QATWarning, match="up .ConvTranspose2d."):
        qmodel = qat.prepare(NetWithUnsupported(), torch.randn(1, 1, 8, 8))
    ops = {(u.name, u.op) for u in qmodel.report.unsupported}
    assert ("up", "ConvTranspose2d") in ops and ("sigmoid", "sigmoid") in ops
    assert isinstance(qmodel.net.get_submodule("up"), nn.ConvTranspose2d)
    assert set(qmodel.report.quantized) == {"conv", "head"}


def test_untraceable_model_error_names_the_module() -> None:
    with pytest.raises(ModelLoadError, match=r"module 'gate' \(Gate\)"):
        qat.prepare(UntraceableNet(), torch.randn(1, 1, 8, 8))
    qmodel = qat.prepare(UntraceableNet(), torch.randn(1, 1, 8, 8), qat.QATConfig(skip=("gate",)))
    assert qmodel.report.skipped == ("gate",)
    with pytest.raises(ConfigError, match='Did you mean "gate"'):
        qat.prepare(UntraceableNet(), torch.randn(1, 1, 8, 8), qat.QATConfig(skip=("gates",)))


def test_checkpoint_roundtrip_with_weights_only(tmp_path) -> None:
    cfg = qat.QATConfig(variant="pact", freeze_bn_step=1)
    qmodel = qat.prepare(build("resnet"), images(2), cfg)
    train(qmodel, 3)
    path = qat.save_checkpoint(qmodel, tmp_path / "qat.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["variant"] == "pact"
    fresh = qat.prepare(build("resnet", seed=5), images(2), cfg)
    qat.load_checkpoint(fresh, path)
    x = images(8, seed=9)
    assert torch.equal(fresh.eval()(x), qmodel.eval()(x))
    assert int(fresh.step) == 3
    other = qat.prepare(build("resnet"), images(2), qat.QATConfig(variant="lsq"))
    with pytest.raises(ConfigError, match="trained with"):
        qat.load_checkpoint(other, path)


def test_prepare_rejects_wrapped_or_prepared_models() -> None:
    qmodel = qat.prepare(build("convnet"), images(2))
    with pytest.raises(ConfigError, match="plain float model"):
        qat.prepare(qmodel, images(2))
    with pytest.raises(ConfigError, match="tensor"):
        qat.prepare(build("convnet"), [1, 2])


def test_simulated_low_bits_train_but_do_not_export(tmp_path) -> None:
    qmodel = qat.prepare(build("convnet"), images(2), qat.QATConfig(weight_bits=4, act_bits=4))
    train(qmodel, 2)
    seen: list[torch.Tensor] = []
    hooks = [q.register_forward_hook(lambda m, i, o: seen.append(o)) for _, q in qmodel.quantizers()]
    values = qmodel.eval()(images(4))
    for h in hooks:
        h.remove()
    assert torch.isfinite(values).all() and seen
    assert all(len(torch.unique(v)) <= 16 for v in seen)  # every activation on a 4-bit grid
    with warnings.catch_warnings(), pytest.raises(ConfigError, match="8-bit"):
        qat.convert(qmodel, tmp_path / "m.onnx")


def test_bn_channel_with_zero_gamma_stays_finite() -> None:
    model = build("convnet")
    with torch.no_grad():
        model.bn1.weight[0] = 0.0
    qmodel = qat.prepare(model, images(2))
    train(qmodel, 2)
    out = qmodel.eval()(images(4))
    assert torch.isfinite(out).all()


def test_nan_activation_raises_during_training() -> None:
    qmodel = qat.prepare(build("convnet"), images(2)).train()
    x = images(4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationDataError, match="NaN or Inf"):
        qmodel(x)


class FloatMacsNet(nn.Module):
    """Float MACs feeding quantized layers: an unsupported ConvTranspose (through ReLU and
    max-pool), a skipped Sequential ending in Conv-BN (through clamp) and a functional conv."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(1, 4, 2, stride=2)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.kernel = nn.Parameter(torch.randn(4, 4, 1, 1))
        self.conv_c = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_a(F.max_pool2d(F.relu(self.up(x)), 2))
        x = self.conv_b(torch.clamp(self.block(x), 0.0, 6.0))
        return self.conv_c(F.conv2d(x, self.kernel)) + x


def test_float_mac_outputs_get_no_activation_quantizer() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qat.QATWarning)
        qmodel = qat.prepare(FloatMacsNet(), images(2), qat.QATConfig(skip=("block",), capture="fx"))
    net = qmodel.net
    readers = {str(n.target): n.args[0] for n in net.graph.nodes if n.op == "call_module"}
    # The skipped block reads conv_a's quantized output and the functional conv reads conv_b's (quantized
    # for the add): onnxruntime could fuse either float conv with a QuantizeLinear behind it, so conv_b and
    # conv_c read them in float.
    for name in ("conv_b", "conv_c"):
        source = readers[name]
        assert not (source.op == "call_module" and str(source.target).startswith("act_quant")), name
        assert net.get_submodule(name).input_quant is None  # float input: float bias
    # The ConvTranspose reads the float image: it cannot become an integer kernel, so conv_a quantizes its
    # input (after ReLU and max-pool) as usual.
    assert str(readers["conv_a"].target) == "act_quant.in_max_pool2d"
    assert net.get_submodule("conv_a").input_quant is not None
    # The residual add still quantizes conv_b's output (a QAT conv) and its own output.
    assert qmodel.report.quantized == ("conv_a", "conv_b", "conv_c", "add")
    with torch.no_grad():
        assert torch.isfinite(qmodel(images(4))).all()
