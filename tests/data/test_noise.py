"""The corruptions a denoising task applies, as defined and seeded; the data's noise keys and its
way back from standardised batches to pixels."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from scipy import stats

from ablab.data import DigitsDataModule, ImageRows, SyntheticDataModule
from ablab.data.noise import Corruption, noise_seed, seeded_generator
from ablab.errors import ConfigError
from conftest import CONF


def test_gaussian_adds_level_times_a_standard_normal_and_clamps() -> None:
    level = 0.1
    grey = torch.full((16, 3, 16, 16), 0.5)  # mid-grey: 5 sigma from either bound
    noisy = Corruption("gaussian", level)(grey, seeded_generator(0))
    eps = ((noisy - grey) / level).flatten().double().numpy()
    assert stats.kstest(eps, "norm").pvalue > 1e-3  # ε ~ N(0, 1): no shift, std = level
    assert torch.equal(grey, torch.full_like(grey, 0.5))  # the input is left as it is
    bright = Corruption("gaussian", 2.0)(torch.ones(4, 1, 8, 8), seeded_generator(0))
    assert bright.min() >= 0 and bright.max() <= 1 and (bright == 1).any()


def test_mask_zeroes_a_level_fraction_of_pixels_with_one_mask_over_channels() -> None:
    level = 0.3
    x = torch.rand(8, 3, 16, 16) + 0.1  # no pixel is zero before masking
    noisy = Corruption("mask", level)(x, seeded_generator(1))
    zero = noisy == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    kept = ~zero[:, 0]
    assert torch.equal(noisy.permute(1, 0, 2, 3)[:, kept], x.permute(1, 0, 2, 3)[:, kept])
    dropped = int(zero[:, 0].sum())
    assert stats.binomtest(dropped, zero[:, 0].numel(), level).pvalue > 1e-3


@pytest.mark.parametrize(("kind", "level"), [("gaussian", 0.3), ("mask", 0.5)])
def test_a_seed_fixes_the_draw(kind, level) -> None:
    x = torch.rand(4, 1, 8, 8)
    corrupt = Corruption(kind, level)
    first = corrupt(x, seeded_generator(7))
    assert torch.equal(first, corrupt(x, seeded_generator(7)))
    assert not torch.equal(first, corrupt(x, seeded_generator(8)))
    assert torch.equal(Corruption()(x, seeded_generator(7)), x)  # none: the input itself


def test_batch_seeds_differ_by_split_rank_and_batch() -> None:
    seeds = {noise_seed(0, split, rank, index) for split in ("val", "test")
             for rank in (0, 1) for index in (0, 1)}  # fmt: skip
    assert len(seeds) == 8 and noise_seed(0, "val", 0, 3) == noise_seed(0, "val", 0, 3)


@pytest.mark.parametrize(
    ("kind", "level", "message"),
    [
        ("salt", 0.1, "unknown noise 'salt'; valid: gaussian, mask, none"),
        ("gaussian", 0.0, "noise 'gaussian' takes a level > 0"),
        ("mask", 1.0, "noise 'mask' takes a level in (0, 1)"),
        ("none", 0.3, "noise 'none' takes a level of 0"),
    ],
)
def test_a_bad_kind_or_level_is_one_line(kind, level, message) -> None:
    with pytest.raises(ConfigError) as err:
        Corruption(kind, level)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_data_declares_the_corruption_and_names_its_keys() -> None:
    dm = DigitsDataModule(noise="mask", noise_level=0.5)
    assert (dm.corruption.kind, dm.corruption.level, dm.corruption.active) == ("mask", 0.5, True)
    assert not DigitsDataModule().corruption.active
    with pytest.raises(ConfigError) as err:
        DigitsDataModule(noise_level=0.3)
    assert str(err.value).startswith("data.noise=null data.noise_level=0.3: noise 'none'")
    with pytest.raises(ConfigError, match=r"^data.noise=gaussian data.noise_level=0.0: "):
        DigitsDataModule(noise="gaussian")


@pytest.mark.parametrize("normalize", ["channel", "per_pixel_mean", "none"])
def test_unstandardize_inverts_standardize(normalize) -> None:
    dm = SyntheticDataModule(num_classes=3, in_channels=3, image_size=8, samples_per_class=20,
                             normalize=normalize)  # fmt: skip
    dm.setup()
    x = dm.splits["val"].tensors[0]
    assert torch.allclose(dm.unstandardize(dm.standardize(x)), x, atol=1e-6)
    if normalize != "none":  # and standardising did something
        assert not torch.allclose(dm.standardize(x), x, atol=1e-3)


IMAGE_DATA = [
    "digits",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "image_folder",
    "synthetic",
]


@pytest.mark.parametrize("data", IMAGE_DATA)
def test_noise_keys_compose_on_every_image_data(data, compose_cfg) -> None:
    overrides = [f"data={data}", "data.noise=gaussian", "data.noise_level=0.2"]
    with compose_cfg(*overrides) as cfg:
        dm = instantiate(cfg.data)
    assert (dm.corruption.kind, dm.corruption.level) == ("gaussian", 0.2)
    assert "noise: null" in (CONF / "data" / f"{data}.yaml").read_text()  # off unless asked


def test_image_rows_refuse_noise_they_would_ignore() -> None:
    images = partial(DigitsDataModule, noise="mask", noise_level=0.5)
    with pytest.raises(ConfigError) as err:
        ImageRows(images=images, in_channels=1, image_size=28, input_size=28, num_outputs=10)
    assert "data.images.noise=mask" in str(err.value) and "\n" not in str(err.value)
