"""Procedural shapes with boxes and classes: an object-detection problem that needs no files and
trains on a CPU in minutes (task=detection, model=fcos).

Every image has a textured, noisy background (as :mod:`ablab.data.shapes`) and 1 to
``max_objects`` shapes of four classes — ``disc``, ``square`` (rotated), ``triangle``
(equilateral, rotated) and ``ring`` (about 1 px wide) — drawn by
:func:`ablab.data.shapes.shape_masks`. Sizes are log-uniform between ``min_size`` and
``max_size`` (fractions of ``image_size``: 4 to 40 px at 64 px), so there are as many objects
between 4 and 8 px as between 20 and 40 px: small objects are frequent, and most of every image is
easy background. Objects are placed whole inside the image, larger ones first and each smaller one
drawn over them (so a small object is never hidden), and a placement that overlaps an earlier box
by IoU > ``max_overlap`` is drawn again (up to ``PLACEMENT_TRIES`` times, else the object is left
out). A box is the tight box of the shape's own pixels (x1, y1, x2, y2), in pixels with x2 = last
column + 1, as drawn.

Classes are drawn independently per object, uniformly, or with ``rare_class`` drawn
``rare_ratio`` times as often as each other class (a class-imbalance ablation; the training
split's box counts per class are logged as ``data.train_class_counts``). Colours are drawn
independently of the class.

Deterministic per index: image i of split s comes from its own generator seeded with
(``seed``, s, i), so a split's first images do not change with its size, and the splits never
share an image.

Batches (:class:`BoxDataModule`) are ``(x, boxes, labels)``: ``x`` float (N, C, H, W), ``boxes``
float (N, M, 4) and ``labels`` long (N, M), where M is the most objects an image of the data can
hold and ``labels == -1`` marks padding rows. Padded tensors rather than a list of per-image
dicts, so that the core's loaders (in-memory batches, the clean training subset, the device
transfer) carry them unchanged; :func:`unpad` gives the per-image lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ablab.data.base import ImageDataModule
from ablab.data.masks import NORMALIZE
from ablab.data.module import InMemory, SplitDataModule
from ablab.data.shapes import MIN_CONTRAST, shape_masks
from ablab.errors import ConfigError, unknown_choice
from ablab.ops import box_iou

#: Class names in label order (no background label: a box is always an object).
CLASS_NAMES = ("disc", "square", "triangle", "ring")
SPLITS = ("train", "val", "test")
#: Attempts at placing an object where it overlaps no earlier box too much.
PLACEMENT_TRIES = 20
#: Objects rasterised at once (bounds the memory of the (4, b, S, S) masks).
CHUNK = 1024
#: Padding label: a row of a batch that holds no box.
PAD = -1


def unpad(boxes: Tensor, labels: Tensor) -> list[dict[str, Tensor]]:
    """Per image ``{"boxes": (k, 4), "labels": (k,)}`` from padded (N, M, 4) and (N, M)."""
    return [
        {"boxes": b[y != PAD], "labels": y[y != PAD]} for b, y in zip(boxes, labels, strict=True)
    ]


def unpack(batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, boxes, labels, crowd)`` of a box batch: COCO's carries crowd flags (N, M), the
    procedural sets' none (then no row is a crowd)."""
    x, boxes, labels, *crowd = batch
    return x, boxes, labels, crowd[0] if crowd else torch.zeros_like(labels, dtype=torch.bool)


def pad(targets: Sequence[tuple[Tensor, Tensor]], rows: int) -> tuple[Tensor, Tensor]:
    """(N, rows, 4) boxes and (N, rows) labels (−1 below each image's own) from per-image pairs."""
    boxes = torch.zeros(len(targets), rows, 4)
    labels = torch.full((len(targets), rows), PAD, dtype=torch.long)
    for i, (b, y) in enumerate(targets):
        boxes[i, : len(b)], labels[i, : len(y)] = b, y
    return boxes, labels


