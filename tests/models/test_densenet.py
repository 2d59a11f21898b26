"""DenseNet against torchvision and the paper's layouts (Huang et al. 2017)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from ablab.blocks.dense import DenseBlock, DenseLayer
from ablab.complexity import measure
from ablab.errors import ConfigError
from ablab.registry import BLOCK

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def build(compose_cfg, name: str, *overrides: str) -> nn.Module:
    with compose_cfg(f"model={name}", *overrides) as cfg:
        torch.manual_seed(0)
        return instantiate(cfg.model)


def imagenet(compose_cfg, *overrides: str) -> nn.Module:
    return build(
        compose_cfg, "densenet121", "model.in_channels=3", "model.num_classes=1000", *overrides
    )


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_densenet121_parameter_count(compose_cfg) -> None:
    # torchvision's count; outputs with its weights: tests/models/test_torchvision_equivalence.py
    assert n_params(imagenet(compose_cfg)) == 7_978_856


def test_densenet121_shapes_at_224(compose_cfg) -> None:
    """Stem 224 → 56; block widths c_in + L·k: 64 + 6·32 = 256, 128 + 12·32 = 512, 256 + 24·32 =
    1024, 512 + 16·32 = 1024, each transition halving channels and size."""
    net = imagenet(compose_cfg).eval()
    sizes = []
    with torch.no_grad():
        out = net.stem(torch.rand(1, 3, 224, 224))
        assert out.shape[1:] == (64, 56, 56)
        for stage in net.stages:
            out = stage(out)
            sizes.append(tuple(out.shape[1:]))
    assert sizes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (1024, 7, 7)]
    assert [s.block.out_channels for s in net.stages] == [256, 512, 1024, 1024]


def test_dense_block_concatenates_every_layer() -> None:
    block = DenseBlock(10, 3, 5, bn_size=2)
    x = torch.randn(2, 10, 6, 6)
    out = block(x)
    assert out.shape == (2, 10 + 3 * 5, 6, 6) and block.out_channels == 25
    assert torch.equal(out[:, :10], x)  # the input passes through untouched
    # Layer ℓ reads all 10 + 5ℓ channels before it and writes its own 5.
    assert [layer.bottleneck[2].in_channels for layer in block.layers] == [10, 15, 20]
    assert all(layer.conv[2].out_channels == 5 for layer in block.layers)


def test_dense_layer_is_registered_and_preactivated() -> None:
    layer = BLOCK["dense_layer"](16, 4, norm="bn", act="relu", bn_size=4)
    assert isinstance(layer, DenseLayer)
    kinds = [type(m) for m in layer.modules() if not list(m.children())]
    assert kinds == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d] * 2  # BN-ReLU-1x1 → BN-ReLU-3x3
    assert [m.kernel_size for m in layer.modules() if isinstance(m, nn.Conv2d)] == [(1, 1), (3, 3)]
    plain = DenseLayer(16, 4, bn_size=None, drop_rate=0.2)  # DenseNet without "-B", dropout on
    assert not hasattr(plain, "bottleneck") and isinstance(plain.conv[-1], nn.Dropout)
    with pytest.raises(ConfigError, match="transitions downsample"):
        DenseLayer(16, 4, stride=2)


def test_densenet_bc100_is_the_papers_cifar_net(compose_cfg) -> None:
    """Table 2 lists 0.8M; exactly 769,162 with bias-free convs and BN (10 classes)."""
    net = build(compose_cfg, "densenet_bc100", "model.in_channels=3")
    assert n_params(net) == 769_162
    layers = [m for m in net.modules() if isinstance(m, DenseLayer)]
    assert len(layers) == 48  # (100 − 4) / 6 = 16 per block; 2 convs each + stem + 2 + FC = 100
    out, sizes = net.stem(torch.rand(1, 3, 32, 32)), []
    assert out.shape[1] == 24  # 2k
    for stage in net.stages:
        out = stage(out)
        sizes.append(tuple(out.shape[1:]))
    # 24 + 192 = 216 → θ: 108 + 192 = 300 → 150 + 192 = 342
    assert sizes == [(216, 32, 32), (300, 16, 16), (342, 8, 8)]


@pytest.mark.parametrize("name", ["densenet121", "densenet_bc100"])
def test_norm_none_leaves_no_norm_and_biased_convs(name, compose_cfg) -> None:
    net = build(compose_cfg, name, "model.norm=none")
    assert not any(isinstance(m, NORM_TYPES) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    with_bn = build(compose_cfg, name)
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d))


def test_switches(compose_cfg) -> None:
    # ln, not gn: ablab's gn needs 16 | C, and DenseNet-BC's widths are 24 + 12ℓ.
    net = build(compose_cfg, "densenet_bc100", "model.act=silu", "model.norm=ln",
                "model.compression=1.0", "model.drop_rate=0.1")  # fmt: skip
    assert not any(isinstance(m, nn.ReLU | nn.BatchNorm2d) for m in net.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in net.modules())
    assert [s.block.out_channels for s in net.stages] == [216, 408, 600]  # no compression
    assert any(isinstance(m, nn.Dropout) for m in net.modules())
    net(torch.rand(2, 1, 28, 28)).sum().backward()
    with pytest.raises(Exception, match="compression"):
        build(compose_cfg, "densenet_bc100", "model.compression=0")


def test_complexity_traces_receptive_fields(compose_cfg) -> None:
    net = build(compose_cfg, "densenet_bc100", "model.in_channels=3")
    stats = measure(net, (3, 32, 32))
    assert stats.params == 769_162 and stats.macs > 0
    by_name = {s.name: s for s in stats.layers}
    # Through the concatenations: every 3x3 conv of block 1 widens the field by 2 (stem: 3).
    fields = [by_name[f"stages.0.block.layers.{i}.conv.2"].receptive_field for i in range(16)]
    assert fields == [5 + 2 * i for i in range(16)]
    pool = by_name["stages.1.transition.pool"]
    assert (pool.output_shape, pool.jump) == ((108, 16, 16), 2)
    assert by_name["head.4"].receptive_field == -1  # the classifier sees the whole input
