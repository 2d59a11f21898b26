"""GoogLeNet against torchvision and the paper's Table 1; the Inception block and its switches."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from torch import fx, nn

from ablab.blocks.inception import Inception, InceptionAux
from ablab.complexity import measure
from ablab.errors import ConfigError
from ablab.models.googlenet import TABLE_1, GoogLeNet
from ablab.registry import BLOCK

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build(compose_cfg, name: str, *overrides: str) -> nn.Module:
    with compose_cfg(
        f"model={name}", "model.in_channels=3", "model.num_classes=1000", *overrides
    ) as cfg:
        torch.manual_seed(0)
        return instantiate(cfg.model)


@pytest.mark.parametrize(
    ("aux", "expected"), [(False, 6_624_904), (True, 13_004_888)], ids=["no_aux", "aux"]
)
def test_parameter_count_equals_torchvision(aux, expected, compose_cfg) -> None:
    ours = build(compose_cfg, "googlenet", f"model.aux_heads={str(aux).lower()}")
    reference = torchvision.models.googlenet(weights=None, aux_logits=aux, init_weights=True)
    assert n_params(ours) == n_params(reference) == expected
    # Layer by layer: the same parameter shapes in the same order.
    assert sorted(p.shape for p in ours.parameters()) == sorted(
        p.shape for p in reference.parameters()
    )


def test_shapes_at_224(compose_cfg) -> None:
    """224 → 112 → 56 → 28 (stem), inception 3 at 28, 4 at 14, 5 at 7, then 1024x7x7."""
    net = build(compose_cfg, "googlenet").eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert net.stem[0](x).shape[1:] == (64, 112, 112)
        out = net.stem(x)
        assert out.shape[1:] == (192, 28, 28)
        assert net.stages[0][0](out).shape[1:] == (256, 28, 28)  # inception 3a
        sizes = []
        for stage in net.stages:
            out = stage(out)
            sizes.append(tuple(out.shape[1:]))
        assert sizes == [(480, 28, 28), (832, 14, 14), (1024, 7, 7)]
        assert net.forward_features(x).shape[1:] == (1024, 7, 7)
        assert net(x).shape == (1, 1000)


def test_block_widths_follow_table_1() -> None:
    net = GoogLeNet()
    blocks = [m for m in net.modules() if isinstance(m, Inception)]
    widths = [w for stage in TABLE_1 for w in stage]
    assert len(blocks) == len(widths) == 9
    for block, (c1, c3r, c3, c5r, c5, pool) in zip(blocks, widths, strict=True):
        assert block.branch_1x1.conv.out_channels == c1
        assert [m.conv.out_channels for m in block.branch_3x3] == [c3r, c3]
        assert [m.conv.out_channels for m in block.branch_5x5] == [c5r, c5]
        assert block.branch_pool[1].conv.out_channels == pool
        assert block.branch_5x5[1].conv.kernel_size == (5, 5)  # the paper's 5x5 by default


def test_kernel_5x5_switch(compose_cfg) -> None:
    """torchvision's 3x3 "5x5" branch vs the paper's 5x5: 16 more weights per (c5r, c5) pair."""
    tv = build(compose_cfg, "googlenet")
    paper = build(compose_cfg, "googlenet", "model.kernel_5x5=5")
    extra = sum(c5r * c5 * (25 - 9) for stage in TABLE_1 for _, _, _, c5r, c5, _ in stage)
    assert n_params(paper) - n_params(tv) == extra
    assert {b.branch_5x5[1].conv.kernel_size for b in tv.modules() if isinstance(b, Inception)} == {
        (3, 3)
    }
    rf = [
        max(s.receptive_field for s in measure(n, (3, 224, 224)).layers if s.kind == "Conv2d")
        for n in (tv, paper)
    ]
    assert 0 < rf[0] < rf[1]


def test_aux_heads_train_through_forward_with_aux(compose_cfg) -> None:
    net = build(compose_cfg, "googlenet", "model.aux_heads=true", "model.num_classes=10")
    assert len(net.aux_heads) == 2 and all(isinstance(h, InceptionAux) for h in net.aux_heads)
    assert net.aux_weight == 0.3
    x, y = torch.rand(2, 3, 64, 64), torch.tensor([1, 2])
    net.train()
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)  # one tensor, even training
    logits, aux = net.forward_with_aux(x)
    assert logits.shape == (2, 10) and [a.shape for a in aux] == [(2, 10), (2, 10)]
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, y) + net.aux_weight * sum(loss_fn(a, y) for a in aux)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    net.eval()
    with torch.no_grad():  # forward is forward_with_aux's main output
        assert torch.equal(net(x), net.forward_with_aux(x)[0])


def test_aux_heads_off_and_their_taps(compose_cfg) -> None:
    net = build(compose_cfg, "googlenet")
    assert len(net.aux_heads) == 0
    assert net.forward_with_aux(torch.rand(2, 3, 32, 32))[1] == []
    # The taps are the outputs of 4a (512 channels) and 4d (528 channels).
    on = GoogLeNet(aux_heads=True)
    assert [h.conv.conv.in_channels for h in on.aux_heads] == [512, 528]
    with pytest.raises(ConfigError, match="no such block"):
        GoogLeNet(aux_heads=True, aux_taps=((1, 5),))


def test_norm_none_leaves_no_norm_and_biased_convs(compose_cfg) -> None:
    net = build(compose_cfg, "googlenet", "model.norm=none", "model.aux_heads=true")
    assert not any(isinstance(m, NORM_TYPES) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    with_bn = build(compose_cfg, "googlenet", "model.aux_heads=true")
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d))


def test_small_form_keeps_32_px(compose_cfg) -> None:
    net = build(compose_cfg, "googlenet_small", "model.num_classes=10")
    out = net.stem(torch.rand(2, 3, 32, 32))
    assert out.shape[1:] == (192, 32, 32)
    sizes = []
    for stage in net.stages:
        out = stage(out)
        sizes.append(out.shape[-1])
    assert sizes == [32, 16, 8]


def test_imagenet_form_runs_on_tiny_inputs() -> None:
    net = GoogLeNet(1, 10, aux_heads=True)
    for size in (28, 15, 1):
        logits, aux = net.forward_with_aux(torch.rand(2, 1, size, size))
        assert logits.shape == (2, 10) and len(aux) == 2


def test_measure_traces_receptive_fields(compose_cfg) -> None:
    net = build(compose_cfg, "googlenet", "model.aux_heads=true")
    fx.symbolic_trace(net)  # fx-traceable, aux heads and all
    stats = measure(net, (3, 224, 224))
    assert stats.params == 13_004_888
    last_convs = [s for s in stats.layers if s.kind == "Conv2d" and s.name.startswith("stages.2.2")]
    assert last_convs and all(s.receptive_field and s.receptive_field > 0 for s in last_convs)
    assert all(s.jump == 32 for s in last_convs)  # five halvings: 224 → 7


def test_inception_block_by_name() -> None:
    block = BLOCK["inception"](192, 256, branch_widths=(64, 96, 128, 16, 32, 32))
    assert block(torch.rand(1, 192, 9, 9)).shape == (1, 256, 9, 9)
    default = BLOCK["inception"](32, 64)  # 3a's proportions when only c_out is given
    assert default(torch.rand(1, 32, 5, 5)).shape == (1, 64, 5, 5)
    with pytest.raises(ConfigError, match="concatenate to 256 channels"):
        Inception(192, 255, branch_widths=(64, 96, 128, 16, 32, 32))
    with pytest.raises(ConfigError, match="stride 1 only"):
        Inception(192, 256, 2)


def test_identity_shortcut_only_where_widths_match() -> None:
    net = GoogLeNet(shortcut="identity")
    blocks = [m for m in net.modules() if isinstance(m, Inception)]
    assert [b.shortcut is not None for b in blocks] == [
        False, False, False, True, True, False, False, True, False  # 4b, 4c, 5a
    ]  # fmt: skip
    assert n_params(net) == n_params(GoogLeNet())


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_classifier_task_adds_the_weighted_aux_losses(compose_cfg) -> None:
    from functools import partial

    from ablab.tasks.classifier import ClassifierModule

    net = build(compose_cfg, "googlenet", "model.aux_heads=true", "model.num_classes=10")
    task = ClassifierModule(net, partial(torch.optim.SGD, lr=0.1), None, nn.CrossEntropyLoss(), 10)
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    loss = task._shared_step((x, y), "train")
    torch.manual_seed(0)  # the same dropout masks
    logits, aux = net.forward_with_aux(x)
    ce = nn.functional.cross_entropy
    expected = ce(logits, y) + 0.3 * (ce(aux[0], y) + ce(aux[1], y))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in net.aux_heads.parameters())
    net.eval()  # evaluation uses the main head only
    assert torch.equal(task._shared_step((x, y), "val"), ce(net(x), y))