class BoxDataModule(SplitDataModule):
    """Splits of (image, boxes, labels); images standardised on the device, boxes as they are.

    ``target = "boxes"`` is what task=detection checks; ``train_class_counts`` are boxes per
    class in the training split (after :meth:`setup`). No augmentation component: it would have
    to move the boxes with the image, which the image data's batch augmentations do not.
    """

    target: ClassVar[str] = "boxes"

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        normalize: bool | str = True,
        **kw: Any,
    ) -> None:
        """``normalize``: ``channel`` (true: the training split's per-channel mean and std) or
        ``none`` (false)."""
        super().__init__(**kw)
        if num_classes < 1:
            raise ConfigError(f"data.num_classes must be at least 1, got {num_classes}")
        if in_channels not in (1, 3):
            raise ConfigError(f"data.in_channels must be 1 or 3, got {in_channels}")
        if image_size < 8:
            raise ConfigError(f"data.image_size={image_size}: detection data needs at least 8 px")
        if isinstance(normalize, bool):
            normalize = "channel" if normalize else "none"
        if normalize not in NORMALIZE:
            raise unknown_choice("data.normalize", normalize, NORMALIZE)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.normalize = normalize
        self.class_names: list[str] = [str(c) for c in range(num_classes)]
        self.mean, self.std = torch.zeros(in_channels), torch.ones(in_channels)
        self.train_class_counts: list[int] | None = None

    def train_targets(self) -> tuple[Tensor, Tensor]:
        """The training split's padded boxes (N, M, 4) and labels (N, M), without its images:
        an in-memory split's tensors, or a file-backed one's ``boxes`` and ``labels``."""
        train = self.splits["train"]
        if isinstance(train, InMemory):
            return train.tensors[1], train.tensors[2]
        return train.boxes, train.labels

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        super().setup(stage)
        if self.normalize == "channel":
            self.mean, self.std = ImageDataModule.channel_stats(self.splits["train"])
        labels = self.train_targets()[1]
        self.train_class_counts = torch.bincount(
            labels[labels != PAD], minlength=self.num_classes
        ).tolist()

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x − mean) / std per channel with training-split statistics; boxes as they are."""
        x, boxes, labels = batch
        if self.normalize == "none":
            return x, boxes, labels
        mean = self.mean.to(x.device, x.dtype).view(1, -1, 1, 1)
        std = self.std.to(x.device, x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std, boxes, labels

    def example_input(self) -> Tensor:
        return torch.zeros(2, self.in_channels, self.image_size, self.image_size)

    def run_params(self) -> dict[str, Any]:
        """Boxes per class in the training split: how rare the rare class is."""
        counts = self.train_class_counts
        return {} if counts is None else {"data.train_class_counts": counts}


class ShapesDetDataModule(BoxDataModule):
    """Seeded random shapes with their boxes and classes; several per image, 4 to 40 px at 64 px."""

    def __init__(
        self,
        *,
        num_classes: int = len(CLASS_NAMES),
        in_channels: int = 3,
        image_size: int = 64,
        n_train: int = 2000,
        n_val: int = 500,
        n_test: int = 500,
        max_objects: int = 6,
        min_size: float = 0.0625,
        max_size: float = 0.625,
        max_overlap: float = 0.3,
        rare_class: str | None = None,
        rare_ratio: float = 0.1,
        pixel_noise: float = 0.05,
        texture: float = 0.15,
        normalize: bool | str = True,
        **kw: Any,
    ) -> None:
        """``min_size``/``max_size``: an object's size (its circumscribed circle's diameter) as a
        fraction of ``image_size``; ``max_overlap``: the largest IoU of a new box with an earlier
        one; ``rare_class``: a class drawn ``rare_ratio`` times as often as each other (null:
        all equally often); ``pixel_noise``, ``texture``: as data=shapes."""
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            normalize=normalize,
            **kw,
        )
        if num_classes != len(CLASS_NAMES):
            raise ConfigError(
                f"data.num_classes={num_classes} but data=shapes_det has {len(CLASS_NAMES)} "
                f"classes ({', '.join(CLASS_NAMES)}); use data.num_classes={len(CLASS_NAMES)}"
            )
        for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 1:
                raise ConfigError(f"data.{key} must be a positive number of images, got {n}")
        if max_objects < 1:
            raise ConfigError(f"data.max_objects={max_objects} must be at least 1")
        if not 0 < min_size <= max_size <= 1:
            raise ConfigError(
                f"data.min_size={min_size}, data.max_size={max_size}: sizes are fractions of the "
                "image with 0 < min_size <= max_size <= 1"
            )
        if min_size * image_size < 2:
            raise ConfigError(
                f"data.min_size={min_size} is {min_size * image_size:g} px at data.image_size="
                f"{image_size}; objects need at least 2 px"
            )
        if not 0 <= max_overlap <= 1:
            raise ConfigError(f"data.max_overlap={max_overlap} must be an IoU in [0, 1]")
        if rare_class is not None and rare_class not in CLASS_NAMES:
            raise unknown_choice("data.rare_class", rare_class, CLASS_NAMES)
        if not 0 < rare_ratio <= 1:
            raise ConfigError(f"data.rare_ratio={rare_ratio} must be in (0, 1]")
        if pixel_noise < 0 or texture < 0:
            raise ConfigError(
                f"data.pixel_noise={pixel_noise}, data.texture={texture} must be >= 0"
            )
        self.class_names = list(CLASS_NAMES)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.max_objects, self.min_size, self.max_size = max_objects, min_size, max_size
        self.max_overlap, self.pixel_noise, self.texture = max_overlap, pixel_noise, texture
        weights = torch.ones(len(CLASS_NAMES), dtype=torch.float64)
        if rare_class is not None:
            weights[CLASS_NAMES.index(rare_class)] = rare_ratio
        #: Probability of each class for every object.
        self.class_probs = weights / weights.sum()

    # -- generation ------------------------------------------------------------------------
    def image_rng(self, split: str, index: int) -> np.random.Generator:
        """The generator of image ``index`` of ``split``: seeded from (seed, split, index)."""
        return np.random.default_rng([self.seed, SPLITS.index(split), index])

    def layout(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One image's draws: background colour and texture, then per object (largest first)
        class, diameter, centre, angle and colour offset, and the pixel noise.

        A centre is redrawn while the object's geometric box (its circumscribed circle's for a
        disc or ring, the rotated vertices' for a square or triangle) overlaps an earlier one by
        IoU > ``max_overlap``; after ``PLACEMENT_TRIES`` the object is left out."""
        size, channels = self.image_size, self.in_channels
        count = int(rng.integers(1, self.max_objects + 1))
        classes = rng.choice(len(CLASS_NAMES), size=count, p=self.class_probs.numpy())
        low, high = math.log(self.min_size * size), math.log(self.max_size * size)
        diameters = np.sort(np.exp(rng.uniform(low, high, count)))[::-1]  # smaller ones on top
        angles = rng.uniform(0, 2 * math.pi, count)
        kept: list[int] = []
        centres, boxes = np.zeros((count, 2)), np.zeros((0, 4))
        for k in range(count):
            radius = diameters[k] / 2
            for _ in range(PLACEMENT_TRIES):
                centre = radius + (size - 2 * radius) * rng.random(2)  # (cy, cx): inside
                box = geometric_box(classes[k], centre, radius, angles[k])[None]
                if (
                    not len(boxes)
                    or float(box_iou(torch.from_numpy(box), torch.from_numpy(boxes)).max())
                    <= self.max_overlap
                ):
                    kept.append(k)
                    centres[k], boxes = centre, np.concatenate([boxes, box])
                    break
        return {
            "background": rng.random(channels),
            "field": rng.uniform(-1, 1, (channels, 4, 4)),
            "classes": classes[kept],
            "radii": diameters[kept] / 2,
            "centres": centres[kept],
            "angles": angles[kept],
            "offsets": MIN_CONTRAST + (1 - 2 * MIN_CONTRAST) * rng.random((len(kept), channels)),
            "noise": rng.standard_normal((channels, size, size)),
        }

    def build_split(self, split: str) -> InMemory:
        """Every image of ``split``: the draws per image (:meth:`layout`), then the drawing
        vectorised over images, one object slot at a time (slot k: each image's k-th object)."""
        n, size, slots = self.sizes[split], self.image_size, self.max_objects
        drawn = [self.layout(self.image_rng(split, i)) for i in range(n)]
        coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        yy, xx = yy[None], xx[None]  # (1, S, S): shape_masks broadcasts over (n, S, S)

        def stacked(key: str, fill: float = 0.0) -> Tensor:
            """(n, slots, ...) of a per-object draw, ``fill`` where an image has fewer objects."""
            shape = drawn[0][key].shape[1:]
            out = torch.full((n, slots, *shape), fill, dtype=torch.float32)
            for i, d in enumerate(drawn):
                out[i, : len(d[key])] = torch.from_numpy(np.asarray(d[key], dtype=np.float32))
            return out

        background = torch.from_numpy(np.stack([d["background"] for d in drawn])).float()
        field = torch.from_numpy(np.stack([d["field"] for d in drawn])).float()
        field = F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)
        images = background[:, :, None, None] + self.texture * field  # (n, C, S, S)
        classes = stacked("classes", PAD).long()  # (n, slots)
        radii, angles, offsets = stacked("radii"), stacked("angles"), stacked("offsets")
        centres = stacked("centres")  # (n, slots, 2) as (cy, cx)
        image_of, slot_of = (classes != PAD).nonzero(as_tuple=True)  # every object: (B,), (B,)
        inside = torch.cat([
            object_masks(yy, xx, classes[i, k], centres[i, k], radii[i, k], angles[i, k])
            for i, k in zip(image_of.split(CHUNK), slot_of.split(CHUNK), strict=True)
        ]) if len(image_of) else torch.zeros(0, size, size, dtype=torch.bool)  # fmt: skip
        boxes = torch.zeros(n, slots, 4)
        boxes[image_of, slot_of] = pixel_boxes(inside)
        # a sliver too thin to cover a pixel centre has no pixels, hence no box
        classes[image_of[~inside.flatten(1).any(1)], slot_of[~inside.flatten(1).any(1)]] = PAD
        for k in range(slots):  # in order: a later (smaller) object is drawn over earlier ones
            at = slot_of == k
            rows = image_of[at]
            colour = (background[rows] + offsets[rows, k]) % 1.0  # (b, C)
            images[rows] = torch.where(inside[at][:, None], colour[:, :, None, None], images[rows])
        noise = torch.from_numpy(np.stack([d["noise"] for d in drawn])).float()
        images = (images + self.pixel_noise * noise).clamp_(0.0, 1.0)
        return InMemory(images, boxes * (classes != PAD)[..., None], classes)

    def build_splits(self) -> dict[str, Dataset]:
        return {split: self.build_split(split) for split in SPLITS}


