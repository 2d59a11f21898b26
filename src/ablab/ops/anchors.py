"""Anchor boxes by k-means over the training boxes' (width, height) pairs (Redmon & Farhadi 2017,
"YOLO9000: Better, Faster, Stronger", section "Dimension Clusters").

Boxes are compared as if they shared one centre, so only their shapes matter. YOLOv2's point is
the distance: with Euclidean distance large boxes make larger errors than small ones, so the
clusters spread over the few large boxes; d = 1 − IoU is scale-free and gives the anchors a
higher mean best IoU. ``distance`` switches between the two for that ablation.

Everything else is plain k-means: k-means++ seeding (Arthur & Vassilvitskii 2007), with
probability ∝ d² under the chosen distance, from a seeded generator; then Lloyd iterations,
each box assigned to its nearest centroid and each centroid moved to its members' mean (w, h).
The paper does not say how centroids are updated; the mean is standard k-means (a cluster left
empty keeps its centroid). With k = 1 there is nothing to assign, so under either distance the
one anchor is the mean (w, h) of all boxes.

The pieces are public so that ``task=anchors`` (:mod:`ablab.tasks.anchors`), which runs one Lloyd
step per training epoch, is this algorithm and not a copy of it: :func:`seed_anchors` (the
seeding), :func:`nearest_anchor` (the assignment), :func:`centroid_step` (the mean update) and
:func:`iou_wh` (the IoU of centre-aligned (w, h) pairs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ablab.errors import ConfigError, unknown_choice

DISTANCES = ("iou", "euclidean")


class KMeansAnchors(NamedTuple):
    """k anchors (k, 2) as (w, h) by increasing area, and the boxes' mean IoU with their best anchor."""

    anchors: Tensor
    mean_iou: float


def kmeans_anchors(
    wh: Tensor, k: int, distance: str = "iou", seed: int = 0, iters: int = 300
) -> KMeansAnchors:
    """k-means over (w, h) pairs (N, 2) with d = 1 − IoU (centre-aligned) or Euclidean d; at most
    ``iters`` Lloyd steps, fewer when no box changes cluster."""
    if distance not in DISTANCES:
        raise unknown_choice("k-means distance", distance, DISTANCES)
    if wh.dim() != 2 or wh.shape[1] != 2:
        raise ConfigError(f"wh must have shape (N, 2) as (width, height), got {tuple(wh.shape)}")
    if not (wh > 0).all():
        raise ConfigError("kmeans_anchors: every box needs width > 0 and height > 0")
    if iters < 0:
        raise ConfigError(f"kmeans_anchors: iters={iters} must be >= 0 (0 is the seeding alone)")
    # float64 on the CPU: small, and seeded sampling and argmin ties then repeat exactly.
    points = wh.detach().to("cpu", torch.float64)  # (N, 2)
    n_distinct = len(torch.unique(points, dim=0))
    if not 1 <= k <= n_distinct:
        raise ConfigError(
            f"kmeans_anchors: k={k} must be between 1 and the {n_distinct} distinct (w, h) pairs"
        )

    centroids = seed_anchors(points, k, distance, seed)  # (k, 2)
    assignment = None
    for _ in range(iters):
        nearest = nearest_anchor(points, centroids, distance)  # (N,)
        if assignment is not None and torch.equal(nearest, assignment):
            break
        assignment = nearest
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)  # (k, 2)
        counts = torch.bincount(assignment, minlength=k)  # (k,)
        centroids = centroid_step(centroids, sums, counts)

    centroids = centroids[torch.argsort(centroids.prod(dim=1), stable=True)]  # by area
    mean_iou = float(iou_wh(points, centroids).max(dim=1).values.mean())
    dtype = wh.dtype if wh.is_floating_point() else torch.get_default_dtype()
    return KMeansAnchors(centroids.to(wh.device, dtype), mean_iou)


def seed_anchors(wh: Tensor, k: int, distance: str = "iou", seed: int = 0) -> Tensor:
    """k-means++ on (w, h) pairs (N, 2) → k centroids (k, 2), in draw order: the first uniformly
    among the boxes, each next one with probability ∝ d² to its nearest centroid so far (a box
    equal to a centroid is never drawn again), from a CPU generator seeded with ``seed`` (give
    float64 CPU pairs, as :func:`kmeans_anchors` does, for draws that repeat exactly). Needs
    1 <= k <= the distinct pairs (:func:`kmeans_anchors` checks it)."""
    if distance not in DISTANCES:
        raise unknown_choice("k-means distance", distance, DISTANCES)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(len(wh), (1,), generator=generator)
    centroids = wh[first]  # (1, 2)
    for _ in range(k - 1):
        d2 = _distance(wh, centroids, distance).min(dim=1).values ** 2  # (N,)
        pick = torch.multinomial(d2, 1, generator=generator)
        centroids = torch.cat([centroids, wh[pick]])
    return centroids


def nearest_anchor(wh: Tensor, anchors: Tensor, distance: str = "iou") -> Tensor:
    """Lloyd's assignment: the index of each box's nearest anchor under ``distance``, (N, 2),
    (k, 2) → (N,) (ties: the lowest index)."""
    if distance not in DISTANCES:
        raise unknown_choice("k-means distance", distance, DISTANCES)
    return _distance(wh, anchors, distance).argmin(dim=1)


def centroid_step(centroids: Tensor, sums: Tensor, counts: Tensor) -> Tensor:
    """Lloyd's update: each centroid (k, 2) moved to its members' mean (w, h), sums (k, 2) /
    counts (k,); a cluster left empty keeps its centroid. A new tensor."""
    moved = centroids.clone()
    filled = counts > 0
    moved[filled] = sums[filled] / counts[filled, None]
    return moved


def _distance(points: Tensor, centroids: Tensor, distance: str) -> Tensor:
    """d between each box and each centroid: (N, 2), (k, 2) → (N, k)."""
    if distance == "iou":
        return 1 - iou_wh(points, centroids)
    # Not torch.cdist: for many points it switches to a matrix-product form that rounds differently.
    return (points[:, None] - centroids[None]).pow(2).sum(dim=2).sqrt()


def iou_wh(wh1: Tensor, wh2: Tensor) -> Tensor:
    """IoU of boxes sharing one centre: min(w) min(h) / (w₁h₁ + w₂h₂ − min(w) min(h)); (N, 2),
    (k, 2) → (N, k)."""
    inter = torch.min(wh1[:, None], wh2[None]).prod(dim=2)  # (N, k)
    return inter / (wh1.prod(dim=1)[:, None] + wh2.prod(dim=1)[None] - inter)


#: The name tests/ops/test_anchors.py imports (before :func:`iou_wh` was public).
_iou_wh = iou_wh
