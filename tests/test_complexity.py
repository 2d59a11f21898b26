"""Complexity by tracing, checked against the notes' worked numbers and hand-derived layouts."""

from __future__ import annotations

import json

import pytest
from torch import nn

from ablab.cli import main as ablab
from ablab.complexity import conv_output_size, measure, receptive_field
from ablab.models import LeNet5


def test_receptive_field_recurrence_worked_example() -> None:
    # Notes: 3x3/1 → 3x3/2 → 2x2 pool/2 sees a 7x7 window; jumps 1 → 2 → 4.
    assert receptive_field([(3, 1), (3, 2), (2, 2)]) == [(3, 1), (5, 2), (7, 4)]


def test_conv_output_size() -> None:
    assert conv_output_size(227, 11, 4) == 55  # AlexNet conv1 needs 227 (or padding) for 55
    assert conv_output_size(224, 11, 4) == 54  # the notes' "(224−11)/4+2 = 55" is a slip
    assert conv_output_size(224, 11, 4, padding=2) == 55  # floor((224−11+4)/4)+1
    assert conv_output_size(28, 5, padding=2) == 28  # LeNet C1 keeps 28 only with pad 2


def test_one_by_one_bottleneck_example() -> None:
    """Claim 9: 16 → 32 channels at 28x28."""
    three = measure(nn.Conv2d(16, 32, 3, padding=1), (16, 28, 28))
    one = measure(nn.Conv2d(16, 32, 1), (16, 28, 28))
    assert (three.params, three.macs) == (4_640, 3_612_672)
    assert (one.params, one.macs) == (544, 401_408)


def test_depthwise_separable_example() -> None:
    """Claim 8: k=3, C_in=32, C_out=64 (no bias): 18,432 vs 2,336 parameters (12.7%)."""
    standard = measure(nn.Conv2d(32, 64, 3, padding=1, bias=False), (32, 8, 8))
    separable = measure(
        nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.Conv2d(32, 64, 1, bias=False)
        ),
        (32, 8, 8),
    )
    assert (standard.params, separable.params) == (18_432, 2_336)
    ratio = separable.macs / standard.macs
    assert ratio == pytest.approx(1 / 64 + 1 / 9)  # 1/C_out + 1/k²
    assert round(separable.params / standard.params, 3) == 0.127


def test_lenet_layers() -> None:
    stats = measure(LeNet5(), (1, 28, 28))
    assert stats.params == 61_706
    # C1 117,600 + C3 240,000 + C5 48,000 + F6 10,080 + output 840 multiply-adds
    assert stats.macs == 416_520
    by_name = {s.name: s for s in stats.layers}
    assert by_name["stem.0.conv"].output_shape == (6, 28, 28)
    assert by_name["stages.1"].output_shape == (16, 5, 5)
    fields = [
        (by_name[n].receptive_field, by_name[n].jump)
        for n in ("stem.0.conv", "stem.1", "stages.0.conv", "stages.1", "head.0.conv")
    ]
    assert fields == [(5, 1), (6, 2), (14, 2), (16, 4), (32, 4)]
    assert by_name["head.3"].receptive_field == -1  # after global pooling: the whole input


