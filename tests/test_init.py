"""Init schemes: each changes the weights and gives the variance its formula says."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ablab.errors import ConfigError
from ablab.init import initialize
from ablab.registry import INIT
from conftest import CONF

INIT_CONFIGS = sorted(p.stem for p in (CONF / "init").glob("*.yaml"))


def layers() -> nn.Sequential:
    """A conv and a linear layer big enough for sample variances within ~1% (plus a norm)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.Flatten(), nn.Linear(512, 256)
    )


def fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


# scheme, options, expected variance from (fan_in, fan_out)
VARIANCE = [
    ("normal", {"std": 0.05}, lambda fi, fo: 0.05**2),
    ("uniform", {"a": 0.1}, lambda fi, fo: 0.1**2 / 3),
    ("xavier_uniform", {}, lambda fi, fo: 2 / (fi + fo)),
    ("xavier_normal", {"gain": 2.0}, lambda fi, fo: 4 * 2 / (fi + fo)),
    ("kaiming_uniform", {}, lambda fi, fo: 2 / fi),
    ("kaiming_normal", {}, lambda fi, fo: 2 / fi),
    ("kaiming_normal", {"mode": "fan_out"}, lambda fi, fo: 2 / fo),
    ("kaiming_normal", {"nonlinearity": "tanh"}, lambda fi, fo: (5 / 3) ** 2 / fi),
    ("lecun_normal", {}, lambda fi, fo: 1 / fi),
]


@pytest.mark.parametrize(("scheme", "options", "expected"), VARIANCE)
def test_variance_matches_the_formula(scheme, options, expected) -> None:
    net = initialize(layers(), scheme, **options)
    for layer in (net[0], net[3]):
        w = layer.weight.detach()
        var = expected(*fans(w))
        # Sample variance of n draws has relative standard error sqrt(2/n) < 0.6% here.
        assert w.var().item() == pytest.approx(var, rel=0.05), (scheme, type(layer).__name__)
        assert abs(w.mean().item()) < 0.05 * math.sqrt(var)
        assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("scheme", [s for s in INIT.names() if s != "default"])
def test_every_scheme_changes_the_weights_and_resets_norms(scheme) -> None:
    reference = layers()
    net = layers()
    with torch.no_grad():
        net[1].weight.mul_(3.0)
        net[1].bias.add_(1.0)
    initialize(net, scheme)
    assert not torch.equal(net[0].weight, reference[0].weight)
    assert not torch.equal(net[3].weight, reference[3].weight)
    assert torch.equal(net[1].weight, torch.ones(128)) and torch.equal(
        net[1].bias, torch.zeros(128)
    )


def test_symmetric_schemes_make_every_unit_identical() -> None:
    for scheme, options in (("zeros", {}), ("constant", {"value": 0.3})):
        net = initialize(layers(), scheme, **options)
        for layer in (net[0], net[3]):
            units = layer.weight.flatten(1)
            assert torch.equal(units, units[:1].expand_as(units))
    assert torch.count_nonzero(initialize(layers(), "zeros")[3].weight) == 0


def test_orthogonal_rows_are_orthonormal() -> None:
    net = initialize(layers(), "orthogonal")
    w = net[3].weight.detach()  # 256 x 512: orthonormal rows
    assert torch.allclose(w @ w.T, torch.eye(256), atol=1e-5)
    conv = net[0].weight.detach().flatten(1)  # 128 x 576
    assert torch.allclose(conv @ conv.T, torch.eye(128), atol=1e-5)


