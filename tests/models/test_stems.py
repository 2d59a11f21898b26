"""One stem table for every family: names, shapes, the pre-activation form, checkpoint keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablab.blocks.stem import cifar_stem, imagenet_stem
from ablab.errors import ConfigError
from ablab.models import DenseNet, GoogLeNet, ResNet
from ablab.registry import STEM

FAMILIES = {
    "resnet": lambda stem: ResNet(3, 10, depths=(1,), widths=(8,), stem=stem, stem_width=8),
    "densenet": lambda stem: DenseNet(3, 10, growth_rate=4, depths=(1,), stem=stem),
    "googlenet": lambda stem: GoogLeNet(3, 10, stem=stem, stem_widths=(8,)),
}


def test_the_table_holds_the_stems() -> None:
    assert STEM.names() == ["cifar", "imagenet"]
    assert STEM["imagenet"] is imagenet_stem and STEM["cifar"] is cifar_stem


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_names_the_same_choices(family: str) -> None:
    with pytest.raises(ConfigError) as err:
        FAMILIES[family]("cifr")
    assert str(err.value) == "unknown stem 'cifr' (did you mean 'cifar'?); valid: cifar, imagenet"


@pytest.mark.parametrize(
    ("name", "widths", "size", "convs"),
    [
        ("imagenet", 8, 16, 1),  # 64 → 32 → 16: ResNet, DenseNet
        ("imagenet", (8, 8, 12), 8, 3),  # → 16 → 8: GoogLeNet
        ("cifar", 8, 64, 1),
        ("cifar", (8, 12), 64, 2),
    ],
)
def test_output_shape_and_convs(name: str, widths, size: int, convs: int) -> None:
    stem = STEM[name](3, widths, "bn", "relu")
    c_out = widths if isinstance(widths, int) else widths[-1]
    assert stem(torch.rand(2, 3, 64, 64)).shape == (2, c_out, size, size)
    assert sum(isinstance(m, nn.Conv2d) for m in stem.modules()) == convs


def test_imagenet_stem_takes_one_or_three_widths() -> None:
    with pytest.raises(ConfigError, match=r"takes 1 width .* or 3 .*not \[8, 8\]"):
        imagenet_stem(3, (8, 8), "bn", "relu")
    with pytest.raises(ConfigError, match="at least one width"):
        cifar_stem(3, (), "bn", "relu")


@pytest.mark.parametrize(("norm", "bias"), [("bn", False), ("none", True)])
def test_preact_leaves_the_last_conv_bare(norm: str, bias: bool) -> None:
    """DenseNet's CIFAR stem: the first dense layer's norm-act follows the conv directly."""
    stem = cifar_stem(3, (8, 12), norm, "relu", preact=True)
    first, last = stem
    assert isinstance(first.act, nn.ReLU)
    assert isinstance(last.norm, nn.Identity) and isinstance(last.act, nn.Identity)
    assert (last.conv.bias is not None) is bias
    # A stem ending on a max pool keeps its norm-act: the pool follows the activation.
    assert isinstance(imagenet_stem(3, 8, "bn", "relu", preact=True)[0].norm, nn.BatchNorm2d)


@pytest.mark.parametrize(
    ("name", "widths", "keys"),
    [
        ("imagenet", 8, ["0.conv", "0.norm"]),
        ("imagenet", (8, 8, 12), ["0.conv", "0.norm", "2.conv", "2.norm", "3.conv", "3.norm"]),
        ("cifar", (8, 12), ["0.conv", "0.norm", "1.conv", "1.norm"]),
    ],
)
def test_checkpoint_keys(name: str, widths, keys: list[str]) -> None:
    """Stored checkpoints and the torchvision weight transfer rely on these names."""
    state = STEM[name](3, widths, "bn", "relu").state_dict()
    assert sorted({k.rsplit(".", 1)[0] for k in state}) == keys