def geometric_box(cls: int, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """(x1, y1, x2, y2) of a shape of class ``cls`` with circumradius ``radius`` at ``centre``
    (cy, cx) rotated by ``angle``, as :func:`ablab.data.shapes.shape_masks` draws it: the
    circle's box for a disc or ring, the box of the rotated vertices for a square (at angles
    π/4 + kπ/2) or a triangle (at π/3, π, 5π/3, opposite its edge normals)."""
    cy, cx = centre
    name = CLASS_NAMES[cls]
    if name in ("disc", "ring"):
        return np.array([cx - radius, cy - radius, cx + radius, cy + radius])
    corners = (
        np.arange(4) * math.pi / 2 + math.pi / 4
        if name == "square"
        else (np.array([1, 3, 5]) * math.pi / 3)
    )
    # (u, v) = radius (cos φ, sin φ) in the shape's frame; x = u cos a − v sin a, y = u sin a + v cos a
    xs = cx + radius * np.cos(corners + angle)
    ys = cy + radius * np.sin(corners + angle)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def object_masks(
    yy: Tensor, xx: Tensor, classes: Tensor, centres: Tensor, radii: Tensor, angles: Tensor
) -> Tensor:
    """The pixels of b objects, (b, S, S) bool: each one's class picked from
    :func:`ablab.data.shapes.shape_masks` (its thin class drawn as a ring)."""
    ring = torch.ones(len(classes), dtype=torch.bool)
    masks = shape_masks(yy, xx, centres[:, 0], centres[:, 1], radii, angles, ring)  # (4, b, S, S)
    return masks[classes, torch.arange(len(classes))]


def pixel_boxes(inside: Tensor) -> Tensor:
    """The tight box (x1, y1, x2, y2) of each mask's pixels, (n, S, S) → (n, 4): x1 the first
    column with a pixel, x2 the last one + 1 (pixel edges); zeros for an empty mask."""
    size = inside.shape[-1]
    index = torch.arange(size)
    sides = []
    for hit in (inside.any(dim=1), inside.any(dim=2)):  # columns (x), then rows (y)
        first = torch.where(hit, index, size).amin(dim=1)
        last = torch.where(hit, index, -1).amax(dim=1) + 1
        sides.append((first, last))
    (x1, x2), (y1, y2) = sides
    box = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(inside.flatten(1).any(1, keepdim=True), box, 0.0)
