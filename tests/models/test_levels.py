"""Multi-level features (``forward_levels``) of every zoo config whose family has them."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf
from test_zoo import MODELS, build

from ablab.complexity import measure
from ablab.layers.fpn import FeaturePyramid
from ablab.models.alexnet import AlexNet
from ablab.models.levels import Backbone, FeatureLevels, probe_levels
from ablab.models.resnet import ResNet
from ablab.models.squeezenet import SqueezeNet
from conftest import CONF


def target(name: str) -> object:
    """What a model config builds: its ``_target_``, or that of the config it extends
    (``defaults: [resnet20]``), without composing the whole config."""
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    while "_target_" not in cfg:
        parent = next(d for d in cfg.defaults if d != "_self_")
        cfg = OmegaConf.load(CONF / "model" / f"{parent}.yaml")
    return get_object(cfg._target_)


COVERED = [m for m in MODELS if isinstance(t := target(m), type) and issubclass(t, FeatureLevels)]


def test_covered_families() -> None:
    """Every stem → stages family whose convs and pools pad to "same" size has levels."""
    families = {target(m).__name__ for m in COVERED}
    assert families == {"DenseNet", "GoogLeNet", "MobileNet", "MobileNetV3", "RepVGG", "ResNet",
                        "ShuffleNetV2", "VGG"}  # fmt: skip


@pytest.mark.parametrize("name", COVERED)
def test_levels_of_every_covered_config(name, compose_cfg) -> None:
    """Strictly increasing strides; level l of an H px input has ⌈H / s_l⌉ px (every stride-2
    layer rounds up), the declared channels, and the deepest level is ``forward_features``; an
    FPN over the levels keeps their sizes."""
    net = build(compose_cfg, name, "model.in_channels=3").eval()
    strides, channels = net.level_strides, net.level_channels
    assert all(a < b for a, b in pairwise(strides))
    assert len(channels) == len(strides) >= 3
    pyramid = FeaturePyramid(channels, 8)
    for size in (max(strides), max(strides) + 3):  # exact multiple, then an odd size
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            levels, features = net.forward_levels(x), net.forward_features(x)
            outputs = pyramid(levels)
        shapes = [tuple(c.shape) for c in levels]
        assert shapes == [(2, c, math.ceil(size / s), math.ceil(size / s))
                          for c, s in zip(channels, strides, strict=True)]  # fmt: skip
        assert torch.equal(levels[-1], features)
        assert [p.shape[1:] for p in outputs] == [(8, *c.shape[2:]) for c in levels]


def test_resnet50_levels_are_c2_to_c5(compose_cfg) -> None:
    """Lin et al. 2017's {C2, C3, C4, C5}: strides 4-32, 256-2048 channels."""
    net = build(compose_cfg, "resnet50", "model.in_channels=3")
    assert net.level_strides == (4, 8, 16, 32)
    assert net.level_channels == (256, 512, 1024, 2048)


def test_stride_one_stages_merge_into_one_level(compose_cfg) -> None:
    """MobileNetV2's 7 stages have strides 1, 2, 2, 2, 1, 2, 1 after a stride-2 stem: the level at
    each stride is the last stage there (16, 24, 32, 96, 320 channels)."""
    net = build(compose_cfg, "mobilenet_v2", "model.in_channels=3")
    assert len(net.stages) == 7
    assert net.level_layout.stages == (0, 1, 2, 4, 6)
    assert net.level_strides == (2, 4, 8, 16, 32)
    assert net.level_channels == (16, 24, 32, 96, 320)


def test_the_probe_changes_nothing() -> None:
    """The shape probe runs on meta tensors: a net in training mode keeps its weights, running
    statistics and batch counts."""
    net = ResNet(3, 10, depths=(1, 1), widths=(8, 16), stem="cifar", stem_width=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert net.level_strides == (1, 2)
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    "net",
    [AlexNet(3, 10), SqueezeNet(3, 10)],
    ids=["alexnet", "squeezenet"],
)
def test_unpadded_nets_have_no_exact_strides(net) -> None:
    """Why AlexNet and SqueezeNet are not covered: their unpadded convs and pools map 1024 px to
    sizes that are no power-of-two fraction of it (AlexNet: 255, 127, 127, 63)."""
    with pytest.raises(ValueError, match="no exact stride"):
        probe_levels(net.stem, net.stages)


def test_backbone_is_the_net_without_its_head() -> None:
    """Backbone(net) shares the stem and stages: its parameters and MACs are the net's minus
    the head's, and it returns the levels."""
    net = ResNet(3, 10, depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8).eval()
    backbone = Backbone(net)
    assert backbone.stem is net.stem and backbone.stages is net.stages
    assert backbone.level_strides == net.level_strides
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert all(map(torch.equal, backbone(x), net.forward_levels(x)))
    whole, alone = measure(net, (3, 64, 64)), measure(backbone, (3, 64, 64))
    head = [s for s in whole.layers if s.name.startswith("head.")]
    assert alone.params == whole.params - sum(p.numel() for p in net.head.parameters())
    assert alone.macs == whole.macs - sum(s.macs for s in head) > 0
