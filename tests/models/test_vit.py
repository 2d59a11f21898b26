"""ViT against torchvision and timm: parameter counts, outputs with copied weights, token shapes,
the DropPath schedule, the norm switch and traced MACs."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.utils import instantiate
from torch import fx, nn

from ablab.blocks.transformer import ChannelsFirst, TransformerBlock, make_token_norm
from ablab.complexity import measure
from ablab.errors import ConfigError
from ablab.models.vit import ViT


def build(compose_cfg, name: str, *overrides: str) -> nn.Module:
    with compose_cfg(f"model={name}", *overrides) as cfg:
        torch.manual_seed(0)
        return instantiate(cfg.model)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_vit_b_16_matches_torchvision(compose_cfg) -> None:
    import torchvision

    net = build(compose_cfg, "vit_b_16", "model.in_channels=3", "model.num_classes=1000")
    assert n_params(net) == n_params(torchvision.models.vit_b_16(weights=None)) == 86_567_656
    with torch.no_grad():
        tokens = net.stem(torch.rand(1, 3, 224, 224))
        assert tokens.shape == (1, 197, 768)  # class token + 14 x 14 patches
        assert net.stages[0](tokens).shape == (1, 197, 768)
        assert net.head(tokens).shape == (1, 1000)


@pytest.mark.parametrize(
    ("name", "reference", "expected"),
    [
        ("vit_tiny", "vit_tiny_patch16_224", 5_717_416),
        ("vit_small", "vit_small_patch16_224", 22_050_664),
    ],
)
def test_deit_sizes_match_timm(name, reference, expected, compose_cfg) -> None:
    import timm

    net = build(compose_cfg, name, "model.in_channels=3", "model.num_classes=1000")
    assert n_params(net) == n_params(timm.create_model(reference)) == expected


def randomized(reference: nn.Module) -> dict[str, torch.Tensor]:
    """Random weights everywhere (torchvision zeros its head, which would hide a wrong head)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.2)
    return reference.eval().state_dict()


def renamed(state: dict[str, torch.Tensor], renames: list[tuple[str, str]]) -> dict:
    """The reference's weights under ablab's names (regex substitutions applied in order)."""
    out = {}
    for key, value in state.items():
        for pattern, new in renames:
            key = re.sub(pattern, new, key)
        out[key] = value
    return out


def test_resized_input_equals_timm_dynamic_size() -> None:
    """A 22x26 input to a 32 px net: padded to 24x28, position table resampled from 8x8 to 6x7."""
    from timm.models.vision_transformer import VisionTransformer

    reference = VisionTransformer(
        32,
        4,
        in_chans=1,
        num_classes=10,
        embed_dim=48,
        depth=2,
        num_heads=3,
        dynamic_img_size=True,
        dynamic_img_pad=True,
    )
    renames = [
        (r"^patch_embed\.proj", "stem.conv"),
        (r"^cls_token", "stem.class_token"),
        (r"^pos_embed", "stem.position_embedding"),
        (r"^blocks\.", "stages."),
        (r"mlp\.fc1", "mlp.0"),
        (r"mlp\.fc2", "mlp.3"),
        (r"^head\.", "head.2."),
        (r"^norm\.", "head.0."),
    ]
    net = ViT(1, 10, image_size=32, patch_size=4, width=48, depth=2, num_heads=3).eval()
    net.load_state_dict(renamed(randomized(reference), renames))
    x = torch.rand(2, 1, 22, 26)
    with torch.no_grad():
        assert net.stem(x).shape == (2, 1 + 6 * 7, 48)
        torch.testing.assert_close(net(x), reference(x), rtol=1e-4, atol=1e-5)


def test_imagenet_form_takes_digits(compose_cfg) -> None:
    """The 224 px table serves a 28 px digit as a 2x2 grid of (zero-padded) 16 px patches."""
    net = build(compose_cfg, "vit_tiny")  # data=digits: 1 channel, 28 px, 10 classes
    assert net.stem.position_embedding.shape == (1, 197, 192)
    with torch.no_grad():
        assert net.stem(torch.rand(2, 1, 28, 28)).shape == (2, 5, 192)
        assert net.stem(torch.rand(1, 1, 224, 224)).shape == (1, 197, 192)


