"""Spatial pyramid pooling (He et al. 2014): a fixed-length vector from any map size, including
sizes the levels do not divide and maps smaller than the finest grid, and on zoo backbones."""

from __future__ import annotations

import pytest
import torch

from ablab.layers.pooling import SpatialPyramidPool
from ablab.models.resnet import ResNet
from ablab.models.shufflenet import ShuffleNetV2


@pytest.mark.parametrize("levels", [(4, 2, 1), (6, 3, 2, 1)])
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (5, 5), (7, 7), (13, 13), (3, 11)])
def test_fixed_length_from_any_map_size(levels, size) -> None:
    """7 px into 4 bins is where the paper's window ⌈a/n⌉ at stride ⌊a/n⌋ gives 6 bins, not 4;
    adaptive bins [⌊i·a/n⌋, ⌈(i+1)·a/n⌉) always give n, overlapping or repeating pixels."""
    pool = SpatialPyramidPool(levels)
    out = pool(torch.randn(2, 5, *size))
    assert out.shape == (2, pool.output_features(5)) == (2, 5 * sum(n * n for n in levels))
    assert torch.isfinite(out).all()


def test_bins_cover_every_pixel_when_the_size_is_not_divisible() -> None:
    """5 px into 2 bins: rows and columns [0, 3) and [2, 5), so the border row and column count."""
    x = torch.arange(25.0).view(1, 1, 5, 5)
    assert SpatialPyramidPool((2,))(x).tolist() == [[12.0, 14.0, 22.0, 24.0]]


def test_a_map_smaller_than_the_grid_repeats_its_pixels() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert SpatialPyramidPool((4,))(x).view(4, 4).tolist() == [
        [1.0, 1.0, 2.0, 2.0],
        [1.0, 1.0, 2.0, 2.0],
        [3.0, 3.0, 4.0, 4.0],
        [3.0, 3.0, 4.0, 4.0],
    ]


@pytest.mark.parametrize(
    "net",
    [
        ResNet(3, 10, depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8),
        ShuffleNetV2(3, 10, depths=(1, 1, 1), widths=(8, 16, 32), stem_width=8, head_width=16),
    ],
    ids=["resnet", "shufflenet_v2"],
)
def test_fixed_length_on_a_backbones_last_level(net) -> None:
    """The deepest level of a zoo backbone at 1x1 to 4x4 (17 to 100 px) pools to one length."""
    pool, net = SpatialPyramidPool((4, 2, 1)), net.eval()
    lengths = set()
    with torch.no_grad():
        for size in (17, 32, 45, 77, 100):
            lengths.add(tuple(pool(net.forward_levels(torch.rand(1, 3, size, size))[-1]).shape))
    assert lengths == {(1, pool.output_features(net.level_channels[-1]))}
