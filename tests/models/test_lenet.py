"""LeNet-5 against the notes' walk-through (with their slips corrected)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablab.errors import ConfigError
from ablab.models import LeNet5


def test_parameter_count_matches_the_described_net() -> None:
    # C1 156 + C3 2,416 + C5 48,120 + F6 10,164 + output 850
    assert sum(p.numel() for p in LeNet5().parameters()) == 61_706


def test_layer_output_shapes_follow_the_notes() -> None:
    net = LeNet5()
    x = torch.rand(2, 1, 28, 28)
    c1 = net.stem[0](x)
    s2 = net.stem(x)
    c3 = net.stages[0](s2)
    s4 = net.stages(s2)
    c5 = net.head[0](s4)
    assert c1.shape[1:] == (6, 28, 28)  # needs padding 2, which the notes leave unstated
    assert s2.shape[1:] == (6, 14, 14)
    assert c3.shape[1:] == (16, 10, 10)
    assert s4.shape[1:] == (16, 5, 5)  # the notes say 5x5x6
    assert c5.shape[1:] == (120, 1, 1)
    assert net(x).shape == (2, 10)


def test_switches() -> None:
    relu_bn = LeNet5(act="relu", norm="bn", pool="avg", in_channels=3, num_classes=4)
    kinds = {type(m) for m in relu_bn.modules()}
    assert {nn.ReLU, nn.BatchNorm2d, nn.AvgPool2d} <= kinds and nn.Sigmoid not in kinds
    assert all(m.bias is None for m in relu_bn.modules() if isinstance(m, nn.Conv2d))
    assert relu_bn(torch.rand(2, 3, 32, 32)).shape == (2, 4)  # 32 px input passes too
    plain = LeNet5()
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))
    with pytest.raises(ConfigError, match="unknown pool 'mean'"):
        LeNet5(pool="mean")


def test_backward_reaches_every_parameter() -> None:
    net = LeNet5()
    net(torch.rand(4, 1, 28, 28)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
