"""The augmentation group: presets on real batches, per-sample draws, mixing, seeds, bad values."""

from __future__ import annotations

from pathlib import Path

import kornia.augmentation as K
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from PIL import Image
from timm.data import Mixup

from ablab.cli import main as ablab
from ablab.data import BatchAugment, DigitsDataModule, SyntheticDataModule
from ablab.errors import ConfigError
from ablab.training.lifecycle import train
from ablab.training.run import as_config_error, build
from conftest import CONF, tracking_uri

PRESETS = sorted(p.stem for p in (CONF / "augmentation").glob("*.yaml"))


def digits_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Real digits: 1 channel, 28 px."""
    dm = DigitsDataModule()
    dm.setup()
    x, y = dm.splits["train"].tensors
    return x[:n], y[:n]


def rgb_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural 3-channel 32 px images in [0, 1]."""
    dm = SyntheticDataModule(in_channels=3, image_size=32, samples_per_class=20)
    dm.setup()
    x, y = dm.splits["train"].tensors
    return x[:n], y[:n]


BATCHES = {"data=digits": digits_batch, "data=cifar10": rgb_batch}


def make(compose_cfg, *overrides: str) -> BatchAugment:
    with compose_cfg(*overrides) as cfg:
        try:
            return instantiate(cfg.augmentation)
        except Exception as err:  # what run.py does: the ConfigError in the cause chain
            raise as_config_error(err) from err


@pytest.mark.parametrize("data", BATCHES)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_on_gray_and_rgb_batches(preset, data, compose_cfg) -> None:
    aug = make(compose_cfg, f"augmentation={preset}", data)
    x, y = BATCHES[data]()
    before = x.clone()
    out, target = aug(x, y)
    assert torch.equal(x, before)  # the loader's batch is not modified in place
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    if aug.mix is not None:  # targets become class probabilities
        assert target.shape == (len(y), 10) and target.dtype == torch.float32
        torch.testing.assert_close(target.sum(1), torch.ones(len(y)))
    else:
        assert torch.equal(target, y)
    if preset != "none":
        assert not torch.equal(out, x)
    lines = aug.describe()
    assert lines[-1] == "seed: 0" and len(lines) == len(aug.ops) + (aug.mix is not None) + 1
    assert [line.split(":")[0] for line in lines[: len(aug.ops)]] == list(aug.ops)


def test_strong_is_basic_plus_more(compose_cfg) -> None:
    basic, strong = (
        make(compose_cfg, "augmentation=basic"),
        make(compose_cfg, "augmentation=strong"),
    )
    assert list(strong.ops)[: len(basic.ops)] == list(basic.ops) == ["crop", "hflip"]
    assert basic.mix is None and strong.mix.num_classes == 10


def test_ops_draw_per_sample() -> None:
    x, y = digits_batch(1)
    x, y = x.expand(64, -1, -1, -1).contiguous(), y.expand(64)  # one image, 64 times
    flipped, _ = BatchAugment({"hflip": K.RandomHorizontalFlip(p=0.5)})(x, y)
    n_flipped = sum(torch.equal(a, x[0].flip(-1)) for a in flipped)
    n_kept = sum(torch.equal(a, x[0]) for a in flipped)
    assert n_flipped + n_kept == 64 and 10 < n_flipped < 54
    cropped, _ = BatchAugment({"crop": K.RandomCrop((28, 28), padding=4)})(x, y)
    distinct = torch.unique(cropped.flatten(1), dim=0)
    assert len(distinct) > 20  # 81 possible offsets, drawn per sample


def test_mixup_mixes_pairs_and_gives_soft_targets_summing_to_one() -> None:
    n, classes = 13, 10  # odd: timm needs pairs, the last sample stays unmixed
    x, y = torch.rand(n, 3, 8, 8), torch.arange(n) % classes
    mix = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=classes)
    out, target = BatchAugment(mix=mix, seed=3)(x, y)
    assert target.shape == (n, classes)
    torch.testing.assert_close(target.sum(1), torch.ones(n))
    lam = float(
        target[0, y[0]]
    )  # mode "batch": one λ, sample i mixed with sample N-2-i of the even part
    assert 0.0 < lam < 1.0
    for i in range(n - 1):
        j = n - 2 - i
        torch.testing.assert_close(out[i], lam * x[i] + (1 - lam) * x[j])
        assert float(target[i, y[j]]) == pytest.approx(1 - lam, abs=1e-6)
    assert torch.equal(out[-1], x[-1]) and target[-1, y[-1]] == 1.0


