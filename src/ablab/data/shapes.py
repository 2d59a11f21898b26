"""Procedural shapes with per-pixel class masks: a segmentation problem that needs no files and
trains on one CPU core in under two minutes (model=unet, the trainer defaults).

Every image has a background and 1 to ``max_shapes`` shapes, each of a class drawn uniformly:
``disc``, ``square`` (rotated), ``triangle`` (equilateral, rotated) and ``thin`` — a ring or a
line segment about 1 px wide, the structure that pooling loses and a U-Net's skips should bring
back (the ``unet_skips`` study reads ``iou/thin``). Sizes, positions, angles and colours are
random; a later shape occludes earlier ones, and the mask follows (a pixel has the class of the
last shape drawn over it). Colours are drawn independently of the class — only shape tells the
classes apart — at least 0.3 away from the background's in every channel, so every shape is
visible. The background is the image's own colour plus a smooth random texture (amplitude
``texture``), and every pixel gets Gaussian noise (std ``pixel_noise``); values are clipped to [0, 1].

Images are generated with vectorised tensor ops on coordinate grids (one pass per shape slot over
the whole split) and held in memory: ``(x, mask)`` with ``x`` float (N, C, H, W) and ``mask``
long (N, H, W). Splits are drawn from one generator seeded with ``seed`` — test, then validation,
then training — so the held-out sets do not change with ``n_train``. As all segmentation data
(:mod:`ablab.data.masks`), images are standardised on the device with the training split's channel
statistics (``normalize``), the mask is never touched, and there is no augmentation component
(it would have to move the mask with the image).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ablab.data.masks import MaskDataModule
from ablab.data.module import InMemory
from ablab.errors import ConfigError

#: Class names in class-index order; 0 is the background.
CLASS_NAMES = ("background", "disc", "square", "triangle", "thin")
SPLIT_ORDER = ("test", "val", "train")
#: Half the width of a thin stroke, in pixels: a pixel is on a ring or line within this distance
#: of it, so strokes are 1-2 px wide.
THIN_HALF_WIDTH = 0.6
#: Least difference, in every channel, between a shape's colour and the background's.
MIN_CONTRAST = 0.3


class ShapesDataModule(MaskDataModule):
    """Seeded random shapes on textured, noisy backgrounds; the target is each pixel's class."""

    name = "shapes"

    def __init__(
        self,
        *,
        num_classes: int = len(CLASS_NAMES),
        in_channels: int = 3,
        image_size: int = 32,
        n_train: int = 512,
        n_val: int = 256,
        n_test: int = 256,
        max_shapes: int = 4,
        min_size: float = 0.12,
        max_size: float = 0.3,
        pixel_noise: float = 0.05,
        texture: float = 0.15,
        normalize: bool | str = True,
        **kw: Any,
    ) -> None:
        """``min_size``/``max_size``: a shape's radius as a fraction of ``image_size``;
        ``pixel_noise``: the std of the per-pixel Gaussian noise; ``texture``: the amplitude of the
        background's smooth texture; ``normalize``: as :class:`MaskDataModule`'s."""
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            normalize=normalize,
            **kw,
        )
        if num_classes != len(CLASS_NAMES):
            raise ConfigError(
                f"data.num_classes={num_classes} but data=shapes has {len(CLASS_NAMES)} classes "
                f"({', '.join(CLASS_NAMES)}); use data.num_classes={len(CLASS_NAMES)}"
            )
        if image_size < 8:
            raise ConfigError(f"data.image_size={image_size}: shapes need at least 8 px")
        for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 1:
                raise ConfigError(f"data.{key} must be a positive number of images, got {n}")
        if max_shapes < 1:
            raise ConfigError(f"data.max_shapes={max_shapes} must be at least 1")
        if not 0 < min_size <= max_size <= 0.5:
            raise ConfigError(
                f"data.min_size={min_size}, data.max_size={max_size}: radii are fractions of the "
                "image with 0 < min_size <= max_size <= 0.5"
            )
        if pixel_noise < 0 or texture < 0:
            raise ConfigError(
                f"data.pixel_noise={pixel_noise}, data.texture={texture} must be >= 0"
            )
        self.class_names = list(CLASS_NAMES)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.max_shapes, self.min_size, self.max_size = max_shapes, min_size, max_size
        self.pixel_noise, self.texture = pixel_noise, texture
        #: Pixels of each class in the training split, after :meth:`setup` (class-count losses).
        self.train_class_counts: list[int] | None = None

    # -- generation ------------------------------------------------------------------------
    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` images (n, C, H, W) in [0, 1] and their masks (n, H, W), drawn from
        ``generator``: background and texture, then ``max_shapes`` slots drawn in order (slot k
        is used in an image with more than k shapes), then noise."""
        size, channels, g = self.image_size, self.in_channels, generator
        # Pixel centres, (1, H, W) each: every shape test broadcasts over (n, H, W).
        coords = torch.arange(size, dtype=torch.float32) + 0.5
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        yy, xx = yy[None], xx[None]
        background = torch.rand(n, channels, 1, 1, generator=g)
        # Smooth texture: 4x4 random values per channel, bilinearly up-sampled to the image.
        field = torch.rand(n, channels, 4, 4, generator=g) * 2 - 1
        field = F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)
        image = (background + self.texture * field).expand(n, channels, size, size).clone()
        mask = torch.zeros(n, size, size, dtype=torch.long)
        count = torch.randint(1, self.max_shapes + 1, (n,), generator=g)
        for slot in range(self.max_shapes):
            cls = torch.randint(1, len(CLASS_NAMES), (n,), generator=g)
            spread = self.max_size - self.min_size
            radius = size * (self.min_size + spread * torch.rand(n, generator=g))
            cy, cx = (torch.rand(2, n, generator=g) * 0.8 + 0.1) * size  # centres off the border
            angle = torch.rand(n, generator=g) * 2 * math.pi
            ring = torch.rand(n, generator=g) < 0.5  # a thin shape: a ring, else a line
            # At least MIN_CONTRAST from the background in every channel, uniform otherwise.
            offset = MIN_CONTRAST + (1 - 2 * MIN_CONTRAST) * torch.rand(n, channels, generator=g)
            colour = (background[:, :, 0, 0] + offset) % 1.0
            inside = shape_masks(yy, xx, cy, cx, radius, angle, ring)  # (classes−1, n, H, W)
            drawn = inside.gather(0, (cls - 1).view(1, n, 1, 1).expand(1, n, size, size))[0]
            drawn &= (count > slot).view(n, 1, 1)
            mask = torch.where(drawn, cls.view(n, 1, 1), mask)  # later shapes occlude earlier
            image = torch.where(drawn[:, None], colour[:, :, None, None], image)
        image = image + self.pixel_noise * torch.randn(image.shape, generator=g)
        return image.clamp_(0.0, 1.0), mask

    # -- splits and transfer -------------------------------------------------------------------
    def build_splits(self) -> dict[str, Dataset]:
        generator = torch.Generator().manual_seed(self.seed)
        drawn = {split: self.generate(self.sizes[split], generator) for split in SPLIT_ORDER}
        return {split: InMemory(x, mask) for split, (x, mask) in drawn.items()}

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        super().setup(stage)
        mask = self.splits["train"].tensors[1]
        self.train_class_counts = torch.bincount(
            mask.flatten(), minlength=self.num_classes
        ).tolist()

    def run_params(self) -> dict[str, Any]:
        """Pixels per class in the training split: how rare the thin class is."""
        counts = self.train_class_counts
        return {} if counts is None else {"data.train_class_counts": counts}


def shape_masks(
    yy: Tensor, xx: Tensor, cy: Tensor, cx: Tensor, radius: Tensor, angle: Tensor, ring: Tensor
) -> Tensor:
    """Pixels inside each class's shape, (4, n, H, W) bool, for n shapes of circumradius
    ``radius`` centred at (cy, cx) and rotated by ``angle``: disc, square, triangle, thin.

    In the shape's rotated frame (u, v): disc u² + v² ≤ r²; square |u|, |v| ≤ r/√2 (corners on
    the circle); equilateral triangle (p − c)·n_k ≤ r/2 for its three edge normals n_k at
    2πk/3 in that frame (inradius r/2); thin: |‖p − c‖ − r| ≤ w (a ring) or, for a line, the distance
    to the segment of half-length r along the angle ≤ w, with w = ``THIN_HALF_WIDTH``.
    """
    view = (-1, 1, 1)
    dy, dx = yy - cy.view(view), xx - cx.view(view)
    r, cos, sin = radius.view(view), angle.cos().view(view), angle.sin().view(view)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos  # rotated coordinates
    dist = (u.square() + v.square()).sqrt()
    disc = dist <= r
    half = r / math.sqrt(2)
    square = (u.abs() <= half) & (v.abs() <= half)
    # The edge normals at 0, 2π/3, 4π/3 in the rotated frame: (n, H, W, 3) offsets along them.
    normals = torch.arange(3) * (2 * math.pi / 3)
    along = u[..., None] * normals.cos() + v[..., None] * normals.sin()
    triangle = (along <= r[..., None] / 2).all(dim=-1)
    on_ring = (dist - r).abs() <= THIN_HALF_WIDTH
    on_line = (u.abs() <= r) & (v.abs() <= THIN_HALF_WIDTH)
    thin = torch.where(ring.view(view), on_ring, on_line)
    return torch.stack([disc, square, triangle, thin])
