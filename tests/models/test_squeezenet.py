"""SqueezeNet 1.0 / 1.1 against torchvision and the paper; the Fire module and its switches."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import fx, nn

from ablab.blocks.fire import Fire
from ablab.complexity import measure
from ablab.errors import ConfigError
from ablab.registry import BLOCK

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build(compose_cfg, name: str, *overrides: str) -> nn.Module:
    with compose_cfg(
        f"model={name}", "model.in_channels=3", "model.num_classes=1000", *overrides
    ) as cfg:
        torch.manual_seed(0)
        return instantiate(cfg.model)


@pytest.mark.parametrize(("name", "expected"), [("squeezenet1_0", 1_248_424),
                                                ("squeezenet1_1", 1_235_496)])  # fmt: skip
def test_parameter_count(name, expected, compose_cfg):
    # torchvision's counts; outputs with its weights: tests/models/test_torchvision_equivalence.py
    assert n_params(build(compose_cfg, name)) == expected


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("squeezenet1_0", [(96, 54, 54), (256, 54, 54), (512, 27, 27), (512, 13, 13)]),
        ("squeezenet1_1", [(64, 55, 55), (128, 55, 55), (256, 27, 27), (512, 13, 13)]),
    ],
)
def test_shapes_at_224(name, sizes, compose_cfg) -> None:
    net = build(compose_cfg, name).eval()
    with torch.no_grad():
        out = net.stem(torch.rand(1, 3, 224, 224))
        shapes = [tuple(out.shape[1:])]
        for stage in net.stages:
            out = stage(out)
            shapes.append(tuple(out.shape[1:]))
    assert shapes == sizes


def test_fire_concatenates_expand_widths(compose_cfg) -> None:
    """Table 1's s1x1 / e1x1 / e3x3 from the output widths, SR = 1/8 and pct3x3 = 1/2."""
    net = build(compose_cfg, "squeezenet1_0")
    fires = [m for m in net.modules() if isinstance(m, Fire)]
    widths = [
        (
            f.squeeze.conv.out_channels,
            f.expand_1x1.conv.out_channels,
            f.expand_3x3.conv.out_channels,
        )
        for f in fires
    ]
    assert widths == [
        (16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
        (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256),
    ]  # fmt: skip
    fire = BLOCK["fire"](96, 128, expand_3x3_ratio=0.25, squeeze_ratio=0.25)
    assert fire(torch.rand(1, 96, 7, 7)).shape == (1, 128, 7, 7)
    assert (fire.squeeze.conv.out_channels, fire.expand_1x1.conv.out_channels) == (32, 96)
    assert fire.expand_3x3.conv.out_channels == 32
    with pytest.raises(ConfigError, match="empty"):
        Fire(96, 128, expand_3x3_ratio=1.0)
    with pytest.raises(ConfigError, match="stride 1 only"):
        Fire(96, 128, 2)


def test_no_norm_by_default_and_norm_switch(compose_cfg) -> None:
    plain = build(compose_cfg, "squeezenet1_1")
    assert not any(isinstance(m, NORM_TYPES) for m in plain.modules())
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    small = build(compose_cfg, "squeezenet_small")  # the CIFAR form adds BN ...
    assert any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    stripped = build(compose_cfg, "squeezenet_small", "model.norm=none")  # ... and drops it
    assert not any(isinstance(m, NORM_TYPES) for m in stripped.modules())


def test_bypass_switch(compose_cfg) -> None:
    """§6: simple bypass around fire3/5/7/9 (widths match, no parameters); complex bypass adds
    a 1x1 conv around the other four."""
    vanilla = build(compose_cfg, "squeezenet1_0")
    simple = build(compose_cfg, "squeezenet1_0", "model.shortcut=identity")
    complex_ = build(compose_cfg, "squeezenet1_0", "model.shortcut=projection")
    fires = [m for m in simple.modules() if isinstance(m, Fire)]
    assert [f.shortcut is not None for f in fires] == [False, True] * 4
    assert n_params(simple) == n_params(vanilla)
    extra = sum(
        c_in * c_out + c_out for c_in, c_out in [(96, 128), (128, 256), (256, 384), (384, 512)]
    )
    assert n_params(complex_) - n_params(vanilla) == extra
    assert simple(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


def test_small_form_keeps_32_px(compose_cfg) -> None:
    net = build(compose_cfg, "squeezenet_small", "model.num_classes=10")
    out = net.stem(torch.rand(2, 3, 32, 32))
    sizes = [out.shape[-1]]
    for stage in net.stages:
        out = stage(out)
        sizes.append(out.shape[-1])
    assert sizes == [32, 32, 16, 8]
    assert net.head(out).shape == (2, 10)


@pytest.mark.parametrize(("name", "smallest"), [("squeezenet1_0", 21), ("squeezenet1_1", 17)])
def test_imagenet_forms_minimum_input(name, smallest, compose_cfg) -> None:
    net = build(compose_cfg, name)
    assert net(torch.rand(1, 3, smallest, smallest)).shape == (1, 1000)
    with pytest.raises(RuntimeError):
        net(torch.rand(1, 3, smallest - 1, smallest - 1))


def test_measure_traces_receptive_fields(compose_cfg) -> None:
    net = build(compose_cfg, "squeezenet1_1")
    fx.symbolic_trace(net)
    stats = measure(net, (3, 224, 224))
    conv10 = next(s for s in stats.layers if s.name == "head.1")
    # conv1 3x3/2 → R 3, J 2; pool → 7, 4; fire2-3 → 23; pool → 31, 8; fire4-5 → 63;
    # pool → 79, 16; fire6-9 add 2·16 each → 207; the 1x1 conv10 keeps it.
    assert (conv10.receptive_field, conv10.jump) == (207, 16)
    last_fire = [s for s in stats.layers if s.name.startswith("stages.2.4.expand_3x3")]
    assert last_fire and all(s.receptive_field == 207 for s in last_fire if s.kind == "Conv2d")
