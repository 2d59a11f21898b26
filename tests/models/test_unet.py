"""U-Net: per-pixel logits at the input's size, the up and skip switches, one-line size errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablab.complexity import measure
from ablab.errors import ConfigError
from ablab.models.unet import UNet


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("size", [16, 32, 48])
def test_logits_per_class_and_pixel_at_the_input_size(depth: int, size: int) -> None:
    torch.manual_seed(0)
    net = UNet(3, 5, depth=depth, base_width=4)
    x = torch.rand(2, 3, size, size)
    out = net(x)
    assert out.shape == (2, 5, size, size)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())  # every level is on the path


def test_non_square_inputs_keep_their_shape() -> None:
    assert UNet(1, 2, depth=2, base_width=4)(torch.rand(1, 1, 16, 24)).shape == (1, 2, 16, 24)


@pytest.mark.parametrize("up", ["transposed", "bilinear"])
def test_no_skips_drops_exactly_the_skip_channels_of_each_first_up_conv(up: str) -> None:
    """skip=none: decoder level i's first 3x3 conv reads w_i channels instead of 2·w_i, so
    Σ_i 9 · w_i · w_i weights fewer; nothing else changes, the output shape included."""
    widths = [4, 8, 16]  # base_width 4, depth 3
    concat = UNet(3, 5, depth=3, base_width=4, up=up)
    plain = UNet(3, 5, depth=3, base_width=4, up=up, skip="none")
    assert n_params(concat) - n_params(plain) == sum(9 * w * w for w in widths)
    x = torch.rand(2, 3, 32, 32)
    assert plain(x).shape == concat(x).shape == (2, 5, 32, 32)
    assert measure(plain, x).macs < measure(concat, x).macs


def test_bilinear_up_has_a_quarter_of_the_up_weights() -> None:
    """transposed: a 2x2 kernel, 4 · c_in · c_out weights; bilinear: a 1x1 conv, c_in · c_out;
    the same biases. With c_in = 2 · c_out at every level: Σ 3 · 2w · w fewer weights."""
    widths = [8, 16, 32]
    transposed = UNet(3, 5, depth=3, base_width=8, up="transposed")
    bilinear = UNet(3, 5, depth=3, base_width=8, up="bilinear")
    assert n_params(transposed) - n_params(bilinear) == sum(3 * 2 * w * w for w in widths)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in bilinear.modules())


@pytest.mark.parametrize(
    ("depth", "size", "message"),
    [
        (3, 28, "depth 3 needs input height and width divisible by 8; got 28x28: use "
                "data.image_size=24 or 32"),
        (3, 30, "got 30x30: use data.image_size=24 or 32"),
        (2, 6, "divisible by 4; got 6x6: use data.image_size=4 or 8"),
        (3, 4, "got 4x4: use data.image_size=8 "),
    ],
)  # fmt: skip
def test_a_size_the_poolings_cannot_halve_is_one_line(depth: int, size: int, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        UNet(3, 2, depth=depth, base_width=4)(torch.rand(1, 3, size, size))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("switch", "message"),
    [
        ({"up": "nearest"}, "unknown U-Net up-sampling 'nearest'; valid: bilinear, transposed"),
        ({"skip": "add"}, "unknown U-Net skip 'add'; valid: concat, none"),
        ({"norm": "batch"}, "unknown norm 'batch'"),
        ({"depth": 0}, "model.depth=0"),
    ],
)
def test_unknown_switches_are_one_line(switch: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        UNet(3, 2, base_width=4, **switch)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_norm_none_leaves_no_norm_and_gives_convs_biases() -> None:
    net = UNet(3, 2, depth=2, base_width=4, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))


def test_traced_and_exported_with_the_size_check_kept() -> None:
    """fx traces through the size check (wrapped: one call node, no Python branch), so the
    complexity trace gets receptive fields; torch.export computes the eager net's output."""
    net = UNet(3, 4, depth=2, base_width=4).eval()
    graph = torch.fx.symbolic_trace(net).graph
    assert any(n.op == "call_function" and n.target.__name__ == "check_input_size"
               for n in graph.nodes)  # fmt: skip
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        program = torch.export.export(net, (x,))
        torch.testing.assert_close(program.module()(x), net(x))
