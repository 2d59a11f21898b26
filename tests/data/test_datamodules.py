"""Each dataset format, fabricated on disk and read through the real loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tests.data.formats import make_cifar10, make_cifar100, make_image_folder, make_mnist

from ablab.cli import main as ablab
from ablab.data import (
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    VisionDataModule,
)
from ablab.errors import ConfigError


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
