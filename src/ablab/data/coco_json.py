"""Images with boxes described by COCO-style instance annotations (Lin et al. 2014, "Microsoft
COCO: Common Objects in Context"; the format of http://cocodataset.org/#format-data)::

    root/<train_annotations>   e.g. train.json: {"images": [{"id", "file_name", "width",
    root/<val_annotations>     "height"}, ...], "annotations": [{"image_id", "category_id",
    root/<test_annotations>    "bbox": [x, y, w, h], "iscrowd"}, ...], "categories": [{"id",
                               "name"}, ...]}
    root/<split>_images/<file_name>

Each split names its JSON file and its image folder, relative to ``root``: the defaults are
``train.json`` / ``val.json`` with images in ``images/``; the official COCO 2017 layout is
``data.train_annotations=annotations/instances_train2017.json data.train_images=train2017``
(and ``val2017``). Without a test file (``test_annotations: null``) the test split is the
validation split (COCO's own test images have no public annotations).

- Boxes: COCO's (x, y, w, h) in the image's pixels become (x1, y1, x2, y2) = (x, y, x + w, y + h),
  scaled with the image to ``image_size`` x ``image_size`` (sx = S / width, sy = S / height: the
  aspect ratio is not kept, as in ``data=mask_folder``) and clipped to it; a box left with no
  width or height is dropped.
- Crowds: an annotation with ``iscrowd: 1`` (one region around many objects of its class) is kept,
  flagged: COCO's evaluation ignores a detection that matches a crowd region instead of counting
  it as a false positive (pycocotools' COCOeval; dropping the region would make every detection
  of its objects one). It is never a training target: :meth:`CocoJsonDataModule.train_targets`
  and ``data.train_class_counts`` leave it out, and task=detection treats it as background.
- Classes: the categories of the training file, by increasing id, become labels 0..K−1 (COCO's 80
  ids run from 1 to 90 with gaps), named by their ``name``; ``num_classes`` must equal K (checked
  at setup). Every split must use the training file's categories.
- Images without annotations are kept: they are negatives only.
- A file that is not valid JSON, lacks a key an entry needs (:data:`FIELDS`), holds a value of the
  wrong kind (a ``bbox`` that is not 4 numbers), repeats an id, or refers to an image or category
  it does not have is one line at setup (:class:`~ablab.errors.ConfigError`) naming the file, the
  entry (``annotations[3] (id 12)``) and what it must be, before any run exists.

Batches are ``(x, boxes, labels, crowd)``: :class:`~ablab.data.shapes_det.BoxDataModule`'s, and
``crowd`` bool (N, M), true on a crowd region's row. Images are decoded lazily, one per
``__getitem__`` (in DataLoader workers), converted to ``in_channels``, resized (bilinear,
antialiased) and scaled to [0, 1]; the annotations are read once, at setup, into padded tensors,
so the boxes are known without decoding any image.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ablab.data.shapes_det import PAD, BoxDataModule, pad
from ablab.errors import ConfigError

#: The three lists of an instances file.
SECTIONS = ("images", "annotations", "categories")


def is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_xywh(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(map(is_number, value))
        and min(value[2:]) >= 0
    )


#: Per section, each key of an entry: (its test, what it must be).
FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "images": {
        "id": (is_id, "an integer or string id"),
        "file_name": (lambda v: isinstance(v, str) and bool(v), "the image's file name"),
        "width": (lambda v: is_number(v) and v > 0, "the image's width in pixels, > 0"),
        "height": (lambda v: is_number(v) and v > 0, "the image's height in pixels, > 0"),
    },
    "annotations": {
        "image_id": (is_id, "the id of one of the file's images"),
        "category_id": (is_id, "the id of one of the training file's categories"),
        "bbox": (is_xywh, "[x, y, w, h]: 4 numbers, w and h >= 0"),
        "iscrowd": (lambda v: v in (0, 1), "0 or 1 (1: a crowd region)"),
    },
    "categories": {
        "id": (is_id, "an integer or string id"),
        "name": (lambda v: isinstance(v, str), "the category's name, a string"),
    },
}
#: Keys an entry may leave out (an annotation without ``iscrowd`` is no crowd).
OPTIONAL = frozenset({"iscrowd"})


def entry(section: str, index: int, item: Any) -> str:
    """How an error names an entry of a section: ``annotations[3] (id 12)``."""
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{section}[{index}]" + (f" (id {reprlib.repr(ident)})" if is_id(ident) else "")


def check_instances(path: Path, content: Any) -> dict[str, list[dict[str, Any]]]:
    """The three sections of an instances file, each entry checked against :data:`FIELDS` and
    the image and category ids unique; anything else is a one-line :class:`ConfigError`."""
    if not isinstance(content, dict):
        raise ConfigError(
            f"{path} is not a COCO instances file: its top level is a {type(content).__name__}, "
            f"not an object with the lists {', '.join(SECTIONS)}"
        )
    for section in SECTIONS:
        if not isinstance(content.get(section), list):
            state = "is missing" if section not in content else "is not a list"
            raise ConfigError(
                f"{path} is not a COCO instances file: '{section}' {state} (it needs the lists "
                f"{', '.join(SECTIONS)})"
            )
    for section, fields in FIELDS.items():
        seen: set[Any] = set()
        for index, item in enumerate(content[section]):
            name = entry(section, index, item)
            if not isinstance(item, dict):
                raise ConfigError(f"{path}: {name} is {reprlib.repr(item)}, not an object")
            for key, (valid, expected) in fields.items():
                if key not in item:
                    if key in OPTIONAL:
                        continue
                    raise ConfigError(f"{path}: {name} has no '{key}'; expected {expected}")
                if not valid(item[key]):
                    raise ConfigError(
                        f"{path}: {name} has '{key}' {reprlib.repr(item[key])}; expected {expected}"
                    )
            if section != "annotations":  # an annotation's id is never referred to
                if item["id"] in seen:
                    raise ConfigError(f"{path}: {name} repeats the id of an earlier entry")
                seen.add(item["id"])
    return {section: content[section] for section in SECTIONS}


class CocoImages(Dataset):
    """(image, boxes, labels, crowd) per image: image float (C, S, S) in [0, 1], boxes (M, 4) and
    labels (M,) padded with −1, crowd (M,) bool, M the most boxes of any image of the data."""

    def __init__(
        self,
        paths: list[Path],
        boxes: Tensor,
        labels: Tensor,
        crowd: Tensor,
        in_channels: int,
        size: int,
    ) -> None:
        self.paths, self.boxes, self.labels, self.crowd = paths, boxes, labels, crowd
        self.in_channels, self.size = in_channels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with Image.open(self.paths[index]) as image:
            pixels = TF.pil_to_tensor(image.convert("L" if self.in_channels == 1 else "RGB"))
        pixels = TF.resize(pixels, [self.size, self.size], antialias=True)
        image = pixels.float().div_(255.0)
        return image, self.boxes[index], self.labels[index], self.crowd[index]


class CocoJsonDataModule(BoxDataModule):
    """A COCO instances JSON per split and a folder of images; boxes xyxy in resized pixels,
    crowd regions flagged."""

    def __init__(
        self,
        *,
        root: str,
        num_classes: int,
        train_annotations: str = "train.json",
        val_annotations: str = "val.json",
        test_annotations: str | None = None,
        train_images: str = "images",
        val_images: str = "images",
        test_images: str = "images",
        in_channels: int = 3,
        image_size: int = 64,
        normalize: bool | str = True,
        **kw: Any,
    ) -> None:
        """``<split>_annotations``: the split's JSON file and ``<split>_images`` its image
        folder, relative to ``root`` (``test_annotations`` null: test on the validation split);
        ``num_classes``: the training file's number of categories."""
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            normalize=normalize,
            **kw,
        )
        self.root = Path(root)
        self.files = {
            "train": (train_annotations, train_images),
            "val": (val_annotations, val_images),
            "test": (test_annotations or val_annotations, test_images if test_annotations
                     else val_images),
        }  # fmt: skip

    def read(self, split: str) -> dict[str, list[dict[str, Any]]]:
        """The split's images, annotations and categories, each entry checked
        (:func:`check_instances`)."""
        path = self.path(split)
        if not path.is_file():
            raise ConfigError(
                f"data.{split}_annotations: no COCO annotation file at {path} (data.root="
                f"{self.root})"
            )
        try:
            content = json.loads(path.read_text())
        except ValueError as err:  # not JSON, or not UTF-8 text
            reason = " ".join(str(err).split())
            raise ConfigError(
                f"{path} is not a COCO instances file: it does not parse as JSON ({reason})"
            ) from None
        return check_instances(path, content)

    def path(self, split: str) -> Path:
        """The split's annotation file."""
        return self.root / self.files[split][0]

    def build_splits(self) -> dict[str, Dataset]:
        content = {split: self.read(split) for split in self.files}
        categories = sorted(content["train"]["categories"], key=lambda c: c["id"])
        if len(categories) != self.num_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {self.path('train')} has "
                f"{len(categories)} categories; use data.num_classes={len(categories)}"
            )
        label_of = {c["id"]: label for label, c in enumerate(categories)}
        self.class_names = [str(c["name"]) for c in categories]
        parsed = {split: self.parse(split, content[split], label_of) for split in self.files}
        rows = max([1, *(len(b) for _, targets in parsed.values() for b, _, _ in targets)])
        splits = {}
        for split, (paths, targets) in parsed.items():
            boxes, labels = pad([(b, y) for b, y, _ in targets], rows)
            crowd = torch.zeros(len(targets), rows, dtype=torch.bool)
            for i, (_, _, c) in enumerate(targets):
                crowd[i, : len(c)] = c
            splits[split] = CocoImages(
                paths, boxes, labels, crowd, self.in_channels, self.image_size
            )
        return splits

    def parse(
        self, split: str, content: dict[str, Any], label_of: dict[Any, int]
    ) -> tuple[list[Path], list[tuple[Tensor, Tensor, Tensor]]]:
        """Image paths and, per image, boxes (k, 4) xyxy scaled to ``image_size``, labels (k,)
        and crowd flags (k,)."""
        folder, path = self.root / self.files[split][1], self.path(split)
        per_image: dict[Any, list[tuple[list[float], int, bool]]] = {
            image["id"]: [] for image in content["images"]
        }
        for index, note in enumerate(content["annotations"]):
            if note["image_id"] not in per_image:
                raise ConfigError(
                    f"{path}: {entry('annotations', index, note)} has image_id "
                    f"{reprlib.repr(note['image_id'])}, which names no image of the file"
                )
            if note["category_id"] not in label_of:
                raise ConfigError(
                    f"{path}: {entry('annotations', index, note)} has category_id "
                    f"{reprlib.repr(note['category_id'])}, which is not a category of the "
                    f"training file ({', '.join(map(str, label_of))})"
                )
            crowd = bool(note.get("iscrowd", 0))
            per_image[note["image_id"]].append((note["bbox"], label_of[note["category_id"]], crowd))
        paths, targets, size = [], [], self.image_size
        for image in content["images"]:
            paths.append(folder / image["file_name"])
            if not paths[-1].is_file():  # found now, not by a loader worker mid-run
                raise ConfigError(
                    f"data.{split}_images: {self.files[split][0]} lists {image['file_name']}, "
                    f"which is not in {folder}"
                )
            notes = per_image[image["id"]]
            xywh = torch.tensor([n[0] for n in notes], dtype=torch.float32).view(-1, 4)
            scale = torch.tensor([size / image["width"], size / image["height"]] * 2)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1) * scale
            boxes = boxes.clamp(0, size)
            labels = torch.tensor([n[1] for n in notes], dtype=torch.long)
            crowd = torch.tensor([n[2] for n in notes], dtype=torch.bool)
            kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            targets.append((boxes[kept], labels[kept], crowd[kept]))
        return paths, targets

    def train_targets(self) -> tuple[Tensor, Tensor]:
        """The training split's training targets: its padded boxes (N, M, 4) and labels (N, M),
        a crowd region's row padding (−1), so that neither the class counts nor balanced_ce's
        weights count it."""
        train = self.splits["train"]
        return train.boxes, torch.where(train.crowd, PAD, train.labels)

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor, Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:class:`BoxDataModule`'s standardisation; the crowd flags as they are."""
        x, boxes, labels, crowd = batch
        return (*super().on_after_batch_transfer((x, boxes, labels), dataloader_idx), crowd)
