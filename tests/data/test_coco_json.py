"""COCO-style annotations: xywh boxes become xyxy in the resized image, category ids contiguous
labels named by the categories, crowds kept and flagged but no training target, empty images kept;
a bad file is one line naming the file, the entry and what it must be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablab.data.coco_json import FIELDS, CocoJsonDataModule
from ablab.data.shapes_det import PAD
from ablab.errors import ConfigError

#: Category ids with gaps and out of order, as COCO's (1..90 for 80 classes).
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]


def make_coco(root: Path) -> None:
    """Three train images (80x40, 40x40, 20x60) and one val image, PNG, with a COCO JSON each."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    sizes = {1: (80, 40), 2: (40, 40), 3: (20, 60), 4: (40, 40)}  # id -> (width, height)
    for image_id, (w, h) in sizes.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{image_id:03d}.png")

    def images(ids):
        return [{"id": i, "file_name": f"{i:03d}.png", "width": sizes[i][0],
                 "height": sizes[i][1]} for i in ids]  # fmt: skip

    train = {
        "images": images([1, 2, 3]),
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [8, 4, 40, 20], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 80, 40], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            {"id": 4, "image_id": 3, "category_id": 7, "bbox": [10, 30, 10, 30]},
        ],  # image 2 has none: a negative
        "categories": CATEGORIES,
    }
    val = {
        "images": images([4]),
        "annotations": [{"id": 5, "image_id": 4, "category_id": 3, "bbox": [0, 0, 20, 10]}],
        "categories": CATEGORIES,
    }
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))


def coco(root: Path, **kw) -> CocoJsonDataModule:
    dm = CocoJsonDataModule(root=str(root), num_classes=2, image_size=32, batch_size=2, **kw)
    dm.setup("fit")
    return dm


def test_boxes_become_xyxy_in_the_resized_image_with_contiguous_labels(tmp_path) -> None:
    make_coco(tmp_path)
    dm = coco(tmp_path)
    assert dm.class_names == ["dog", "cat"]  # by increasing id: 3 → 0, 7 → 1
    train = dm.splits["train"]
    assert len(train) == 3 and train.boxes.shape == (3, 3, 4)  # 3: the most boxes of an image
    # image 1 is 80x40 → 32x32: x scaled by 0.4, y by 0.8; the crowd is kept, flagged
    image, boxes, labels, crowd = train[0]
    assert image.shape == (3, 32, 32) and image.min() >= 0 and image.max() <= 1
    assert labels.tolist() == [0, 1, 1] and crowd.tolist() == [False, False, True]
    want = [[3.2, 3.2, 19.2, 19.2], [0.0, 0.0, 32.0, 32.0], [0.4, 0.8, 2.4, 4.8]]
    assert torch.allclose(boxes, torch.tensor(want))
    # image 2: no annotation, a negative; image 3 (20x60): (10, 30, 20, 60) → ×1.6, ×(32/60)
    assert train[1][2].tolist() == [PAD] * 3 and not train[1][3].any()
    assert torch.allclose(train[2][1][0], torch.tensor([16.0, 16.0, 32.0, 32.0]))
    # the crowd is no training target: padding in train_targets, not in the class counts
    assert dm.train_targets()[1][0].tolist() == [0, 1, PAD]
    assert dm.train_class_counts == [1, 2]
    # no test file: the test split is the validation split
    assert dm.splits["test"].paths == dm.splits["val"].paths
    batch = next(iter(dm.train_dataloader()))
    x, boxes, labels, crowd = dm.on_after_batch_transfer(batch, 0)  # standardised, flags kept
    assert x.shape == (2, 3, 32, 32) and boxes.shape == (2, 3, 4) and labels.shape == (2, 3)
    assert crowd.dtype == torch.bool and torch.equal(crowd, batch[3])
    assert not torch.equal(x, batch[0])


