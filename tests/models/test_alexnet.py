"""AlexNet / ZF-Net / SPP-net: the notes' walk-through, torchvision parity, pooling layers."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from torch import nn

from ablab.complexity import measure
from ablab.layers.pooling import ClampedMaxPool2d, SpatialPyramidPool


def build(compose_cfg, name: str, *overrides: str) -> nn.Module:
    with compose_cfg(
        f"model={name}", "model.in_channels=3", "model.num_classes=1000", *overrides
    ) as cfg:
        torch.manual_seed(0)
        return instantiate(cfg.model)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def stage_shapes(net: nn.Module, size: int) -> list[tuple[int, ...]]:
    out = net.stem(torch.rand(1, 3, size, size))
    shapes = [tuple(out.shape[1:])]
    for stage in net.stages:
        out = stage(out)
        shapes.append(tuple(out.shape[1:]))
    return shapes


def test_notes_alexnet_walkthrough(compose_cfg) -> None:
    """60,965,224 parameters (the notes' "240M" is about its size in MB); 55 → 27 → 13 → 6."""
    net = build(compose_cfg, "alexnet")
    assert n_params(net) == 60_965_224
    assert net.stem[0](torch.rand(1, 3, 224, 224)).shape == (1, 96, 55, 55)
    assert stage_shapes(net, 224) == [
        (96, 27, 27), (256, 13, 13), (384, 13, 13), (384, 13, 13), (256, 6, 6),
    ]  # fmt: skip
    conv2 = net.stages[0][0].conv
    assert conv2.groups == 2 and conv2.weight.shape == (256, 48, 5, 5)  # 5x5x48 kernels
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in net.modules()) == 2
    assert net.head[2].in_features == 6 * 6 * 256


def test_torchvision_layout_through_the_switches(compose_cfg) -> None:
    ours = build(compose_cfg, "alexnet_torchvision")
    reference = torchvision.models.alexnet(weights=None)
    assert n_params(ours) == n_params(reference) == 61_100_840
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in ours.modules())
    x = torch.rand(1, 3, 224, 224)
    assert ours.forward_features(x).shape == reference.features(x).shape == (1, 256, 6, 6)


def test_zfnet_sizes(compose_cfg) -> None:
    """Zeiler & Fergus 2014 Fig. 3: 224 → 110 → 55 → 26 → 13 → 13 → 13 → 6."""
    net = build(compose_cfg, "zfnet")
    assert net.stem[0](torch.rand(1, 3, 224, 224)).shape[-1] == 110
    assert [s[-1] for s in stage_shapes(net, 224)] == [55, 13, 13, 13, 6]
    assert net.stages[0][0](torch.rand(1, 96, 55, 55)).shape[-1] == 26


def test_receptive_fields_traced(compose_cfg) -> None:
    """AlexNet's conv5 sees 195x195 pixels: R grows by (k − 1)·J through 11/4, 3/2, 5, 3/2, 3, 3, 3."""
    stats = {s.name: s for s in measure(build(compose_cfg, "alexnet"), (3, 224, 224)).layers}
    assert (stats["stem.0.conv"].receptive_field, stats["stem.0.conv"].jump) == (11, 4)
    assert (stats["stem.1"].receptive_field, stats["stem.1"].jump) == (19, 8)
    assert (stats["stages.3.0.conv"].receptive_field, stats["stages.3.0.conv"].jump) == (163, 16)
    assert stats["stages.3.1"].receptive_field == 195


@pytest.mark.parametrize("size", [180, 224, 260])
def test_spp_head_gives_a_fixed_length_from_any_size(size, compose_cfg) -> None:
    net = build(compose_cfg, "zfnet_spp").eval()
    pooled = net.head[0](net.forward_features(torch.rand(1, 3, size, size)))
    assert pooled.shape == (1, 256 * (36 + 9 + 4 + 1))
    assert net(torch.rand(1, 3, size, size)).shape == (1, 1000)


def test_spatial_pyramid_pool_bins() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = SpatialPyramidPool((1, 2))(x)
    assert out.tolist() == [[15.0, 5.0, 7.0, 13.0, 15.0]]  # global max, then 2x2 bin maxima


def test_clamped_pool_equals_max_pool_on_large_maps_and_pools_small_ones() -> None:
    pool, reference = ClampedMaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(3, 2, ceil_mode=True)
    x = torch.randn(2, 4, 13, 13)
    assert torch.equal(pool(x), reference(x))
    tiny = torch.randn(2, 4, 1, 1)
    assert torch.equal(pool(tiny), tiny)
