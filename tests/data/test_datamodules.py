"""Each dataset format, fabricated on disk and read through the real loader."""

from __future__ import annotations

import itertools
import math
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from tests.data.formats import make_cifar10, make_cifar100, make_image_folder, make_mnist
from torch.utils.data import Dataset, Subset, TensorDataset

from ablab.cli import main as ablab
from ablab.data import (
    DigitsDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    VisionDataModule,
)
from ablab.data.base import dataset_targets, long_tail_counts, long_tail_subset
from ablab.errors import ConfigError
from ablab.tasks import ClassifierModule


def sizes(dm) -> dict[str, int]:
    return {k: len(v) for k, v in dm.splits.items()}


def labels(dataset) -> torch.Tensor:
    return dataset.tensors[1]


def test_digits_stratified_seeded_splits() -> None:
    dm = DigitsDataModule(seed=0)
    dm.setup()
    assert sizes(dm) == {"train": 1293, "val": 144, "test": 360}
    x = dm.splits["train"].tensors[0]
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    for split in ("val", "test"):  # every class in every split, in proportion
        counts = torch.bincount(labels(dm.splits[split]), minlength=10)
        assert counts.min() >= 0.8 * counts.float().mean()
    again, other = DigitsDataModule(seed=0), DigitsDataModule(seed=1)
    again.setup(), other.setup()
    assert torch.equal(labels(again.splits["test"]), labels(dm.splits["test"]))
    assert not torch.equal(other.splits["test"].tensors[0], dm.splits["test"].tensors[0])


def test_digits_resize_channels_and_class_subset() -> None:
    dm = DigitsDataModule(image_size=32, in_channels=3, num_classes=3)
    dm.setup()
    x, y = dm.splits["train"].tensors
    assert x.shape[1:] == (3, 32, 32)
    assert set(y.tolist()) == {0, 1, 2} and dm.class_names == ["0", "1", "2"]
    assert torch.equal(x[:, 0], x[:, 2])  # gray replicated to RGB


def test_batches_are_standardised_on_transfer() -> None:
    dm = DigitsDataModule()
    dm.setup()
    x = dm.splits["train"].tensors[0]
    z, _ = dm.on_after_batch_transfer((x, torch.zeros(len(x))), 0)
    assert z.mean().abs() < 1e-4 and (z.std() - 1).abs() < 1e-3


def test_per_pixel_mean_subtracts_the_training_mean_image_only(tmp_path) -> None:
    make_cifar10(tmp_path, per_batch=20)
    dm = VisionDataModule(dataset="cifar10", root=str(tmp_path), verify_checksums=False,
                          num_classes=10, in_channels=3, image_size=32,
                          normalize="per_pixel_mean")  # fmt: skip
    dm.setup()
    train = dm.splits["train"].tensors[0]
    assert dm.mean.shape == (3, 32, 32)  # one mean per pixel and channel ...
    assert torch.allclose(dm.mean, train.mean(dim=0))  # ... of the training split alone
    z, _ = dm.on_after_batch_transfer((train, torch.zeros(len(train))), 0)
    assert z.mean(dim=0).abs().max() < 1e-5  # every pixel centred on the training images
    assert torch.allclose(z, train - dm.mean)  # and not divided by anything
    test = dm.splits["test"].tensors[0]
    assert not torch.allclose(dm.mean, test.mean(dim=0), atol=1e-3)


@pytest.mark.parametrize(("value", "same_as"), [(True, "channel"), (False, "none")])
def test_normalize_true_and_false_name_channel_and_none(value, same_as) -> None:
    assert DigitsDataModule(normalize=value).normalize == same_as
    raw = DigitsDataModule(normalize="none")
    raw.setup()
    x = raw.splits["train"].tensors[0][:8]
    assert torch.equal(raw.standardize(x), x)
    with pytest.raises(ConfigError, match=r"unknown data.normalize 'pixel'.*valid: channel, none"):
        DigitsDataModule(normalize="pixel")