def test_small_form_sizes_its_table_from_the_data(compose_cfg) -> None:
    digits = build(compose_cfg, "vit_tiny_p4")
    assert digits.stem.position_embedding.shape == (1, 1 + 7 * 7, 192)
    cifar = build(compose_cfg, "vit_tiny_p4", "data=cifar10")
    assert cifar.stem.position_embedding.shape == (1, 1 + 8 * 8, 192)
    assert (
        n_params(cifar) - n_params(digits) == (64 - 49) * 192 + 2 * 4 * 4 * 192
    )  # 15 positions, 2 more input channels


def test_drop_path_grows_linearly(compose_cfg) -> None:
    net = build(compose_cfg, "vit_tiny_p4", "model.drop_path_rate=0.11")
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in net.stages]
    assert rates == pytest.approx([0.01 * i for i in range(12)])
    assert isinstance(net.stages[0].drop_path, nn.Identity)  # rate 0: no module to skip


NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


@pytest.mark.parametrize(
    ("norm", "kinds"),
    [("ln", {nn.LayerNorm}), ("bn", {nn.BatchNorm1d}), ("none", set())],
)
def test_norm_switch_builds_and_trains_a_step(norm, kinds, compose_cfg) -> None:
    net = build(compose_cfg, "vit_tiny_p4", f"model.norm={norm}", "model.depth=2")
    assert {type(m) for m in net.modules() if isinstance(m, NORMS)} == kinds
    assert sum(isinstance(m, NORMS) for m in net.modules()) == (2 * 2 + 1 if kinds else 0)
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
    after = list(net.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_batch_norm_normalises_each_feature_over_batch_and_tokens() -> None:
    bn = make_token_norm("bn", 8).train()
    y = bn(torch.randn(4, 10, 8) * 3 + 1)  # (N, L, D)
    torch.testing.assert_close(y.mean(dim=(0, 1)), torch.zeros(8), atol=1e-5, rtol=0)
    ln = make_token_norm("ln", 8)
    torch.testing.assert_close(
        ln(torch.randn(4, 10, 8) * 3 + 1).mean(-1), torch.zeros(4, 10), atol=1e-5, rtol=0
    )


def test_per_channel_activation_sees_token_features() -> None:
    block = TransformerBlock(16, 16, norm="ln", act="prelu", num_heads=2, mlp_ratio=2)
    prelu = block.mlp[1]
    assert isinstance(prelu, ChannelsFirst) and prelu.layer.weight.shape == (32,)
    assert block(torch.rand(2, 5, 16)).shape == (2, 5, 16)


def test_shortcut_none_is_a_plain_stack() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(16, 16, shortcut="none", num_heads=2).eval()
    x = torch.rand(2, 5, 16)
    h = block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), block.mlp(block.norm2(h)))
    with pytest.raises(ConfigError, match="drop_path needs a shortcut"):
        TransformerBlock(16, 16, shortcut="none", drop_path=0.1)


def test_block_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="keeps its width"):
        TransformerBlock(16, 32)
    with pytest.raises(ConfigError, match="num_heads=3 does not divide the width 16"):
        TransformerBlock(16, 16, num_heads=3)
    with pytest.raises(ConfigError, match="unknown token norm 'gn'; valid: bn, ln, none"):
        TransformerBlock(16, 16, norm="gn")


def test_traceable_and_macs_count_attention() -> None:
    width, depth, tokens = 48, 2, 1 + 8 * 8
    net = ViT(3, 10, image_size=32, patch_size=4, width=width, depth=depth, num_heads=3)
    fx.symbolic_trace(net)  # the position resampling is a leaf, so tracing needs no input size
    stats = measure(net, (3, 32, 32))
    patches = 64 * width * 3 * 4 * 4
    # per block: qkv 3LD², proj LD², MLP 8LD² (ratio 4); QKᵀ and AV L²D each
    blocks = depth * (12 * tokens * width**2 + 2 * tokens**2 * width)
    assert stats.macs == patches + blocks + width * 10
    conv = next(s for s in stats.layers if s.name == "stem.conv")
    assert (conv.receptive_field, conv.jump) == (4, 4)