def test_the_official_layout_is_a_path_per_split(tmp_path) -> None:
    make_coco(tmp_path)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train.json").rename(tmp_path / "annotations" / "instances_train2017.json")
    (tmp_path / "images").rename(tmp_path / "train2017")
    dm = coco(tmp_path, train_annotations="annotations/instances_train2017.json",
              train_images="train2017", val_images="train2017", test_images="train2017")  # fmt: skip
    assert len(dm.splits["train"]) == 3 and dm.splits["train"].paths[0].parent.name == "train2017"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda root: (root / "val.json").unlink(), "data.val_annotations: no COCO annotation file"),
        (lambda root: (root / "images" / "002.png").unlink(),
         "data.train_images: train.json lists 002.png, which is not in"),
    ],
)  # fmt: skip
def test_missing_files_are_one_line(tmp_path, change, message) -> None:
    make_coco(tmp_path)
    change(tmp_path)
    with pytest.raises(ConfigError) as err:
        coco(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def edited(name: str, section: str, index: int, key: str, value=None):
    """A change to ``make_coco``'s files: entry ``index`` of ``section`` of file ``name`` with
    ``key`` set to ``value``, or removed (``value`` None)."""

    def change(root: Path) -> None:
        content = json.loads((root / name).read_text())
        item = content[section][index]
        if value is None:
            del item[key]
        else:
            item[key] = value
        (root / name).write_text(json.dumps(content))

    return change


def written(name: str, text: str):
    return lambda root: (root / name).write_text(text)


BBOX = FIELDS["annotations"]["bbox"][1]


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("train.json", written("train.json", '{"images": [,]}'),
         "is not a COCO instances file: it does not parse as JSON (Expecting value: line 1 "
         "column 13 (char 12))"),
        ("val.json", written("val.json", "{}"),
         "is not a COCO instances file: 'images' is missing (it needs the lists images, "
         "annotations, categories)"),
        ("val.json", written("val.json", '{"images": {}, "annotations": [], "categories": []}'),
         "is not a COCO instances file: 'images' is not a list"),
        ("val.json", edited("val.json", "annotations", 0, "image_id", 99),
         "annotations[0] (id 5) has image_id 99, which names no image of the file"),
        ("train.json", edited("train.json", "annotations", 1, "bbox"),
         f"annotations[1] (id 2) has no 'bbox'; expected {BBOX}"),
        ("train.json", edited("train.json", "images", 1, "width"),
         "images[1] (id 2) has no 'width'; expected the image's width in pixels, > 0"),
        ("train.json", edited("train.json", "images", 2, "height", 0),
         "images[2] (id 3) has 'height' 0; expected the image's height in pixels, > 0"),
        ("val.json", edited("val.json", "images", 0, "file_name"),
         "images[0] (id 4) has no 'file_name'; expected the image's file name"),
        ("train.json", edited("train.json", "categories", 1, "name"),
         "categories[1] (id 3) has no 'name'; expected the category's name, a string"),
        ("train.json", edited("train.json", "categories", 0, "id"),
         "categories[0] has no 'id'; expected an integer or string id"),
        ("train.json", edited("train.json", "categories", 0, "id", 3),
         "categories[1] (id 3) repeats the id of an earlier entry"),
        ("val.json", edited("val.json", "annotations", 0, "category_id", 9),
         "annotations[0] (id 5) has category_id 9, which is not a category of the training file "
         "(3, 7)"),
        ("train.json", edited("train.json", "annotations", 3, "bbox", [10, 30, 10]),
         f"annotations[3] (id 4) has 'bbox' [10, 30, 10]; expected {BBOX}"),
        ("train.json", edited("train.json", "annotations", 0, "bbox", [8, 4, "40", 20]),
         f"annotations[0] (id 1) has 'bbox' [8, 4, '40', 20]; expected {BBOX}"),
        ("train.json", edited("train.json", "annotations", 0, "bbox", [8, 4, -1, 20]),
         f"annotations[0] (id 1) has 'bbox' [8, 4, -1, 20]; expected {BBOX}"),
        ("train.json", edited("train.json", "annotations", 0, "iscrowd", 2),
         "annotations[0] (id 1) has 'iscrowd' 2; expected 0 or 1 (1: a crowd region)"),
        ("val.json", written("val.json", json.dumps(
            {"images": [7], "annotations": [], "categories": []})),
         "images[0] is 7, not an object"),
    ],
)  # fmt: skip
def test_a_malformed_file_is_one_line_naming_it_the_entry_and_what_it_must_be(
    tmp_path, file, change, message
) -> None:
    make_coco(tmp_path)
    change(tmp_path)
    with pytest.raises(ConfigError) as err:
        coco(tmp_path)
    text = str(err.value)
    assert text.startswith(str(tmp_path / file)) and message in text and "\n" not in text


def test_a_class_count_that_is_not_the_files_is_one_line(tmp_path) -> None:
    make_coco(tmp_path)
    with pytest.raises(ConfigError, match=r"data.num_classes=80 but .*train.json has 2 categories; "
                                          r"use data.num_classes=2"):  # fmt: skip
        CocoJsonDataModule(root=str(tmp_path), num_classes=80).setup("fit")
