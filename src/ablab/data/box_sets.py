"""Seeded procedural sets of boxes without images, for anchor clustering (``task=anchors``): a box
distribution whose skew toward small or large boxes is one switch, to test YOLOv2's claim that
k-means with Euclidean distance spends its anchors on the large boxes (Redmon & Farhadi 2017,
"YOLO9000: Better, Faster, Stronger", section "Dimension Clusters").

A box's scale s = √(w·h), as a fraction of ``image_size``, is log-spaced between ``min_size``
and ``max_size`` with a Beta-distributed position:

    s = min_size · (max_size / min_size)^u,   u ~ Beta(a, b)

``skew`` picks (a, b): ``uniform`` (1, 1), log-uniform scales (as ``data=shapes_det``'s
diameters); ``small`` (1, c), most boxes near ``min_size`` (the median u is 1 − 2^(−1/c), 0.21
at c = 3); ``large`` (c, 1), its mirror image, most boxes near ``max_size``; c is
``skew_strength``. The aspect ratio r = w/h is log-normal, log r ~ N(0, ``aspect_sigma``²),
and w = s·√r, h = s/√r in pixels of ``image_size``, each side capped at the image's (a box
cannot be wider than its image; only a large, elongated box is capped). The box is placed
uniformly where it lies whole inside the image (its position does not matter to anchors).

Box i of split s is drawn from row i of a (n, 4) block of uniforms from a generator seeded with
(``seed``, s), through inverse cdfs (Beta, normal): a split's first boxes do not change with its
size, and the splits share no draw.

Batches are :class:`ablab.data.shapes_det.BoxDataModule`'s, one box per example: ``(x, boxes,
labels)`` with ``x`` a zero-size placeholder (N, 0) (there is no image), ``boxes`` float (N, 1, 4)
as (x1, y1, x2, y2) in pixels and ``labels`` long (N, 1), all 0 (one class, ``box``). So a task
reads them as it reads detection data; :meth:`BoxSetsDataModule.train_targets` gives the training
split's boxes and labels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from scipy import special
from torch import Tensor
from torch.utils.data import Dataset

from ablab.data.module import InMemory, SplitDataModule
from ablab.errors import ConfigError, unknown_choice

SPLITS = ("train", "val", "test")
SKEWS = ("small", "large", "uniform")
#: The one class of every box.
CLASS_NAMES = ("box",)


def beta_parameters(skew: str, strength: float) -> tuple[float, float]:
    """(a, b) of the Beta distribution of u, the box scale's position on the log scale."""
    return {"small": (1.0, strength), "large": (strength, 1.0), "uniform": (1.0, 1.0)}[skew]


class BoxSetsDataModule(SplitDataModule):
    """Seeded boxes of scale s = min · (max/min)^u, u ~ Beta, and log-normal aspect; no images."""

    #: What a task that reads boxes checks (task=anchors); task=detection also needs images.
    target: ClassVar[str] = "boxes"

    def __init__(
        self,
        *,
        num_classes: int = 1,
        image_size: int = 64,
        n_train: int = 2000,
        n_val: int = 1000,
        n_test: int = 1000,
        min_size: float = 0.05,
        max_size: float = 0.8,
        skew: str = "uniform",
        skew_strength: float = 3.0,
        aspect_sigma: float = 0.5,
        **kw: Any,
    ) -> None:
        """``min_size``/``max_size``: the box scale √(w·h) as a fraction of ``image_size``;
        ``skew``: small | large | uniform (see the module docstring), ``skew_strength`` its
        Beta's c; ``aspect_sigma``: the standard deviation of log(w/h)."""
        super().__init__(**kw)
        if num_classes != len(CLASS_NAMES):
            raise ConfigError(
                f"data.num_classes={num_classes} but data=box_sets has one class (box); "
                "use data.num_classes=1"
            )
        if image_size < 8:
            raise ConfigError(f"data.image_size={image_size}: boxes need an image of at least 8 px")
        for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n < 1:
                raise ConfigError(f"data.{key} must be a positive number of boxes, got {n}")
        if not 0 < min_size <= max_size <= 1:
            raise ConfigError(
                f"data.min_size={min_size}, data.max_size={max_size}: box scales are fractions of "
                "the image with 0 < min_size <= max_size <= 1"
            )
        if skew not in SKEWS:
            raise unknown_choice("data.skew", skew, SKEWS)
        if not skew_strength >= 1:
            raise ConfigError(
                f"data.skew_strength={skew_strength} must be >= 1 (1: no skew; 3: median position "
                "0.21 of the way from min_size to max_size, on the log scale)"
            )
        if not aspect_sigma >= 0:
            raise ConfigError(f"data.aspect_sigma={aspect_sigma} must be >= 0 (0: square boxes)")
        self.num_classes, self.image_size = num_classes, image_size
        self.class_names = list(CLASS_NAMES)
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.min_size, self.max_size = min_size, max_size
        self.skew, self.skew_strength, self.aspect_sigma = skew, skew_strength, aspect_sigma

    def draw(self, split: str) -> Tensor:
        """The boxes of ``split``, (n, 4) float32 as (x1, y1, x2, y2) in pixels."""
        n, size = self.sizes[split], self.image_size
        rng = np.random.default_rng([self.seed, SPLITS.index(split)])
        uniform = rng.random((n, 4))  # per box: scale, aspect, x, y
        a, b = beta_parameters(self.skew, self.skew_strength)
        u = special.betaincinv(a, b, uniform[:, 0])
        scale = self.min_size * (self.max_size / self.min_size) ** u * size
        log_ratio = self.aspect_sigma * special.ndtri(uniform[:, 1])
        w = np.minimum(scale * np.exp(log_ratio / 2), size)
        h = np.minimum(scale * np.exp(-log_ratio / 2), size)
        x1, y1 = uniform[:, 2] * (size - w), uniform[:, 3] * (size - h)
        return torch.from_numpy(np.stack([x1, y1, x1 + w, y1 + h], axis=1)).float()

    def build_splits(self) -> dict[str, Dataset]:
        splits = {}
        for split in SPLITS:
            boxes = self.draw(split)[:, None]  # (n, 1, 4): one box per example
            n = len(boxes)
            splits[split] = InMemory(torch.zeros(n, 0), boxes, torch.zeros(n, 1, dtype=torch.long))
        return splits

    def train_targets(self) -> tuple[Tensor, Tensor]:
        """The training split's boxes (N, 1, 4) and labels (N, 1), as
        :meth:`ablab.data.shapes_det.BoxDataModule.train_targets` gives them."""
        self.setup()
        train = self.splits["train"]
        return train.tensors[1], train.tensors[2]

    def example_input(self) -> Tensor:
        raise ConfigError(
            "data=box_sets has boxes and no images: no network can take it; it is for "
            "task=anchors (detection needs data=shapes_det|coco_json)"
        )
