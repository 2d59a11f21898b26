"""Every conf/model/*.yaml builds, runs forward and backward, and matches its references."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from torch import nn

from ablab.layers.act import Maxout
from conftest import CONF

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def build(compose_cfg, name: str, *overrides: str) -> nn.Module:
    with compose_cfg(f"model={name}", *overrides) as cfg:
        torch.manual_seed(0)
        return instantiate(cfg.model)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def check_forward_backward(net: nn.Module, x: torch.Tensor, classes: int | tuple) -> None:
    """``classes`` scores per input (a classifier), or the whole output shape (a tuple)."""
    out = net(x)
    assert out.shape == (classes if isinstance(classes, tuple) else (len(x), classes))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


#: Sequence models read the digits row by row (28 steps of 28 pixels), as data=digits_rows feeds
#: them; the sizes go to the model directly, so they compose with the default data=digits.
SEQUENCE_DIGITS = ("model.input_size=28", "model.num_outputs=10")


#: A U-Net needs sides divisible by 2^depth: the digits at 32 px (data.image_size=32) for it.
SEGMENTATION_DIGITS = ("data.image_size=32",)


@pytest.mark.parametrize("name", MODELS)
def test_trains_on_digits_sized_batches(name, compose_cfg) -> None:
    form = form_of(name)
    if form == "sequence":
        net, x = build(compose_cfg, name, *SEQUENCE_DIGITS), torch.rand(2, 28, 28)
        check_forward_backward(net, x, 10)
    elif form == "reconstruction":  # the image back
        net, x = build(compose_cfg, name), torch.rand(2, 1, 28, 28)
        check_forward_backward(net, x, tuple(x.shape))
    elif form == "segmentation":  # a score per class and pixel
        net, x = build(compose_cfg, name, *SEGMENTATION_DIGITS), torch.rand(2, 1, 32, 32)
        check_forward_backward(net, x, (2, 10, 32, 32))
    elif form == "detection":  # a row per location: K logits, l t r b, centerness
        net, x = build(compose_cfg, name, *SEGMENTATION_DIGITS), torch.rand(2, 1, 32, 32)
        check_forward_backward(net, x, (2, len(net.locations(32, 32)[0]), 15))
    else:  # data=digits: 1 channel, 28x28, 10 classes
        net, x = build(compose_cfg, name), torch.rand(2, 1, 28, 28)
        check_forward_backward(net, x, 10)


#: What a model config's ``# form:`` line may say: the input its layout is built for.
FORMS = ("imagenet", "small", "sequence", "reconstruction", "segmentation", "detection")


def form_of(name: str) -> str:
    """The ``# form: <form>`` line every model config carries: the input its layout is built
    for (ImageNet forms must also run on 28 px digits; small forms are not run at 224; sequence
    forms read (N, T, F) sequences, not images; reconstruction forms give the image back and
    segmentation forms a score per pixel)."""
    found = re.search(rf"^# form: ({'|'.join(FORMS)})$",
                      (CONF / "model" / f"{name}.yaml").read_text(), re.MULTILINE)  # fmt: skip
    assert found, f"conf/model/{name}.yaml has no '# form: {'|'.join(FORMS)}' line"
    return found.group(1)


def test_every_config_declares_its_form() -> None:
    assert {form_of(m) for m in MODELS} == set(FORMS)


IMAGENET_FORMS = [m for m in MODELS if form_of(m) == "imagenet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET_FORMS)
def test_imagenet_forms_run_at_224(name, compose_cfg) -> None:
    net = build(compose_cfg, name, "model.in_channels=3", "model.num_classes=1000")
    check_forward_backward(net, torch.rand(2, 3, 224, 224), 1000)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("resnet18", torchvision.models.resnet18),
        ("resnet34", torchvision.models.resnet34),
        ("resnet50", torchvision.models.resnet50),
        ("resnet101", torchvision.models.resnet101),
        ("resnet152", torchvision.models.resnet152),
        ("resnext50_32x4d", torchvision.models.resnext50_32x4d),
    ],
)
def test_parameter_count_equals_torchvision(name, reference, compose_cfg) -> None:
    ours = build(compose_cfg, name, "model.in_channels=3", "model.num_classes=1000")
    assert n_params(ours) == n_params(reference(weights=None))


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn"])
def test_vgg_parameter_count_equals_torchvision(depth, bn, compose_cfg) -> None:
    name = f"vgg{depth}_bn" if bn else f"vgg{depth}"
    # torchvision's VGG-BN keeps conv biases before BN; ablab drops them unless told otherwise.
    ours = build(
        compose_cfg, name, "model.in_channels=3", "model.num_classes=1000", "model.conv_bias=true"
    )
    reference = getattr(torchvision.models, name)(weights=None)
    assert n_params(ours) == n_params(reference)
    if bn:
        auto = build(compose_cfg, name, "model.in_channels=3", "model.num_classes=1000")
        convs = [m for m in reference.modules() if isinstance(m, nn.Conv2d)]
        assert n_params(reference) - n_params(auto) == sum(m.out_channels for m in convs)


def test_vgg16_walkthrough(compose_cfg) -> None:
    """138,357,544 parameters (the notes' "550M" is megabytes); 224 → 112 → 56 → 28 → 14 → 7."""
    net = build(compose_cfg, "vgg16", "model.in_channels=3", "model.num_classes=1000")
    assert n_params(net) == 138_357_544
    out, sizes = torch.rand(1, 3, 224, 224), []
    with torch.no_grad():
        for stage in net.stages:
            out = stage(out)
            sizes.append(tuple(out.shape[1:]))
    assert sizes == [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (512, 7, 7)]


@pytest.mark.parametrize(
    ("name", "expected"),
    # He et al. 2016 Table 6 lists 0.27M / 0.46M / 0.66M / 0.85M / 1.7M; exact option-A counts.
    [
        ("resnet20", 269_722),
        ("resnet32", 464_154),
        ("resnet44", 658_586),
        ("resnet56", 853_018),
        ("resnet110", 1_727_962),
    ],
)
def test_cifar_resnet_parameter_counts(name, expected, compose_cfg) -> None:
    net = build(compose_cfg, name, "model.in_channels=3")
    assert n_params(net) == expected
    plain = build(compose_cfg, name.replace("resnet", "plain"), "model.in_channels=3")
    assert n_params(plain) == expected  # option A shortcuts have no parameters


def test_cifar_resnet_shapes(compose_cfg) -> None:
    net = build(compose_cfg, "resnet20", "model.in_channels=3")
    x = torch.rand(2, 3, 32, 32)
    sizes = []
    out = net.stem(x)
    for stage in net.stages:
        out = stage(out)
        sizes.append(tuple(out.shape[1:]))
    assert sizes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_imagenet_resnet_shapes(compose_cfg) -> None:
    """224 → 112 (stem conv) → 56 (max pool) → 56 → 28 → 14 → 7 → 1 (global pool)."""
    net = build(compose_cfg, "resnet18", "model.in_channels=3", "model.num_classes=1000")
    x = torch.rand(1, 3, 224, 224)
    assert net.stem[0](x).shape[-1] == 112
    out = net.stem(x)
    assert out.shape[-1] == 56
    sizes = []
    for stage in net.stages:
        out = stage(out)
        sizes.append(out.shape[-1])
    assert sizes == [56, 28, 14, 7]


def test_shortcut_none_removes_exactly_the_projections(compose_cfg) -> None:
    residual = build(compose_cfg, "resnet18")
    plain = build(compose_cfg, "resnet18", "model.shortcut=none")
    projections = sum(p.numel() for n, p in residual.named_parameters() if ".shortcut." in n)
    assert projections > 0
    assert n_params(residual) - n_params(plain) == projections
    assert all(
        getattr(b, "shortcut", None) is None
        for b in plain.stages.modules()
        if hasattr(b, "shortcut")
    )


NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "preact_resnet20", "resnext29_8x16d"])
def test_norm_none_leaves_no_norm_and_biased_convs(name, compose_cfg) -> None:
    net = build(compose_cfg, name, "model.norm=none")
    assert not any(isinstance(m, NORM_TYPES) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    with_bn = build(compose_cfg, name)
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d))