def test_summary_command_json(capsys) -> None:
    ablab(["summary", "--json", "model=resnet20", "data.in_channels=3", "data.image_size=32"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["params"] == 269_722
    assert stats["input_shape"] == [3, 32, 32]
    convs = [s for s in stats["layers"] if s["kind"] == "Conv2d"]
    assert len(convs) == 19  # 6n + 1 convs for n = 3, plus the FC: 20 weighted layers
    # the last 3x3 conv sees most of the 32x32 input through the residual chain
    assert convs[-1]["receptive_field"] > 32


def test_summary_command_table(capsys) -> None:
    ablab(["summary", "model=lenet5"])
    out = capsys.readouterr().out
    assert "61,706" in out and "416,520" in out and "lenet5: 61.71K params" in out


def test_summary_measures_each_network_of_a_task_on_its_own_input(capsys) -> None:
    """task=gan: the generator on its noise, the discriminator on a digit image."""
    from ablab.models.gan import DCGANDiscriminator, DCGANGenerator

    ablab(["summary", "--json", "task=gan"])
    stats = json.loads(capsys.readouterr().out)
    assert list(stats) == ["generator=dcgan", "discriminator=dcgan"]
    assert stats["generator=dcgan"]["input_shape"] == [100]
    assert stats["discriminator=dcgan"]["input_shape"] == [1, 28, 28]
    generator = DCGANGenerator(latent_size=100, out_channels=1, image_size=28, base_width=64)
    discriminator = DCGANDiscriminator(in_channels=1, image_size=28, base_width=64)
    assert stats["generator=dcgan"]["params"] == sum(p.numel() for p in generator.parameters())
    assert stats["discriminator=dcgan"]["params"] == sum(
        p.numel() for p in discriminator.parameters()
    )


def test_grouped_layers_add_up() -> None:
    from ablab.models import ResNet

    stats = measure(
        ResNet(3, 10, depths=(1, 1), widths=(8, 16), stem="cifar", stem_width=8), (3, 16, 16)
    )
    stages = stats.grouped(2)
    assert [g.name for g in stages] == [
        "stem.0",
        "stages.0",
        "stages.1",
        "head.0",
        "head.1",
        "head.2",
        "head.3",
    ]
    assert sum(g.params for g in stages) == stats.params
    assert sum(g.macs for g in stages) == stats.macs
    assert stages[2].output_shape == (16, 8, 8)


def test_parts_add_up_and_count_a_shared_head_once_per_level() -> None:
    """A classifier's parts are stem, stages, head and sum to the whole; a detector's head,
    shared by the pyramid's levels, counts its MACs on every level it runs on."""
    from ablab.models import ResNet
    from ablab.models.detector import DenseDetector

    stats = measure(
        ResNet(3, 10, depths=(1, 1), widths=(8, 16), stem="cifar", stem_width=8), (3, 16, 16)
    )
    assert list(stats.parts) == ["stem", "stages", "head"]
    assert sum(p for p, _ in stats.parts.values()) == stats.params
    assert sum(m for _, m in stats.parts.values()) == stats.macs

    def detector(fpn: bool) -> DenseDetector:
        backbone = ResNet(3, 4, depths=(1, 1, 1), widths=(8, 16, 32), stem="imagenet", stem_width=8)
        return DenseDetector(backbone, num_classes=4, fpn=fpn, fpn_channels=16, head_convs=1)

    one, pyramid = measure(detector(False), (3, 64, 64)), measure(detector(True), (3, 64, 64))
    assert one.parts["backbone"] == pyramid.parts["backbone"]
    # the same tower on 16² + 8² + 4² locations instead of the stride-16 level's 4²
    _, tower_one = one.parts["cls_tower"]
    assert pyramid.parts["cls_tower"][1] == tower_one * (16**2 + 8**2 + 4**2) // 4**2
    assert pyramid.parts["neck"][1] > one.parts["neck"][1] > 0


def test_receptive_fields_through_preact_and_se_blocks() -> None:
    from ablab.models import ResNet

    preact = measure(
        ResNet(
            3,
            10,
            block="preact_basic",
            depths=(1, 1),
            widths=(8, 16),
            stem="cifar",
            stem_width=8,
            final_norm=True,
        ),
        (3, 16, 16),
    )
    convs = [s for s in preact.layers if s.kind == "Conv2d"]
    assert all(s.receptive_field is not None for s in convs)
    assert [s.receptive_field for s in convs][:3] == [3, 5, 7]
    se = measure(
        ResNet(3, 10, depths=(1, 1), widths=(8, 16), stem="cifar", stem_width=8, se_ratio=0.25),
        (3, 16, 16),
    )
    after_gate = [s for s in se.layers if s.name.startswith("stages.1.0.residual.0.conv")]
    assert after_gate[0].receptive_field == -1  # SE's global mean feeds every later layer


@pytest.mark.parametrize("up", ["transposed", "bilinear"])
def test_receptive_fields_stop_at_upsampling(up) -> None:
    """A U-Net's contracting path has its fields (3, 5 after two 3x3 convs, x2 jump after a
    pool); from the first upsampling on, where R and J describe nothing, they are unknown rather
    than a stride-2 conv's numbers."""
    import torch

    from ablab.models import UNet

    stats = measure(UNet(1, 3, depth=2, base_width=4, up=up), torch.zeros(2, 1, 16, 16))
    fields = {s.name: (s.receptive_field, s.jump) for s in stats.layers}
    assert fields["encoder.0.0.conv"] == (3, 1) and fields["encoder.0.1.conv"] == (5, 1)
    decoder = [v for k, v in fields.items() if k.startswith("decoder") or k == "head"]
    assert decoder and all(v == (None, None) for v in decoder)