def test_default_keeps_pytorch_init() -> None:
    net, reference = initialize(layers(), "default"), layers()
    for a, b in zip(net.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", INIT_CONFIGS)
def test_every_init_config_applies_to_a_zoo_model(name, compose_cfg) -> None:
    with compose_cfg(f"init={name}", "model=resnet20") as cfg:
        net = initialize(instantiate(cfg.model), **cfg.init)
    out = net(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def last_weights(net: nn.Module) -> list[torch.Tensor]:
    """What each residual block's ``zero_init_last`` zeroes: the last norm's γ in post-activation
    blocks, the last conv's weight in pre-activation ones (their last layer is a conv)."""
    lasts = []
    for block in net.modules():
        if callable(getattr(block, "zero_init_last", None)):
            last = block.residual[-1]
            lasts.append(last.norm.weight if hasattr(last, "norm") else last[-1].weight)
    assert lasts, "no block with zero_init_last"
    return lasts


def built(compose_cfg, *overrides: str) -> nn.Module:
    """The model and init of the real config, as training/run.py builds them."""
    with compose_cfg(*overrides) as cfg:
        torch.manual_seed(0)
        return initialize(instantiate(cfg.model), **cfg.init)


# Basic blocks with parameter-free shortcuts, grouped bottlenecks with projections, pre-activation.
RESIDUAL = ["resnet20", "resnext29_8x16d", "preact_resnet20"]


@pytest.mark.parametrize("name", INIT_CONFIGS)
@pytest.mark.parametrize("model", RESIDUAL)
def test_model_zero_init_last_holds_under_every_scheme(model, name, compose_cfg) -> None:
    """``model.zero_init_last=true`` is the model's switch: no init scheme undoes it."""
    net = built(compose_cfg, f"model={model}", f"init={name}", "model.zero_init_last=true")
    assert all(torch.count_nonzero(w) == 0 for w in last_weights(net))


@pytest.mark.parametrize("name", INIT_CONFIGS)
def test_without_zero_init_last_the_last_norms_are_not_zero(name, compose_cfg) -> None:
    net = built(compose_cfg, "model=resnet20", f"init={name}", "model.zero_init_last=false")
    assert all(torch.count_nonzero(w) > 0 for w in last_weights(net))


@pytest.mark.parametrize("switch", ["model.zero_init_last=true", "init.zero_init_last=true"])
def test_zero_init_last_only_where_there_is_a_shortcut(switch, compose_cfg) -> None:
    residual = built(compose_cfg, "model=resnet20", "init=kaiming_normal", switch)
    assert all(torch.count_nonzero(w) == 0 for w in last_weights(residual))
    plain = built(compose_cfg, "model=plain20", "init=kaiming_normal", switch)
    assert all(torch.equal(w, torch.ones_like(w)) for w in last_weights(plain))


@pytest.mark.parametrize(
    ("scheme", "options", "message"),
    [
        (
            "kaiming_normal",
            {"mode": "fan_avg"},
            "unknown init mode 'fan_avg'; valid: fan_in, fan_out",
        ),
        ("kaiming_uniform", {"nonlinearity": "swish"}, "unknown init nonlinearity 'swish'"),
        ("normal", {"std": -1.0}, "init.std must be > 0, got -1.0"),
        ("uniform", {"a": 0.0}, "init.a must be > 0"),
        ("xavier_normal", {"std": 1.0}, "init 'xavier_normal' rejected its options"),
        ("he", {}, "unknown init scheme 'he'"),
    ],
)
def test_bad_values_are_one_line_errors(scheme, options, message) -> None:
    with pytest.raises(ConfigError) as info:
        initialize(layers(), scheme, **options)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("backend", ["ablab", "torch"])
def test_schemes_set_each_gate_of_a_recurrent_layer_as_a_layer_of_its_own(backend: str) -> None:
    """Xavier on an LSTM's (4H, H) recurrent matrix: each gate's H x H block gets std
    √(2 / (H + H)), not the stacked matrix's √(2 / (4H + H)); the gates' biases are zeroed;
    orthogonal makes every gate's recurrent block orthogonal (Saxe et al. 2014)."""
    from ablab.models import RecurrentNet

    torch.manual_seed(0)
    net = RecurrentNet("lstm", 3, 128, 1, backend=backend)
    initialize(net, "xavier_normal")
    params = dict(net.named_parameters())
    (hh,) = [p for n, p in params.items() if "weight_hh" in n]
    for block in hh.detach().split(128):
        assert block.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)
    assert all(not p.any() for n, p in params.items() if "bias_" in n and "head" not in n)
    initialize(net, "orthogonal")
    (hh,) = [p for n, p in net.named_parameters() if "weight_hh" in n]
    for block in hh.detach().split(128):
        assert torch.allclose(block @ block.T, torch.eye(128), atol=1e-5)


@pytest.mark.parametrize("backend", ["ablab", "torch"])
def test_irnn_starts_each_recurrent_block_at_the_identity(backend: str) -> None:
    """Le et al. 2015: W_hh = gain · I block by block, every other weight N(0, std²), biases 0."""
    from ablab.models import RecurrentNet

    torch.manual_seed(0)
    net = RecurrentNet("rnn", 64, 128, 1, nonlinearity="relu", backend=backend)
    initialize(net, "irnn", gain=0.9, std=0.01)
    params = dict(net.named_parameters())
    (hh,) = [p for n, p in params.items() if "weight_hh" in n]
    (ih,) = [p for n, p in params.items() if "weight_ih" in n]
    assert torch.equal(hh.detach(), 0.9 * torch.eye(128))
    assert ih.std().item() == pytest.approx(0.01, rel=0.05)
    assert all(not p.any() for n, p in params.items() if "bias" in n)