def test_synthetic_is_seeded_and_imbalanced() -> None:
    dm = SyntheticDataModule(num_classes=4, samples_per_class=100, imbalance=0.1, seed=3)
    assert dm.class_counts() == [100, 46, 22, 10]
    dm.setup()
    total = torch.cat([labels(d) for d in dm.splits.values()])
    assert torch.bincount(total).tolist() == [100, 46, 22, 10]
    again = SyntheticDataModule(num_classes=4, samples_per_class=100, imbalance=0.1, seed=3)
    again.setup()
    assert torch.equal(again.splits["train"].tensors[0], dm.splits["train"].tensors[0])
    with pytest.raises(ConfigError, match="imbalance"):
        SyntheticDataModule(imbalance=0.0)


@pytest.mark.parametrize(
    ("dataset", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_idx_files(dataset, folder, tmp_path) -> None:
    arrays = make_mnist(tmp_path, folder, n_train=60, n_test=20)
    dm = VisionDataModule(
        dataset=dataset,
        root=str(tmp_path),
        num_classes=10,
        in_channels=1,
        image_size=28,
        val_fraction=0.2,
    )
    dm.prepare_data()
    dm.setup()
    assert sizes(dm) == {"train": 48, "val": 12, "test": 20}
    images, targets = arrays["t10k"]
    x, y = dm.splits["test"].tensors
    assert torch.equal(y, torch.from_numpy(targets.astype(np.int64)))
    assert torch.allclose(x[:, 0], torch.from_numpy(images).float() / 255)
    assert len(dm.class_names) == 10


def test_cifar10_pickle_batches(tmp_path) -> None:
    batches = make_cifar10(tmp_path, per_batch=20)
    dm = VisionDataModule(
        dataset="cifar10",
        root=str(tmp_path),
        verify_checksums=False,
        num_classes=10,
        in_channels=3,
        image_size=32,
        val_fraction=0.1,
    )
    dm.setup()
    assert sizes(dm) == {"train": 90, "val": 10, "test": 20}
    assert dm.class_names[3] == "cat"
    data, targets = batches["test_batch"]
    x, y = dm.splits["test"].tensors
    assert y.tolist() == targets
    # a row of 3072 bytes is R plane, G plane, B plane of 32x32: channel order must survive
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255
    assert torch.allclose(x, expected)


def test_cifar10_checksums_are_checked_by_default(tmp_path) -> None:
    make_cifar10(tmp_path, per_batch=2)
    dm = VisionDataModule(
        dataset="cifar10", root=str(tmp_path), num_classes=10, in_channels=3, image_size=32
    )
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py.*data\.download=true"):
        dm.prepare_data()


def test_cifar100_with_class_subset_and_grayscale(tmp_path) -> None:
    make_cifar100(tmp_path, n_train=400, n_test=200)
    dm = VisionDataModule(
        dataset="cifar100",
        root=str(tmp_path),
        verify_checksums=False,
        num_classes=5,
        in_channels=1,
        image_size=16,
        val_fraction=0.25,
    )
    dm.setup()
    assert sizes(dm) == {"train": 15, "val": 5, "test": 10}
    x, y = dm.splits["train"].tensors
    assert x.shape[1:] == (1, 16, 16) and int(y.max()) == 4
    assert dm.class_names == ["c0", "c1", "c2", "c3", "c4"]


def test_image_folder_flat_layout(tmp_path) -> None:
    make_image_folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    dm = ImageFolderDataModule(
        root=str(tmp_path / "pets"),
        num_classes=2,
        image_size=16,
        batch_size=4,
        test_fraction=0.2,
        val_fraction=0.25,
        num_workers=0,
    )
    dm.prepare_data()
    dm.setup()
    assert sizes(dm) == {"train": 12, "val": 4, "test": 4}
    assert dm.class_names == ["cat", "dog"]
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_image_folder_train_val_layout_and_class_check(tmp_path) -> None:
    make_image_folder(tmp_path / "train", {"cat": 6, "dog": 6})
    make_image_folder(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1)
    dm = ImageFolderDataModule(
        root=str(tmp_path), num_classes=2, in_channels=1, image_size=8, num_workers=0
    )
    dm.setup()
    assert sizes(dm) == {"train": 12, "val": 4, "test": 4}
    assert dm.splits["train"][0][0].shape == (1, 8, 8)
    with pytest.raises(ConfigError, match=r"has 2 classes .* but data\.num_classes=3"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=3, num_workers=0).setup()


def test_show_batch_writes_a_labelled_grid(tmp_path) -> None:
    out = tmp_path / "grid.png"
    ablab(["show-batch", "--out", str(out), "--max-images", "16", "data.batch_size=16"])
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 100


# -- data.imbalance_ratio: a long-tailed training split ---------------------------------------


@pytest.mark.parametrize(
    ("n_max", "classes", "ratio", "total"),
    # the published sizes of CIFAR-10-LT and CIFAR-100-LT (Cui et al. 2019; Cao et al. 2019)
    [(5000, 10, 100, 12406), (5000, 10, 50, 13996), (5000, 10, 10, 20431), (500, 100, 100, 10847)],
)
def test_long_tail_counts_are_the_cifar_lt_profile(n_max, classes, ratio, total) -> None:
    counts = long_tail_counts(n_max, classes, ratio)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == n_max // ratio
    assert all(a >= b for a, b in itertools.pairwise(counts))
    expected = [math.floor(n_max * ratio ** (-c / (classes - 1))) for c in range(classes)]
    assert counts == expected


def test_long_tail_counts_keep_at_least_one_and_ratio_one_keeps_all() -> None:
    assert long_tail_counts(5, 3, 100) == [5, 1, 1]  # 0.5 and 0.05 examples round up to one
    assert long_tail_counts(7, 4, 1) == [7, 7, 7, 7]


def test_long_tail_subset_draws_the_counts_per_class_seeded() -> None:
    labels = torch.arange(300) % 3
    keep = long_tail_subset(labels, [50, 20, 5], seed=0)
    assert torch.bincount(labels[keep]).tolist() == [50, 20, 5]
    assert torch.equal(keep, keep.unique())  # distinct, in their original order
    assert torch.equal(keep, long_tail_subset(labels, [50, 20, 5], seed=0))
    assert not torch.equal(keep, long_tail_subset(labels, [50, 20, 5], seed=1))


def expected_train_counts(natural: list[int], ratio: float) -> list[int]:
    """The profile from the largest class, capped by what each class has."""
    profile = long_tail_counts(max(natural), len(natural), ratio)
    return [min(n, m) for n, m in zip(profile, natural, strict=True)]


def assert_long_tailed(balanced: ImageDataModule, tailed: ImageDataModule, ratio: float) -> None:
    """``tailed`` is ``balanced`` with the training split subsampled by ``long_tail_subset`` at
    the split seed; validation and test are the very same examples."""
    natural = dataset_targets(balanced.splits["train"])
    counts = expected_train_counts(torch.bincount(natural).tolist(), ratio)
    assert tailed.train_class_counts == counts
    assert torch.bincount(dataset_targets(tailed.splits["train"])).tolist() == counts
    keep = long_tail_subset(natural, counts, balanced.seed)
    before, after = balanced.splits["train"], tailed.splits["train"]
    if isinstance(before, TensorDataset):
        for a, b in zip(after.tensors, before.tensors, strict=True):
            assert torch.equal(a, b[keep])
    else:
        assert after.indices == [before.indices[i] for i in keep.tolist()]
    for split in ("val", "test"):
        a, b = tailed.splits[split], balanced.splits[split]
        if isinstance(a, TensorDataset):
            assert all(torch.equal(u, v) for u, v in zip(a.tensors, b.tensors, strict=True))
        else:
            assert list(a.indices) == list(b.indices)


def test_digits_imbalance_ratio_long_tails_only_the_training_split() -> None:
    balanced, tailed = DigitsDataModule(seed=0), DigitsDataModule(seed=0, imbalance_ratio=10)
    balanced.setup(), tailed.setup()
    assert_long_tailed(balanced, tailed, 10)
    counts = tailed.train_class_counts
    assert counts[-1] == max(balanced.train_class_counts) // 10  # the rarest: n_max / ρ
    assert not torch.equal(tailed.mean, balanced.mean)  # statistics of the set trained on


def test_imbalance_ratio_one_leaves_the_training_set_bitwise_alone() -> None:
    default, one = DigitsDataModule(seed=0), DigitsDataModule(seed=0, imbalance_ratio=1.0)
    default.setup(), one.setup()
    built = DigitsDataModule(seed=0).build_splits()  # the splits before setup sees them
    for split in ("train", "val", "test"):
        for a, b, c in zip(
            *(d[split].tensors for d in (one.splits, default.splits, built)), strict=True
        ):
            assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(one.mean, default.mean) and torch.equal(one.std, default.std)
    assert one.train_class_counts == torch.bincount(built["train"].tensors[1]).tolist()


def test_long_tailed_training_split_is_deterministic_per_seed() -> None:
    a, b = (DigitsDataModule(seed=3, imbalance_ratio=10) for _ in range(2))
    c = DigitsDataModule(seed=4, imbalance_ratio=10)
    for dm in (a, b, c):
        dm.setup()
    assert all(
        torch.equal(u, v)
        for u, v in zip(a.splits["train"].tensors, b.splits["train"].tensors, strict=True)
    )
    assert not torch.equal(a.splits["train"].tensors[0], c.splits["train"].tensors[0])


def test_synthetic_and_mnist_long_tail(tmp_path) -> None:
    pair = [SyntheticDataModule(seed=1, imbalance_ratio=r) for r in (1, 5)]
    for dm in pair:
        dm.setup()
    assert_long_tailed(*pair, 5)
    make_mnist(tmp_path, "MNIST", n_train=200, n_test=20)
    args = dict(dataset="mnist", root=str(tmp_path), num_classes=10, in_channels=1, image_size=28)
    pair = [VisionDataModule(**args, imbalance_ratio=r) for r in (1, 4)]
    for dm in pair:
        dm.setup()
    assert_long_tailed(*pair, 4)
    assert pair[1].train_class_counts[-1] == 18 // 4  # 18 per class after the val split


def test_image_folder_long_tail(tmp_path) -> None:
    make_image_folder(tmp_path / "pets", {"cat": 20, "dog": 20}, size=(8, 8))
    args = dict(root=str(tmp_path / "pets"), num_classes=2, image_size=8, num_workers=0,
                test_fraction=0.2, val_fraction=0.25)  # fmt: skip
    pair = [ImageFolderDataModule(**args, imbalance_ratio=r) for r in (1, 4)]
    for dm in pair:
        dm.setup()
    assert_long_tailed(*pair, 4)
    assert pair[1].train_class_counts == [12, 3]  # 40 images: 8 to test, 8 to val, 12 + 12 left
    assert not isinstance(pair[1].splits["train"].dataset, Subset)  # one level of indices


class Opaque(Dataset):
    """Examples only by index, like a file-backed dataset that keeps no label list."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        return self.inner[i]


class UnlabelledSplits(DigitsDataModule):
    """A file-backed-style module whose training split does not keep its labels."""

    def build_splits(self) -> dict[str, Dataset]:
        splits = super().build_splits()
        return {k: Subset(Opaque(v), list(range(len(v)))) for k, v in splits.items()}


def test_imbalance_needs_cheap_training_labels() -> None:
    dm = UnlabelledSplits()
    dm.setup()  # fine as long as nothing is subsampled
    assert dm.train_class_counts is None
    with pytest.raises(ConfigError, match=r"imbalance_ratio=10 needs the training labels"):
        UnlabelledSplits(imbalance_ratio=10).setup()


@pytest.mark.parametrize("ratio", [0.5, 0.0, -2.0, math.nan, math.inf])
def test_bad_imbalance_ratio_is_one_line(ratio) -> None:
    with pytest.raises(ConfigError, match=r"data\.imbalance_ratio must be .*>= 1") as err:
        DigitsDataModule(imbalance_ratio=ratio)
    assert "\n" not in str(err.value) and str(ratio) in str(err.value)


class Batches(pl.Callback):
    """Every batch as the model receives it (after the transfer hooks), by loader."""

    def __init__(self) -> None:
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "train_eval": []}
        self.labels: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen["train"].append(batch[0])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        name = pl_module.validation_sets()[dataloader_idx]
        self.seen[name].append(batch[0])
        if name == "train_eval":
            self.labels.append(batch[1])


def test_the_clean_training_loader_is_the_training_split_through_validations_transfer() -> None:
    """With crops and flips on, a real fit's train_eval batches are the training examples in
    stored order, standardised exactly as validation's are, and never augmented; the training
    batches of the same fit are."""
    import kornia.augmentation as K

    from ablab.data import BatchAugment

    crop_flip = {"crop": K.RandomCrop((8, 8), padding=2), "hflip": K.RandomHorizontalFlip(p=1.0)}
    dm = DigitsDataModule(image_size=8, augmentation=BatchAugment(crop_flip), train_eval=True)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    task = ClassifierModule(net, partial(torch.optim.SGD, lr=0.1), None,
                            torch.nn.CrossEntropyLoss(), num_classes=10)  # fmt: skip
    batches = Batches()
    pl.Trainer(accelerator="cpu", max_epochs=1, num_sanity_val_steps=0, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[batches]).fit(task, datamodule=dm)  # fmt: skip
    x, y = dm.splits["train"].tensors
    clean = torch.cat(batches.seen["train_eval"])
    assert torch.equal(clean, dm.standardize(x)) and torch.equal(torch.cat(batches.labels), y)
    assert torch.equal(torch.cat(batches.seen["val"]), dm.standardize(dm.splits["val"].tensors[0]))
    trained = torch.cat(batches.seen["train"])
    assert len(trained) == len(clean)
    unaugmented = {image.numpy().tobytes() for image in clean}
    as_stored = sum(image.numpy().tobytes() in unaugmented for image in trained)
    assert as_stored < 0.05 * len(trained), as_stored  # flipped (and most cropped) in training


def test_train_eval_limit_is_a_fixed_seeded_subset_in_stored_order() -> None:
    def clean(**kw) -> TensorDataset:
        dm = DigitsDataModule(train_eval=True, train_eval_limit=100, **kw)
        return dm.val_dataloader()["train_eval"].dataset

    first, again, other = clean(seed=0), clean(seed=0), clean(seed=1)
    assert len(first) == 100 and torch.equal(first.tensors[0], again.tensors[0])
    assert not torch.equal(first.tensors[0], other.tensors[0])
    dm = DigitsDataModule(seed=0)
    dm.setup()
    x, y = dm.splits["train"].tensors
    index = [
        next(i for i in range(len(x)) if torch.equal(x[i], image)) for image in first.tensors[0]
    ]
    assert index == sorted(index) and torch.equal(y[index], first.tensors[1])
    assert not isinstance(DigitsDataModule().val_dataloader(), dict)  # off: one loader, as before
    everything = DigitsDataModule(train_eval=True, train_eval_limit=10**6).val_dataloader()
    assert len(everything["train_eval"].dataset) == len(x)
    with pytest.raises(ConfigError, match=r"data\.train_eval_limit must be a positive"):
        DigitsDataModule(train_eval_limit=0)