def test_cutmix_pastes_a_box_and_targets_follow_its_area() -> None:
    x, y = torch.zeros(8, 1, 16, 16), torch.arange(8)
    x[4:] = 1.0  # the first half is paired with the second: pasted pixels are ones
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=8)
    out, target = BatchAugment(mix=mix, seed=1)(x, y)
    pasted = out[0].mean()  # fraction of sample 0 that now comes from sample 7
    assert 0.0 < pasted < 1.0
    assert float(target[0, 7]) == pytest.approx(float(pasted))
    assert float(target[0, 0]) == pytest.approx(1 - float(pasted))


def sequence(aug: BatchAugment, batches, disturb: int) -> list[torch.Tensor]:
    """Augment ``batches`` in turn, consuming the global generators in between."""
    out = []
    for x, y in batches:
        torch.rand(disturb), np.random.rand(disturb), torch.randperm(disturb + 5)
        xa, ya = aug(x, y)
        out += [xa, ya]
    return out


def test_same_augmentation_seed_gives_the_same_batches_whatever_else_draws(compose_cfg) -> None:
    x, y = rgb_batch(32)
    batches = [(x, y), (x.flip(0), y.flip(0)), (x, y)]
    a = sequence(make(compose_cfg, "augmentation=strong", "data=cifar10"), batches, disturb=3)
    b = sequence(make(compose_cfg, "augmentation=strong", "data=cifar10"), batches, disturb=100)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], a[4])  # the same batch again gets new draws
    c = sequence(
        make(compose_cfg, "augmentation=strong", "data=cifar10", "seeds.augmentation=1"), batches, 3
    )
    assert not torch.equal(a[0], c[0])
    # seed=1 is its own stream, not seed=0 shifted by one batch
    assert not any(torch.equal(a[2 * i], c[2 * j]) for i in range(3) for j in range(3))


def test_augmentation_leaves_the_global_generators_alone() -> None:
    x, y = rgb_batch(16)
    aug = BatchAugment(
        {"crop": K.RandomCrop((32, 32), padding=4)},
        mix=Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=10),
    )
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    aug(x, y)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])


def test_resumed_augmentation_continues_the_sequence() -> None:
    x, y = rgb_batch(16)
    ops = {"crop": K.RandomCrop((32, 32), padding=4), "hflip": K.RandomHorizontalFlip()}
    first = BatchAugment(ops, seed=5)
    first(x, y), first(x, y)
    dm = DigitsDataModule(augmentation=first)
    state = dm.state_dict()  # what Lightning writes into a checkpoint
    third, _ = first(x, y)
    resumed = DigitsDataModule(augmentation=BatchAugment(ops, seed=5))
    resumed.load_state_dict(state)
    assert int(resumed.augmentation.batches_drawn) == 2
    assert torch.equal(resumed.augmentation(x, y)[0], third)


def first_batch_labels(dm) -> torch.Tensor:
    return next(iter(dm.train_dataloader()))[1]


def test_order_seed_changes_the_shuffle_but_not_the_splits() -> None:
    a, b = DigitsDataModule(seed=0, order_seed=1), DigitsDataModule(seed=0, order_seed=2)
    default = DigitsDataModule(seed=0)
    for dm in (a, b, default):
        dm.setup()
    for dm in (b, default):
        assert torch.equal(dm.splits["train"].tensors[0], a.splits["train"].tensors[0])
    torch.rand(10)  # the global generator does not decide the order
    again = DigitsDataModule(seed=0, order_seed=1)
    again.setup()
    assert torch.equal(first_batch_labels(a), first_batch_labels(again))
    assert not torch.equal(first_batch_labels(a), first_batch_labels(b))
    assert default.order_seed == 0


def test_data_configs_take_the_order_from_seeds_data(compose_cfg) -> None:
    with compose_cfg("seed=3", "seeds.data=7") as cfg:
        dm = instantiate(cfg.data)
        assert (dm.seed, dm.order_seed) == (3, 7)
        assert instantiate(cfg.augmentation).seed == 3


def test_only_training_batches_are_augmented() -> None:
    x, y = digits_batch(16)
    dm = DigitsDataModule(normalize=False, augmentation=K.RandomHorizontalFlip(p=1.0))
    assert list(dm.augmentation.ops) == ["RandomHorizontalFlip"]  # a bare module is wrapped
    assert torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], x)  # no trainer: not training

    class Training:
        training = True

    dm.trainer = Training()
    out, target = dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(out, x.flip(-1)) and torch.equal(target, y)


