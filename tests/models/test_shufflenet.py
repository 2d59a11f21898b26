"""ShuffleNet v2 and channel shuffle against torchvision and the papers (Zhang / Ma et al. 2018)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import fx, nn

from ablab.blocks.shuffle import ShuffleV2Unit
from ablab.complexity import measure
from ablab.errors import ConfigError
from ablab.layers.shuffle import ChannelShuffle
from ablab.registry import BLOCK

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def build(compose_cfg, name: str, *overrides: str) -> nn.Module:
    with compose_cfg(f"model={name}", *overrides) as cfg:
        torch.manual_seed(0)
        return instantiate(cfg.model)


def imagenet(compose_cfg) -> nn.Module:
    return build(compose_cfg, "shufflenet_v2_x1_0", "model.in_channels=3", "model.num_classes=1000")


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("channels", "groups"), [(12, 3), (8, 2), (6, 6)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_channel_shuffle_is_the_papers_permutation(channels, groups, training) -> None:
    shuffle = ChannelShuffle(groups).train(training)
    per_group = channels // groups
    # reshape (g, n) → transpose → flatten: output j·g + i is input channel i·n + j
    perm = [i * per_group + j for j in range(per_group) for i in range(groups)]
    x = torch.randn(2, channels, 3, 4)
    assert torch.equal(shuffle(x), x[:, perm])
    assert torch.equal(ChannelShuffle(per_group)(shuffle(x)), x)  # shuffle(C/g) ∘ shuffle(g) = id


def test_channel_shuffle_traces_and_backpropagates() -> None:
    net = nn.Sequential(nn.Conv2d(4, 8, 1), ChannelShuffle(2))
    graph = fx.symbolic_trace(net).graph
    assert [n.op for n in graph.nodes] == ["placeholder", "call_module", "call_module", "output"]
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    net(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(RuntimeError, match="divisible"):
        ChannelShuffle(4)(torch.randn(1, 6, 2, 2))


def test_shufflenet_v2_parameter_count(compose_cfg) -> None:
    # torchvision's count; outputs with its weights: tests/models/test_torchvision_equivalence.py
    assert n_params(imagenet(compose_cfg)) == 2_278_604


def test_shufflenet_v2_shapes_at_224(compose_cfg) -> None:
    net = imagenet(compose_cfg).eval()
    sizes = []
    with torch.no_grad():
        out = net.stem(torch.rand(1, 3, 224, 224))
        assert out.shape[1:] == (24, 56, 56)
        for stage in net.stages:
            out = stage(out)
            sizes.append(tuple(out.shape[1:]))
        assert net.head[0](out).shape[1:] == (1024, 7, 7)
    assert sizes == [(116, 28, 28), (232, 14, 14), (464, 7, 7)]


def test_small_form_keeps_the_resolution(compose_cfg) -> None:
    net = build(compose_cfg, "shufflenet_v2_small")
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    out, sizes = net.stem(torch.rand(1, 1, 32, 32)), []
    for stage in net.stages:
        out = stage(out)
        sizes.append(out.shape[-1])
    assert sizes == [16, 8, 4]


def test_unit_split_and_downsample() -> None:
    unit = BLOCK["shuffle_v2"](16, 16, norm="bn", act="relu")
    assert isinstance(unit, ShuffleV2Unit) and unit.left is None
    assert unit.branch[0].conv.in_channels == 8  # only half the channels enter the branch
    x = torch.randn(2, 16, 6, 6)
    unit.eval()
    with torch.no_grad():
        out = unit(x)
    # After the shuffle with 2 groups the untouched half sits on the even channels.
    assert torch.equal(out[:, 0::2], x[:, :8])
    down = ShuffleV2Unit(16, 32, 2)
    assert down(x).shape == (2, 32, 3, 3) and down.left is not None
    acts = [type(m.act) for m in down.branch]
    assert acts == [nn.ReLU, nn.Identity, nn.ReLU]  # no act after the depthwise conv
    with pytest.raises(ConfigError, match="keeps its width"):
        ShuffleV2Unit(16, 32, 1)
    with pytest.raises(ConfigError, match="even width"):
        ShuffleV2Unit(16, 33, 2)


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "shufflenet_v2_small"])
def test_norm_none_leaves_no_norm_and_biased_convs(name, compose_cfg) -> None:
    net = build(compose_cfg, name, "model.norm=none", "model.act=hswish")
    assert not any(isinstance(m, NORM_TYPES) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    assert any(isinstance(m, nn.Hardswish) for m in net.modules())
    with_bn = build(compose_cfg, name)
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d))


def test_complexity_traces_receptive_fields(compose_cfg) -> None:
    net = build(compose_cfg, "shufflenet_v2_small", "model.in_channels=3")
    stats = measure(net, (3, 32, 32))
    assert stats.params == n_params(net) and stats.macs > 0
    by_name = {s.name: s for s in stats.layers}
    assert by_name["stem.0.conv"].receptive_field == 3
    # Stage 1's first unit: 3x3/2 depthwise on the 3 px field → 5, jump 2; the stride-1 unit
    # after it widens its branch by (3 − 1)·2 = 4, and the split half carries the old field.
    left = by_name["stages.0.0.left.0.conv"]
    assert (left.receptive_field, left.jump) == (5, 2)
    assert by_name["stages.0.1.branch.1.conv"].receptive_field == 9
    assert by_name["stages.0.1.shuffle"].receptive_field == 9
    assert by_name["head.3"].receptive_field == -1
