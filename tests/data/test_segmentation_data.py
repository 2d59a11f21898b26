"""Segmentation data: procedural shapes (seeded, occlusion-consistent masks, a thin class that is
thin) and image/mask files in the Oxford-IIIT Pet layout (nearest-resized masks, official or
seeded splits, one-line layout errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.data.formats import make_pet_folder

from ablab.data.mask_folder import MaskFolderDataModule
from ablab.data.shapes import CLASS_NAMES, ShapesDataModule
from ablab.errors import ConfigError

SMALL = {"n_train": 64, "n_val": 16, "n_test": 16}


def shapes(**kw) -> ShapesDataModule:
    dm = ShapesDataModule(**{**SMALL, **kw})
    dm.setup("fit")
    return dm


def split(dm, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return dm.splits[name].tensors


def test_shapes_are_seeded() -> None:
    a, b, c = shapes(seed=0), shapes(seed=0), shapes(seed=1)
    for name in ("train", "val", "test"):
        assert all(torch.equal(s, t) for s, t in zip(split(a, name), split(b, name), strict=True))
    assert not torch.equal(split(a, "train")[1], split(c, "train")[1])
    # held-out sets are drawn first: more training images leave them as they were
    more = shapes(seed=0, n_train=128)
    assert torch.equal(split(a, "test")[0], split(more, "test")[0])


def test_every_class_is_in_the_training_split_and_the_counts_are_logged() -> None:
    dm = shapes()
    x, mask = split(dm, "train")
    assert x.shape == (64, 3, 32, 32) and mask.shape == (64, 32, 32) and mask.dtype == torch.long
    assert x.min() >= 0.0 and x.max() <= 1.0
    counts = torch.bincount(mask.flatten(), minlength=len(CLASS_NAMES))
    assert (counts > 0).all() and len(counts) == len(CLASS_NAMES) == dm.num_classes
    assert dm.run_params() == {"data.train_class_counts": counts.tolist()}
    assert dm.class_names == ["background", "disc", "square", "triangle", "thin"]


def test_the_mask_follows_occlusion() -> None:
    """Without noise or texture every shape is one flat colour: within an image each colour must
    be one class. Had the mask kept an earlier shape's class where a later one covers it, the
    later shape's colour would carry two classes. Big shapes, two per image: most overlap."""
    dm = shapes(pixel_noise=0.0, texture=0.0, max_shapes=2, min_size=0.35, max_size=0.45)
    x, mask = split(dm, "train")
    touching = 0
    for image, labels in zip(x, mask, strict=True):
        colours, region = image.flatten(1).T.unique(dim=0, return_inverse=True)
        flat = labels.flatten()
        assert all(len(flat[region == k].unique()) == 1 for k in range(len(colours)))
        # two shapes of different classes side by side: an occlusion boundary
        left, right = labels[:, :-1], labels[:, 1:]
        touching += bool(((left != right) & (left > 0) & (right > 0)).any())
    assert touching > 10  # the check above did meet occlusions


def test_colour_does_not_give_the_class_away() -> None:
    """Colours are drawn independently of the class: every shape class has about the same mean
    colour (the background's own is drawn from the same uniform)."""
    dm = shapes(n_train=256, pixel_noise=0.0, texture=0.0)
    x, mask = split(dm, "train")
    means = torch.stack([x.permute(1, 0, 2, 3)[:, mask == c].mean(dim=1) for c in range(1, 5)])
    assert (means - means.mean(dim=0)).abs().max() < 0.06


def test_the_thin_class_is_thin() -> None:
    """A 3x3 erosion keeps only pixels whose whole 3x3 neighbourhood is in the class: strokes of
    1-2 px lose (nearly) all of theirs, discs keep most of theirs."""
    mask = split(shapes(n_train=256), "train")[1]

    def kept_by_erosion(c: int) -> float:
        region = (mask == c).float()[:, None]
        eroded = -F.max_pool2d(-region, 3, stride=1, padding=1)
        return (eroded.sum() / region.sum()).item()

    assert kept_by_erosion(CLASS_NAMES.index("thin")) < 0.05
    assert kept_by_erosion(CLASS_NAMES.index("disc")) > 0.5