BAD = [
    (["augmentation=basic", "augmentation.ops.crop.padding=-4"], r"ops\.crop\.padding .*-4"),
    (["augmentation=basic", "augmentation.ops.hflip.p=1.5"], r"ops\.hflip\.p .*\[0, 1\].*1\.5"),
    (["augmentation=strong", "augmentation.ops.erase.p=-0.1"], r"ops\.erase\.p "),
    (["augmentation=strong", "augmentation.ops.erase.scale=[0.3,0.02]"], r"erase\.scale .*low"),
    (["augmentation=strong", "augmentation.mix.mixup_alpha=-1"], r"mix\.mixup_alpha .*-1"),
    (["augmentation=strong", "augmentation.mix.switch_prob=2"], r"mix\.switch_prob"),
    (
        [
            "augmentation=strong",
            "augmentation.mix.cutmix_alpha=0",
            "augmentation.mix.mixup_alpha=0",
        ],
        r"mixup_alpha > 0 or cutmix_alpha > 0",
    ),
    (["augmentation=strong", "augmentation.mix.mode=pairs"], r"mix mode 'pairs'.*'pair'"),
    (
        ["augmentation=basic", "augmentation.ops.crop._target_=kornia.augmentation.RandomCrp"],
        r"unknown augmentation op 'kornia\.augmentation\.RandomCrp' \(did you mean "
        r"'kornia\.augmentation\.RandomCrop'\?\); valid: .*RandomErasing",
    ),
    (["augmentation=basic", "augmentation.ops.crop.size=[24,24]"], r"ops\.crop .*\(1, 24, 24\)"),
    (
        ["augmentation=strong", "augmentation.ops.jitter.hue=0.1"],
        r"ops\.jitter .* fails on 1-channel 28 px images: .*3",
    ),
    (
        ["augmentation=strong", "augmentation.ops.jitter.brightness=-1"],
        r"ops\.jitter: ColorJitter\(.*\) rejected its arguments: .*non negative",
    ),
    (["augmentation=basic", "seeds.augmentation=-1"], r"seeds\.augmentation .*-1"),
    (["augmentation=strong", "loss=focal"], r"loss .*class-index targets"),
]


@pytest.mark.parametrize(("overrides", "match"), BAD, ids=[o[-1] for o, _ in BAD])
def test_bad_values_fail_while_building_on_one_line(overrides, match, compose_cfg) -> None:
    with compose_cfg(*overrides) as cfg, pytest.raises(ConfigError, match=match) as err:
        build(cfg)  # the run's own build step: nothing is tracked yet
    assert "\n" not in str(err.value)


def test_rgb_only_policy_op_fails_on_gray_data_whatever_the_draw() -> None:
    # kornia's default RandAugment list includes "color" (saturation), 3 channels only; with n=1
    # a single draw would usually miss it, so building tries every candidate.
    spec = {"_target_": "kornia.augmentation.auto.RandAugment", "n": 1, "m": 9}
    with pytest.raises(ConfigError, match=r"randaugment .* fails on 1-channel"):
        BatchAugment({"randaugment": spec}, in_channels=1, image_size=28)
    assert len(BatchAugment({"randaugment": spec}, in_channels=3, image_size=28).ops) == 1


def test_null_entry_drops_an_op(compose_cfg) -> None:
    aug = make(compose_cfg, "augmentation=strong", "augmentation.ops.hflip=null")
    assert list(aug.ops) == ["crop", "jitter", "erase"]


@pytest.mark.slow  # a real (smoke) run: about 10 s on 2 cores
def test_one_training_step_with_strong_augmentation(compose_cfg, root) -> None:
    with compose_cfg("trainer=smoke", "augmentation=strong") as cfg:
        metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    client = MlflowClient(tracking_uri(root))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert np.isfinite(run.data.metrics["train/loss"])
    assert run.data.params["augmentation.mix._target_"] == "timm.data.Mixup"
    previews = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert previews == ["samples/train_batch.png"]  # the preview shows mixed batches too
    logged = client.download_artifacts(run.info.run_id, "config/augmentation.txt", str(root))
    names = [line.split(":")[0] for line in Path(logged).read_text().splitlines()]
    assert names == ["crop", "hflip", "jitter", "erase", "mix", "seed"]


def test_show_batch_draws_the_configured_augmentation(tmp_path) -> None:
    out = tmp_path / "grid.png"
    args = ["--out", str(out), "--max-images", "8", "--augmented", "augmentation=strong"]
    ablab(["show-batch", *args, "data.batch_size=8"])
    with Image.open(out) as img:
        assert img.format == "PNG"
