"""Every config that claims torchvision's layout computes torchvision's function.

torchvision's net is built with its own random init (no weights downloaded), every tensor its init
leaves constant is made random (norm γ and β, biases, running statistics, ViT's zero head and class
token), and its state is loaded into ablab's net. Then, on a small random input:
- eval mode gives the same outputs (the running statistics and ε matter);
- one forward with only the BatchNorm layers in training mode gives the same outputs (batch
  statistics) and leaves the same running statistics, so eval outputs stay equal (momentum
  matters; dropout and drop-path stay off, their random masks are not the point).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import CONF


class Twin(NamedTuple):
    """The torchvision builder a config matches, the input size, overrides and key renames."""

    reference: str
    size: int = 32  # every net here ends at 1x1 or pools adaptively from 32 px
    overrides: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()  # regex substitutions; none: same order


VIT_RENAMES = (
    (r"^conv_proj", "stem.conv"),
    (r"^class_token", "stem.class_token"),
    (r"^encoder\.pos_embedding", "stem.position_embedding"),
    (r"^encoder\.layers\.encoder_layer_(\d+)", r"stages.\1"),
    (r"self_attention\.in_proj_", "attn.qkv."),
    (r"self_attention\.out_proj", "attn.proj"),
    (r"ln_(\d)", r"norm\1"),
    (r"^encoder\.ln", "head.0"),
    (r"^heads\.head", "head.2"),
)
# torchvision's VGG-BN keeps conv biases before BN; ablab drops them unless told.
VGG_BN = ("model.conv_bias=true",)

TWINS = {
    "alexnet_torchvision": Twin("alexnet", size=63),  # torchvision's pools need 63 px
    "densenet121": Twin("densenet121"),
    "efficientnet_b0": Twin("efficientnet_b0"),
    "efficientnet_b1": Twin("efficientnet_b1"),
    "efficientnet_b2": Twin("efficientnet_b2"),
    "efficientnet_b3": Twin("efficientnet_b3"),
    "mobilenet_v2": Twin("mobilenet_v2"),
    "mobilenet_v3_large": Twin("mobilenet_v3_large"),
    "mobilenet_v3_small": Twin("mobilenet_v3_small"),
    "resnet18": Twin("resnet18"),
    "resnet34": Twin("resnet34"),
    "resnet50": Twin("resnet50"),
    "resnet101": Twin("resnet101"),
    "resnet152": Twin("resnet152"),
    "resnext50_32x4d": Twin("resnext50_32x4d"),
    "shufflenet_v2_x1_0": Twin("shufflenet_v2_x1_0"),
    "squeezenet1_0": Twin("squeezenet1_0"),
    "squeezenet1_1": Twin("squeezenet1_1"),
    "vgg11": Twin("vgg11"),
    "vgg13": Twin("vgg13"),
    "vgg16": Twin("vgg16"),
    "vgg19": Twin("vgg19"),
    "vgg11_bn": Twin("vgg11_bn", overrides=VGG_BN),
    "vgg13_bn": Twin("vgg13_bn", overrides=VGG_BN),
    "vgg16_bn": Twin("vgg16_bn", overrides=VGG_BN),
    "vgg19_bn": Twin("vgg19_bn", overrides=VGG_BN),
    "vit_b_16": Twin("vit_b_16", size=224, renames=VIT_RENAMES),  # its position table is 224 px
}
# Configs named like a torchvision model that are knowingly another function.
NOT_TWINS = {
    "alexnet": "the notes' layout (LRN, two-group convs); alexnet_torchvision is torchvision's",
    "googlenet": "parameter count only: pools and BN ε differ (models/googlenet.py docstring)",
}
# Over a few seconds each on one core: 100-140M-parameter nets, or ViT-B/16 at 224 px.
HEAVY = {"vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
         "vit_b_16", "alexnet_torchvision"}  # fmt: skip


def test_every_config_named_after_a_torchvision_model_is_compared() -> None:
    configs = {p.stem for p in (CONF / "model").glob("*.yaml")}
    named = {c for c in configs if c in torchvision.models.list_models() or "torchvision" in c}
    assert named == set(TWINS) | set(NOT_TWINS)
    assert all(twin.reference in torchvision.models.list_models() for twin in TWINS.values())


def randomized(reference: nn.Module) -> nn.Module:
    """Make random what torchvision's init leaves constant, so that each of those tensors, ε and
    momentum change the outputs: γ ~ U(0.5, 1.5), biases and β ~ N(0, 0.02), running mean
    ~ N(0, 0.1) and variance ~ U(0.5, 2), zero-initialised weights ~ N(0, 0.02)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):  # a norm's γ
                p.uniform_(0.5, 1.5, generator=generator)
            elif p.dim() == 1 or not p.any():
                p.normal_(0.0, 0.02, generator=generator)
        for module in reference.modules():
            if isinstance(module, _BatchNorm):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return reference


def load_reference(net: nn.Module, reference: nn.Module, renames=()) -> None:
    """Give ``net`` (built on the meta device: no memory, no init) copies of the reference's
    tensors: by position (the same tensors in the same order) or, with ``renames``, by the
    reference's names rewritten to ablab's."""
    ours, theirs = net.state_dict(), {k: v.clone() for k, v in reference.state_dict().items()}
    if renames:
        state = {}
        for key, value in theirs.items():
            for pattern, new in renames:
                key = re.sub(pattern, new, key)
            state[key] = value
    else:
        assert [v.shape for v in ours.values()] == [v.shape for v in theirs.values()]
        state = dict(zip(ours, theirs.values(), strict=True))
    net.load_state_dict(state, assign=True)


def norm_settings(net: nn.Module) -> list[tuple[str, float, float | None]]:
    norms = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)
    return [
        (type(m).__name__, m.eps, getattr(m, "momentum", None))
        for m in net.modules()
        if isinstance(m, norms)
    ]


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-4 * scale)


def batch_norm_step(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward with only the BatchNorm layers training: batch statistics in, one momentum
    update of the running statistics; dropout and drop-path stay off."""
    for module in net.modules():
        if isinstance(module, _BatchNorm):
            module.train()
    out = net(x)
    net.eval()
    return out


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in TWINS]
)
def test_outputs_equal_torchvision_with_its_weights(name, compose_cfg) -> None:
    twin = TWINS[name]
    imagenet = ("model.in_channels=3", "model.num_classes=1000", *twin.overrides)
    with compose_cfg(f"model={name}", *imagenet) as cfg, torch.device("meta"):
        net = instantiate(cfg.model).eval()
    torch.manual_seed(0)
    reference = randomized(getattr(torchvision.models, twin.reference)(weights=None).eval())
    assert norm_settings(net) == norm_settings(reference)  # ε and momentum, layer by layer
    load_reference(net, reference, twin.renames)
    x = torch.randn(1 if twin.size > 64 else 2, 3, twin.size, twin.size)
    with torch.no_grad():
        assert_same(net(x), reference(x))
        if any(isinstance(m, _BatchNorm) for m in net.modules()):
            assert_same(batch_norm_step(net, x), batch_norm_step(reference, x))
            assert_same(net(x), reference(x))