def test_zero_init_last(compose_cfg) -> None:
    plain = build(compose_cfg, "plain20", "model.zero_init_last=true")
    reference = build(compose_cfg, "plain20")
    for a, b in zip(plain.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # nothing changes without a shortcut
    residual = build(compose_cfg, "resnet20", "model.zero_init_last=true")
    for block in residual.stages.modules():
        if hasattr(block, "zero_init_last"):
            assert torch.count_nonzero(block.residual[-1].norm.weight) == 0


def test_switches_compose_as_one_override(compose_cfg) -> None:
    net = build(compose_cfg, "resnet20", "model.act=maxout", "model.norm=gn", "model.se_ratio=0.25")
    assert any(isinstance(m, Maxout) for m in net.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in net.modules())
    check_forward_backward(net, torch.rand(2, 1, 28, 28), 10)


def test_maxout_with_two_pieces_starts_as_relu() -> None:
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(Maxout(3, 2)(x), torch.relu(x))


def test_timm_model_by_name(compose_cfg) -> None:
    net = build(compose_cfg, "timm", "model.name=resnet26d")
    check_forward_backward(net, torch.rand(2, 1, 28, 28), 10)
    assert type(net).__module__.startswith("timm.")
    tagged = build(compose_cfg, "timm", "model.name=resnet18.a1_in1k")  # a name with a weights tag
    assert n_params(tagged) == n_params(build(compose_cfg, "timm", "model.name=resnet18"))


def test_timm_unknown_name_and_offline_pretrained(compose_cfg) -> None:
    from ablab.errors import ConfigError
    from ablab.training.run import as_config_error

    def error_of(*overrides: str) -> str:
        with pytest.raises(Exception) as info:  # Hydra wraps errors raised by the target
            build(compose_cfg, "timm", *overrides)
        err = as_config_error(info.value)
        assert isinstance(err, ConfigError)
        return str(err)

    assert "unknown timm model 'resnet26x' (did you mean 'resnet26" in error_of(
        "model.name=resnet26x"
    )
    message = error_of("model.name=resnet26d", "model.pretrained=true")
    assert "not available offline" in message and "model.pretrained=false" in message


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> str:
    """One MLflow store for all smoke runs: creating and migrating sqlite costs seconds each."""
    return f"sqlite:///{tmp_path_factory.mktemp('zoo')}/mlflow.db"


# One config per family and block kind (every config was run this way once by hand; the forward
# and backward test above covers the rest of the folder).
PIPELINE_MODELS = [
    "lenet5",
    "resnet18",
    "resnet50",
    "resnet20",
    "plain20",
    "preact_resnet20",
    "resnext29_8x16d",
    "se_resnet50",
    "vgg11_bn",
    "vgg16_small",
    "mobilenet_v1_small",
    "mobilenet_v2_small",
    "mobilenet_v3_small_cifar",
    "efficientnet_b0_small",
    "repvgg_small",
    "alexnet_small",
    "googlenet",  # with its auxiliary heads on: the task trains them
    "squeezenet_small",
    "densenet_bc100",
    "shufflenet_v2_small",
    "vit_tiny_p4",
    "timm",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", PIPELINE_MODELS)
def test_model_trains_a_short_epoch_on_digits(name, compose_cfg, shared_store) -> None:
    from mlflow import MlflowClient

    from ablab.training.lifecycle import train

    # Small batches, one of each: the point is that every model goes through the whole pipeline.
    overrides = [
        f"model={name}",
        "trainer=smoke",
        "callbacks.batch_preview=null",
        "callbacks.model_checkpoint=null",
        "logger.log_model=false",
        f"logger.tracking_uri={shared_store}",
        "experiment_name=zoo",
        "data.batch_size=8",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "+trainer.num_sanity_val_steps=0",
    ]
    if name == "googlenet":
        overrides.append("model.aux_heads=true")
    with compose_cfg(*overrides) as cfg:
        metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    client = MlflowClient(shared_store)
    experiment = client.get_experiment_by_name("zoo")
    [run] = client.search_runs([experiment.experiment_id], f"tags.model = '{name}'")
    assert run.info.status == "FINISHED"


def test_mobilenet_v2_matches_torchvision(compose_cfg) -> None:
    ours = build(compose_cfg, "mobilenet_v2", "model.in_channels=3", "model.num_classes=1000")
    reference = torchvision.models.mobilenet_v2(weights=None)
    assert n_params(ours) == n_params(reference) == 3_504_872
    out = ours.forward_features(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 320, 7, 7)


def test_mobilenet_v1_parameter_count(compose_cfg) -> None:
    # Howard et al. 2017 Table 8: 4.2M parameters; 4,231,976 counting BN's γ and β.
    net = build(compose_cfg, "mobilenet_v1", "model.in_channels=3", "model.num_classes=1000")
    assert n_params(net) == 4_231_976
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in net.modules())


def test_linear_bottleneck_switch(compose_cfg) -> None:
    from ablab.blocks import InvertedResidual

    linear = build(compose_cfg, "mobilenet_v2_small")
    relu = build(compose_cfg, "mobilenet_v2_small", "model.linear_bottleneck=false")
    for a, b in zip(linear.modules(), relu.modules(), strict=True):
        if isinstance(a, InvertedResidual):
            assert isinstance(a.residual[-1].act, nn.Identity)
            assert isinstance(b.residual[-1].act, nn.ReLU6)
    assert n_params(linear) == n_params(relu)
    shortcuts = [m.shortcut for m in linear.modules() if isinstance(m, InvertedResidual)]
    assert sum(s is not None for s in shortcuts) == 10  # identity only where shapes match


@pytest.mark.parametrize("name", ["repvgg_small", "repvgg_a0"])
@pytest.mark.parametrize("norm", ["bn", "none"])
def test_repvgg_reparameterize_keeps_outputs(name, norm, compose_cfg) -> None:
    from ablab.blocks import RepVGGBlock

    net = build(compose_cfg, name, f"model.norm={norm}")
    net.train()
    with torch.no_grad():  # a few batches so running statistics are not the identity
        for _ in range(3):
            net(torch.randn(8, 1, 32, 32) * 2 + 0.5)
    net.eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        before = net(x)
        n_before = n_params(net)
        net.reparameterize()
        after = net(x)
    assert (before - after).abs().max().item() <= 1e-5 * max(1.0, before.abs().max().item())
    assert n_params(net) < n_before
    blocks = [m for m in net.modules() if isinstance(m, RepVGGBlock)]
    assert all(b.fused is not None and not hasattr(b, "dense") for b in blocks)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) for c in convs) and len(convs) == len(blocks)


