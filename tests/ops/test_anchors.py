"""ablab.ops.kmeans_anchors: YOLOv2's claim (1 − IoU beats Euclidean on mean best IoU when most
boxes are small), determinism by seed, k = 1, convergence, and its one-line errors."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tv

from ablab.errors import ConfigError
from ablab.ops import kmeans_anchors
from ablab.ops.anchors import DISTANCES, _iou_wh


def skewed_wh(seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """900 small boxes (sides 4–40 px) and 100 large ones (100–400 px): (1000, 2)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(900, 2, generator=g, dtype=torch.float64) * 36 + 4
    large = torch.rand(100, 2, generator=g, dtype=torch.float64) * 300 + 100
    return torch.cat([small, large]).to(dtype)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_distance_beats_euclidean_on_small_boxes(seed: int) -> None:
    wh = skewed_wh(seed)
    by_iou = kmeans_anchors(wh, k=5, distance="iou", seed=seed)
    by_euclid = kmeans_anchors(wh, k=5, distance="euclidean", seed=seed)
    assert by_iou.mean_iou > by_euclid.mean_iou + 0.03  # 0.06–0.14 at these seeds
    # Euclidean spends most anchors on the 10% of large boxes.
    assert (by_euclid.anchors.prod(dim=1) > 100**2).sum() > (
        by_iou.anchors.prod(dim=1) > 100**2
    ).sum()


@pytest.mark.parametrize("distance", DISTANCES)
def test_same_seed_same_anchors(distance: str) -> None:
    wh = skewed_wh(3)
    first, again = kmeans_anchors(wh, 6, distance, seed=7), kmeans_anchors(wh, 6, distance, seed=7)
    assert torch.equal(first.anchors, again.anchors) and first.mean_iou == again.mean_iou


@pytest.mark.parametrize("distance", DISTANCES)
def test_one_anchor_is_the_mean_box(distance: str) -> None:
    wh = skewed_wh(4)
    anchors, mean_iou = kmeans_anchors(wh, 1, distance)
    torch.testing.assert_close(anchors, wh.mean(dim=0, keepdim=True))
    assert mean_iou == pytest.approx(_iou_wh(wh, anchors).mean().item())


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anchors_are_a_converged_clustering(distance: str, dtype: torch.dtype) -> None:
    wh = skewed_wh(5, dtype)
    anchors, mean_iou = kmeans_anchors(wh, 5, distance, seed=1)
    assert anchors.shape == (5, 2) and anchors.dtype == dtype
    areas = anchors.prod(dim=1)
    assert (areas[1:] >= areas[:-1]).all()  # sorted by area
    # A fixed point of Lloyd's step: every anchor is the mean of the boxes nearest to it.
    wh64, anchors64 = wh.double(), anchors.double()
    if distance == "iou":
        nearest = _iou_wh(wh64, anchors64).argmax(dim=1)
    else:
        nearest = torch.cdist(wh64, anchors64).argmin(dim=1)
    for j in range(5):
        torch.testing.assert_close(anchors64[j], wh64[nearest == j].mean(dim=0))
    assert mean_iou == pytest.approx(_iou_wh(wh64, anchors64).max(dim=1).values.mean().item())


def test_centred_iou_is_box_iou_of_centred_boxes() -> None:
    wh, anchors = skewed_wh(6)[:50], skewed_wh(7)[:8]
    centred = lambda sides: torch.cat([-sides / 2, sides / 2], dim=1)  # noqa: E731
    torch.testing.assert_close(_iou_wh(wh, anchors), tv.box_iou(centred(wh), centred(anchors)))


def test_as_many_anchors_as_distinct_boxes_gives_the_boxes() -> None:
    distinct = torch.tensor([[10.0, 20.0], [30.0, 30.0], [5.0, 5.0]])
    wh = distinct.repeat(4, 1)  # 12 boxes, 3 distinct shapes
    anchors, mean_iou = kmeans_anchors(wh, 3)
    assert anchors.tolist() == [[5.0, 5.0], [10.0, 20.0], [30.0, 30.0]]
    assert mean_iou == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 4}, r"k=4 must be between 1 and the 3 distinct \(w, h\) pairs"),
        ({"k": 0}, r"k=0 must be between 1 and the 3 distinct"),
        ({"k": 2, "distance": "iuo"}, r"unknown k-means distance 'iuo' \(did you mean 'iou'\?\)"),
        ({"k": 2, "iters": -1}, r"iters=-1 must be >= 0"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict, message: str) -> None:
    wh = torch.tensor([[10.0, 20.0], [30.0, 30.0], [5.0, 5.0]]).repeat(2, 1)
    with pytest.raises(ConfigError, match=message) as error:
        kmeans_anchors(wh, **kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("wh", "message"),
    [(torch.ones(4, 3), r"shape \(N, 2\)"), (torch.tensor([[1.0, 2.0], [0.0, 3.0]]), "width > 0")],
)
def test_bad_boxes_are_one_line_errors(wh: torch.Tensor, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        kmeans_anchors(wh, 1)
