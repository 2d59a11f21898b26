"""Autoencoders give back an image of their input's shape through a code of code_size numbers."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ablab.errors import ConfigError
from ablab.models.autoencoder import ConvAutoencoder, MLPAutoencoder

FAMILIES = [ConvAutoencoder, MLPAutoencoder]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (1, 32), (3, 28), (3, 9)])
def test_output_has_the_input_shape_through_a_code_of_code_size(family, channels, size) -> None:
    net = family(channels, size, code_size=5)
    x = torch.rand(2, channels, size, size)
    out = net(x)
    assert out.shape == x.shape
    assert net.encode(x).shape == (2, 5)
    assert torch.equal(out, net.decoder(net.encoder(x)))
    out.square().mean().backward()  # every parameter takes part
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing and all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_conv_autoencoder_halves_the_image_once_per_width_and_mirrors_it_back() -> None:
    net = ConvAutoencoder(1, 28, 8, widths=(4, 8))
    x = torch.rand(2, 1, 28, 28)
    maps = net.encoder[:2](x)  # the two conv stages, before the linear code
    assert maps.shape == (2, 8, 7, 7)  # 28 -> 14 -> 7
    assert net.decoder[:-1](net.encode(x)).shape == (2, 4, 14, 14)  # and back, deepest first
    # the output layer is linear: values beyond any activation's range come through
    assert not isinstance(net.decoder[-1], nn.ReLU | nn.Sigmoid | nn.Tanh)


def test_norm_none_leaves_no_norm_and_gives_convs_a_bias() -> None:
    net = ConvAutoencoder(1, 28, 8, widths=(4, 8), norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 4 and all(m.bias is not None for m in convs)
    with_bn = ConvAutoencoder(1, 28, 8, widths=(4, 8), norm="bn")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ConvAutoencoder(1, 7, 8, widths=(4, 8, 16)), "image_size must be at least 8"),
        (lambda: ConvAutoencoder(1, 28, 0), "model.code_size must be positive"),
        (lambda: ConvAutoencoder(1, 28, 8, widths=()), "model.widths must be one or more"),
        (lambda: MLPAutoencoder(1, 28, 8, hidden=(16, 0)), "model.hidden must be positive"),
        (lambda: ConvAutoencoder(1, 28, 8, act="relu7"), "unknown activation 'relu7'"),
        (lambda: ConvAutoencoder(1, 28, 8, norm="batch"), "unknown norm 'batch'"),
    ],
)
def test_a_bad_size_or_switch_is_one_line(make, message) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["ae_conv", "ae_mlp"])
@pytest.mark.parametrize("data", ["digits", "cifar10"])
def test_configs_follow_the_data_shape(name, data, compose_cfg) -> None:
    with compose_cfg("task=reconstruction", f"model={name}", f"data={data}") as cfg:
        net = instantiate(cfg.model)
        c, s = cfg.data.in_channels, cfg.data.image_size
    x = torch.rand(2, c, s, s)
    assert net(x).shape == x.shape and net.encode(x).shape == (2, cfg.model.code_size)
