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
  width or height is dropped. Crowd annotations (``iscrowd: 1``, a region of many objects) are
  dropped too: COCO's evaluation matches them to nothing.
- Classes: the categories of the training file, by increasing id, become labels 0..K−1 (COCO's 80
  ids run from 1 to 90 with gaps), named by their ``name``; ``num_classes`` must equal K (checked
  at setup). Every split must use the training file's categories.
- Images without annotations are kept: they are negatives only.

Images are decoded lazily, one per ``__getitem__`` (in DataLoader workers), converted to
``in_channels``, resized (bilinear, antialiased) and scaled to [0, 1]; the annotations are read
once, at setup, into padded tensors (:class:`~ablab.data.shapes_det.BoxDataModule`), so the boxes
are known without decoding any image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ablab.data.shapes_det import BoxDataModule, pad
from ablab.errors import ConfigError


class CocoImages(Dataset):
    """(image, boxes, labels) per image: image float (C, S, S) in [0, 1], boxes (M, 4) and labels
    (M,) padded with −1, M the most boxes of any image of the data."""

    def __init__(
        self, paths: list[Path], boxes: Tensor, labels: Tensor, in_channels: int, size: int
    ) -> None:
        self.paths, self.boxes, self.labels = paths, boxes, labels
        self.in_channels, self.size = in_channels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        with Image.open(self.paths[index]) as image:
            pixels = TF.pil_to_tensor(image.convert("L" if self.in_channels == 1 else "RGB"))
        pixels = TF.resize(pixels, [self.size, self.size], antialias=True)
        return pixels.float().div_(255.0), self.boxes[index], self.labels[index]


class CocoJsonDataModule(BoxDataModule):
    """A COCO instances JSON per split and a folder of images; boxes xyxy in resized pixels."""

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

    def read(self, split: str) -> dict[str, Any]:
        annotations, _ = self.files[split]
        path = self.root / annotations
        if not path.is_file():
            raise ConfigError(
                f"data.{split}_annotations: no COCO annotation file at {path} (data.root="
                f"{self.root})"
            )
        try:
            content = json.loads(path.read_text())
            return {key: content[key] for key in ("images", "annotations", "categories")}
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(
                f"{path} is not a COCO instances file (images, annotations, categories): {err}"
            ) from None

    def build_splits(self) -> dict[str, Dataset]:
        content = {split: self.read(split) for split in self.files}
        categories = sorted(content["train"]["categories"], key=lambda c: c["id"])
        if len(categories) != self.num_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {self.root / self.files['train'][0]} "
                f"has {len(categories)} categories; use data.num_classes={len(categories)}"
            )
        label_of = {c["id"]: label for label, c in enumerate(categories)}
        self.class_names = [str(c["name"]) for c in categories]
        parsed = {split: self.parse(split, content[split], label_of) for split in self.files}
        rows = max([1, *(len(b) for _, targets in parsed.values() for b, _ in targets)])
        splits = {}
        for split, (paths, targets) in parsed.items():
            boxes, labels = pad(targets, rows)
            splits[split] = CocoImages(paths, boxes, labels, self.in_channels, self.image_size)
        return splits

    def parse(
        self, split: str, content: dict[str, Any], label_of: dict[int, int]
    ) -> tuple[list[Path], list[tuple[Tensor, Tensor]]]:
        """Image paths and, per image, boxes (k, 4) xyxy scaled to ``image_size`` and labels."""
        folder = self.root / self.files[split][1]
        per_image: dict[int, list[tuple[list[float], int]]] = {
            image["id"]: [] for image in content["images"]
        }
        for note in content["annotations"]:
            if note.get("iscrowd", 0):
                continue
            if note["category_id"] not in label_of:
                raise ConfigError(
                    f"{self.files[split][0]}: category_id {note['category_id']} is not a category "
                    f"of the training file ({', '.join(map(str, label_of))})"
                )
            per_image[note["image_id"]].append((note["bbox"], label_of[note["category_id"]]))
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
            kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            targets.append((boxes[kept], labels[kept]))
        return paths, targets