def test_repvgg_a0_matches_timm_before_and_after_fusion(compose_cfg) -> None:
    """9,108,968 parameters in training form, 8,309,384 fused (the paper's Table 4 says 8.30M)."""
    import timm
    from timm.utils.model import reparameterize_model

    net = build(compose_cfg, "repvgg_a0", "model.in_channels=3", "model.num_classes=1000")
    reference = timm.create_model("repvgg_a0", pretrained=False)
    assert n_params(net) == n_params(reference) == 9_108_968
    fused, fused_reference = net.eval().reparameterize(), reparameterize_model(reference.eval())
    assert n_params(fused) == n_params(fused_reference) == 8_309_384


def test_resnet_rejects_a_block_without_the_core_arguments(compose_cfg) -> None:
    from ablab.errors import ConfigError
    from ablab.training.run import as_config_error

    with pytest.raises(Exception) as info:
        build(compose_cfg, "resnet20", "model.block=fire")
    err = as_config_error(info.value)
    assert isinstance(err, ConfigError) and "not 'fire'" in str(err)
    assert "valid: basic, bottleneck, conv, depthwise_separable, inverted_residual" in str(err)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.block=conv", "model.block_args={kernal_size: 5}"], "valid: kernel_size"),
        (["model.block=conv", "model.bottleneck_ratio=0.5"], "takes no bottleneck_ratio"),
    ],
)
def test_resnet_block_arguments_are_checked(compose_cfg, overrides, message) -> None:
    from ablab.training.run import as_config_error

    with pytest.raises(Exception) as info:
        build(compose_cfg, "plain20", *overrides)
    assert message in str(as_config_error(info.value))