def test_images_are_standardised_on_transfer_and_masks_left_alone() -> None:
    dm = shapes()
    x, mask = split(dm, "train")
    out, same = dm.on_after_batch_transfer((x, mask), 0)
    assert same is mask
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    raw = shapes(normalize=False)
    assert raw.on_after_batch_transfer((x, mask), 0)[0] is x
    assert raw.example_input().shape == (2, 3, 32, 32)
    grey = shapes(in_channels=1, image_size=16)
    assert split(grey, "val")[0].shape == (16, 1, 16, 16)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"num_classes": 4}, "data.num_classes=4 but data=shapes has 5 classes"),
        ({"normalize": "per_pixel_mean"}, "unknown data.normalize 'per_pixel_mean'"),
        ({"min_size": 0.4, "max_size": 0.2}, "0 < min_size <= max_size <= 0.5"),
        ({"n_val": 0}, "data.n_val must be a positive number of images"),
    ],
)
def test_bad_shapes_values_are_one_line(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        ShapesDataModule(**kw)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- mask_folder ---------------------------------------------------------------------------------
def pets(root: Path, **kw) -> MaskFolderDataModule:
    dm = MaskFolderDataModule(root=str(root), image_size=16, batch_size=4, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_the_official_split_lists_are_used(tmp_path: Path) -> None:
    make_pet_folder(tmp_path, n_trainval=20, n_test=6)
    dm = pets(tmp_path)
    names = {split: [p[0].stem for p in dm.splits[split].pairs] for split in dm.splits}
    listed = [line.split()[0] for line in (tmp_path / "annotations/test.txt").read_text().split("\n")
              if line]  # fmt: skip
    assert names["test"] == listed
    assert len(names["val"]) == 2 and len(names["train"]) == 18  # val_fraction 0.1 of trainval
    assert not set(names["train"]) & set(names["val"])
    assert pets(tmp_path).splits["val"].pairs == dm.splits["val"].pairs  # seeded
    assert dm.class_names == ["pet", "background", "border"] and dm.num_classes == 3


def test_without_lists_every_image_is_split_by_seeded_fractions(tmp_path: Path) -> None:
    make_pet_folder(tmp_path, n_trainval=20, n_test=10, lists=False)
    dm = pets(tmp_path, test_fraction=0.2, val_fraction=0.25)
    sizes = {split: len(dataset) for split, dataset in dm.splits.items()}
    assert sizes == {"train": 18, "val": 6, "test": 6}
    other = pets(tmp_path, test_fraction=0.2, val_fraction=0.25, seed=1)
    assert other.splits["test"].pairs != dm.splits["test"].pairs


def test_masks_are_resized_nearest_and_images_decoded_to_the_channels(tmp_path: Path) -> None:
    """32x32 trimaps at 16 px: nearest-neighbour picks every second pixel, so the classes are
    exactly the stored values − 1 there ({0, 1, 2}, no blend of pet and background)."""
    trimaps = make_pet_folder(tmp_path, n_trainval=6, n_test=2, size=(32, 32))
    dm = pets(tmp_path)
    for dataset in dm.splits.values():
        for index, (image_path, _) in enumerate(dataset.pairs):
            image, mask = dataset[index]
            assert image.shape == (3, 16, 16) and image.min() >= 0.0 and image.max() <= 1.0
            expected = torch.as_tensor(trimaps[image_path.stem][::2, ::2]).long() - 1
            assert torch.equal(mask, expected)
            assert set(mask.unique().tolist()) <= {0, 1, 2}
    x, mask = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and mask.shape == (4, 16, 16) and mask.dtype == torch.long
    # the class counts a class-count loss asks for: every training mask's pixels
    train = dm.splits["train"]
    masks = torch.stack([train[i][1] for i in range(len(train))])
    assert dm.train_class_counts == torch.bincount(masks.flatten(), minlength=3).tolist()
    grey = pets(tmp_path, in_channels=1)
    assert grey.splits["train"][0][0].shape == (1, 16, 16)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: root / "absent", "mask folder {root}/absent does not exist; set data.root to "
                                       "a folder with root/images/<name>.jpg"),
        (lambda root: (root / "annotations/trimaps/beagle_1.png").unlink() or root,
         "image {root}/images/beagle_1.jpg has no mask {root}/annotations/trimaps/beagle_1.png"),
        (lambda root: (root / "images/beagle_1.jpg").unlink() or root,
         "annotations/trainval.txt names 1 images not in {root}/images (first: beagle_1)"),
        (lambda root: [p.unlink() for p in (root / "images").iterdir()] and root,
         "mask folder {root}/images has no images"),
    ],
    ids=["no-root", "image-without-mask", "listed-image-missing", "no-images"],
)  # fmt: skip
def test_a_bad_layout_is_one_line(tmp_path: Path, damage, message: str) -> None:
    make_pet_folder(tmp_path, n_trainval=4, n_test=2)
    root = damage(tmp_path)
    with pytest.raises(ConfigError) as err:
        pets(root)
    assert message.format(root=tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_class_names_must_name_every_class(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.class_names has 3 names .* data\.num_classes=2"):
        MaskFolderDataModule(root=str(tmp_path), num_classes=2)


@pytest.mark.parametrize("data", ["shapes", "adding"])
def test_show_batch_refuses_data_without_labelled_images(data, tmp_path, capsys) -> None:
    from ablab.cli import main as ablab

    with pytest.raises(SystemExit) as info:
        ablab(["show-batch", "--out", str(tmp_path / "grid.png"), f"data={data}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "draws labelled images" in err
    assert not (tmp_path / "grid.png").exists()
