"""FeaturePyramid (Lin et al. 2017): shapes at any input size, the top-down sum, extra levels,
gradients, and its MACs on top of a zoo backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablab.complexity import measure
from ablab.errors import ConfigError
from ablab.layers.fpn import FeaturePyramid
from ablab.models.levels import Backbone
from ablab.models.resnet import ResNet

D = 8  # pyramid channels


def tiny_resnet() -> ResNet:
    """An ImageNet-layout ResNet with 1 block per stage: levels at strides 4, 8, 16, 32."""
    torch.manual_seed(0)
    return ResNet(3, 10, depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8).eval()


@pytest.mark.parametrize("size", [64, 97, 50, 33, 17])
@pytest.mark.parametrize("extra_from", ["backbone", "pyramid"])
def test_shapes_at_any_input_size(size, extra_from) -> None:
    """One d-channel map per level at the level's size, then P6, P7 halving (rounded up): odd
    sizes (97 px: levels 25, 13, 7, 4) upsample to the lateral's own size."""
    net = tiny_resnet()
    fpn = FeaturePyramid(net.level_channels, D, extra_levels=2, extra_from=extra_from)
    strides = fpn.output_strides(net.level_strides)
    assert strides == (4, 8, 16, 32, 64, 128)
    with torch.no_grad():
        levels = net.forward_levels(torch.rand(2, 3, size, size))
        pyramid = fpn(levels)
    sides = [math.ceil(size / s) for s in strides]
    assert [tuple(p.shape) for p in pyramid] == [(2, D, n, n) for n in sides]
    assert [p.shape[-2:] for p in pyramid[:4]] == [c.shape[-2:] for c in levels]


def test_non_square_inputs() -> None:
    net = tiny_resnet()
    fpn = FeaturePyramid(net.level_channels, D, extra_levels=1)
    with torch.no_grad():
        pyramid = fpn(net.forward_levels(torch.rand(1, 3, 45, 70)))
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(12, 18), (6, 9), (3, 5), (2, 3), (1, 2)]


def test_top_down_path_adds_the_coarser_level() -> None:
    """With the finest lateral zeroed, P_0 is the smoothed, upsampled coarser map M_1, and
    carries C_1's signal although C_0 no longer reaches it."""
    torch.manual_seed(0)
    fpn = FeaturePyramid((4, 6), D).eval()
    fine, coarse = torch.randn(1, 4, 9, 9), torch.randn(1, 6, 5, 5)
    with torch.no_grad():
        before = fpn([fine, coarse])[0]
        # The fine map alone does not explain P_0: the coarse level reaches it from above.
        assert not torch.allclose(before, fpn([fine, torch.zeros_like(coarse)])[0])
        fpn.laterals[0].conv.weight.zero_()
        fpn.laterals[0].conv.bias.zero_()
        p0 = fpn([fine, coarse])[0]
        up = F.interpolate(fpn.laterals[1](coarse), size=(9, 9), mode="nearest")
        torch.testing.assert_close(p0, fpn.smoothing[0](up))
        assert p0.abs().sum() > 0
        assert torch.equal(p0, fpn([torch.randn_like(fine), coarse])[0])


@pytest.mark.parametrize("norm", ["none", "gn"])
def test_backward_reaches_every_parameter(norm) -> None:
    net = tiny_resnet().train()
    fpn = FeaturePyramid(net.level_channels, D, extra_levels=2, norm=norm)
    pyramid = fpn(net.forward_levels(torch.rand(2, 3, 64, 64)))
    sum(p.square().mean() for p in pyramid).backward()
    missing = [n for n, p in fpn.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in fpn.parameters())
    convs = [m for m in fpn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 + 4 + 2
    # A conv has a bias exactly when no norm with a shift follows it.
    assert all((c.bias is None) == (norm == "gn") for c in convs)
    assert any(isinstance(m, nn.GroupNorm) for m in fpn.modules()) == (norm == "gn")


def test_extra_levels_read_the_backbone_or_the_pyramid() -> None:
    """RetinaNet's P6 reads C5 (64 channels here), FCOS's reads P5 (d); P7 is ReLU then conv."""
    from_c5 = FeaturePyramid((16, 64), D, extra_levels=2)
    from_p5 = FeaturePyramid((16, 64), D, extra_levels=2, extra_from="pyramid")
    assert from_c5.extras[0][0].conv.in_channels == 64
    assert from_p5.extras[0][0].conv.in_channels == D
    assert isinstance(from_c5.extras[1][0], nn.ReLU)
    assert FeaturePyramid((16, 64), D).output_strides((8, 16)) == (8, 16)


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="valid: backbone, pyramid"):
        FeaturePyramid((8, 16), D, extra_from="p5")
    with pytest.raises(ConfigError, match="extra_levels"):
        FeaturePyramid((8, 16), D, extra_levels=-1)
    with pytest.raises(ValueError, match="built for 2 levels, given 3"):
        FeaturePyramid((8, 16), D)([torch.rand(1, 8, 4, 4)] * 3)


def test_macs_of_backbone_plus_pyramid() -> None:
    """measure() traces backbone + FPN as one module: its MACs are the backbone's plus exactly
    Σ_l H_l W_l (C_l d + 9 d²) for laterals and smoothing, plus 9 C_in d per extra-level pixel
    (upsampling and additions are not multiply-adds)."""
    net, size = tiny_resnet(), 64
    backbone = Backbone(net)
    fpn = FeaturePyramid(net.level_channels, D, extra_levels=2)
    alone = measure(backbone, (3, size, size))
    both = measure(nn.Sequential(backbone, fpn), (3, size, size))
    sides = [math.ceil(size / s) for s in fpn.output_strides(net.level_strides)]
    pyramid_macs = sum(
        n * n * (c * D + 9 * D * D) for n, c in zip(sides[:4], net.level_channels, strict=True)
    )
    extra_inputs = (net.level_channels[-1], D)
    pyramid_macs += sum(n * n * 9 * c * D for n, c in zip(sides[4:], extra_inputs, strict=True))
    assert both.macs == alone.macs + pyramid_macs > alone.macs
    assert both.params == alone.params + sum(p.numel() for p in fpn.parameters())
    fpn_layers = [s for s in both.layers if s.name.startswith("1.")]
    assert sum(s.macs for s in fpn_layers) == pyramid_macs