def test_plain_stack_of_any_block_is_one_override(compose_cfg) -> None:
    """Claims 7-9 swap the block of a plain net: one 5x5 conv per block instead of two 3x3s
    has 25/18 of the conv weights where channels do not change; depthwise-separable and 1x1
    bottleneck blocks have far fewer."""
    counts = {}
    for name, overrides in {
        "two_3x3": ["model.block=basic"],
        "one_5x5": ["model.block=conv", "model.block_args={kernel_size: 5}"],
        "one_3x3": ["model.block=conv"],
        "separable": ["model.block=depthwise_separable"],
        "bottleneck": ["model.block=bottleneck"],
    }.items():
        net = build(compose_cfg, "plain20", *overrides)
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        counts[name] = net.stages[0][1]  # a 16 -> 16 block: conv weights only differ
    weights = {
        name: sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Conv2d))
        for name, block in counts.items()
    }
    assert weights["two_3x3"] == 2 * 9 * 16 * 16 and weights["one_5x5"] == 25 * 16 * 16
    assert weights["separable"] == 9 * 16 + 16 * 16
    assert weights["one_3x3"] == 9 * 16 * 16
    assert weights["bottleneck"] == 16 * 4 + 9 * 4 * 4 + 4 * 16


STORED = json.loads((Path(__file__).parent / "zoo_complexity.json").read_text())


# `make zoo` measures the image classifiers at 32 and 224 px; the recurrent nets' parameters and
# MACs are checked against their formulas in test_recurrent.py.
@pytest.mark.parametrize("name", [m for m in MODELS if form_of(m) in ("imagenet", "small")])
def test_complexity_matches_the_stored_numbers(name) -> None:
    """Params and MACs at 32 px as `make zoo` last measured them: a change shows up here."""
    from ablab.cli import measure_configured

    assert name in STORED, f"{name} has no stored complexity: run `make zoo` and commit the diff"
    stored = STORED[name]["32"]
    overrides = [f"model={name}", "data.in_channels=3", "data.image_size=32"]
    _, stats = measure_configured([*overrides, f"data.num_classes={stored['classes']}"])
    assert (stats.params, stats.macs) == (stored["params"], stored["macs"])
