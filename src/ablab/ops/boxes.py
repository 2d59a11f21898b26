"""Box geometry and non-maximum suppression on (N, 4) boxes in (x1, y1, x2, y2) coordinates.

Coordinates are continuous: a box's area is (x2 − x1)(y2 − y1), with no "+1 pixel" (that
convention belongs to inclusive integer pixel indices, and on float boxes it inflates every area).

- IoU (the Jaccard index) and GIoU, generalised IoU (Rezatofighi et al. 2019, "Generalized
  Intersection over Union"): GIoU = IoU − |C \\ (A ∪ B)| / |C|, C the smallest box enclosing A and
  B, so disjoint boxes are still ranked by how far apart they are (GIoU ∈ (−1, 1]).
- Greedy NMS, the usual detector post-processing and torchvision's rule: take the highest-scoring
  box left, keep it, drop every remaining box whose IoU with it is > the threshold (not ≥),
  repeat. ``batched_nms`` does the same within each class.

Degenerate boxes: a 0/0 ratio counts as 0, so a zero-area box has IoU 0 with everything
(torchvision gives NaN when both boxes have zero area) and its GIoU penalty is 0 when the
enclosing box has zero area too. NMS keeps the same boxes as torchvision either way, since NaN
is not > any threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ablab.errors import ConfigError


def box_area(boxes: Tensor) -> Tensor:
    """(x2 − x1)(y2 − y1) for each of the N boxes: (N, 4) → (N,)."""
    boxes = _checked(boxes, "boxes")
    return _area(boxes)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """|A ∩ B| / |A ∪ B| for every pair: (N, 4), (M, 4) → (N, M)."""
    boxes1, boxes2 = _checked(boxes1, "boxes1"), _checked(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    return _ratio(inter, union)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU − (|C| − |A ∪ B|) / |C|, C the smallest box enclosing A and B: (N, 4), (M, 4) → (N, M)."""
    boxes1, boxes2 = _checked(boxes1, "boxes1"), _checked(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    hull = (bottom_right - top_left).prod(dim=2)  # (N, M); valid boxes: never negative
    return _ratio(inter, union) - _ratio(hull - union, hull)


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of each matched pair (A_i, B_i): (N, 4), (N, 4) → (N,), the diagonal of
    :func:`generalized_box_iou` without its N x N matrix (a loss over matched boxes)."""
    boxes1, boxes2 = _checked(boxes1, "boxes1"), _checked(boxes2, "boxes2")
    if len(boxes1) != len(boxes2):
        raise ConfigError(f"paired boxes must match in number, got {len(boxes1)} and {len(boxes2)}")
    wh = torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])
    inter = wh.clamp(min=0).prod(dim=1)  # (N,); disjoint boxes overlap by 0
    union = _area(boxes1) + _area(boxes2) - inter
    hull = torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])
    hull = hull.prod(dim=1)
    return _ratio(inter, union) - _ratio(hull - union, hull)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_kept: int | None = None) -> Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score; a box is dropped when its IoU
    with a kept higher-scoring box is > ``iou_threshold``. ``max_kept``: stop after that many
    (the first ``max_kept`` of the full result: a kept box depends on higher-scoring ones only).

    Equal scores are taken in index order (a stable sort), as torchvision's CPU kernel does; its
    CUDA kernel does not promise an order, this function gives the same one on every device.
    """
    boxes = _checked(boxes, "boxes")
    _check_scores(scores, len(boxes), "scores")
    return _greedy_nms(boxes, scores, None, iou_threshold, max_kept)


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float,
    max_kept: int | None = None,
) -> Tensor:
    """Greedy NMS within each class (boxes of different classes never suppress each other):
    indices of the kept boxes, by decreasing score, equal scores in index order; ``max_kept``:
    the first that many of them, found without suppressing the rest (a detector keeps 100 of
    1,000 candidates: its loop then runs 100 times, not once per surviving box).

    torchvision keeps the same boxes; above 1000 boxes on CPU it runs class by class and merges
    with an unstable sort, so there its order of equal scores can differ from this one.
    """
    boxes = _checked(boxes, "boxes")
    _check_scores(scores, len(boxes), "scores")
    _check_scores(classes, len(boxes), "classes")
    return _greedy_nms(boxes, scores, classes, iou_threshold, max_kept)


def _greedy_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor | None,
    iou_threshold: float,
    max_kept: int | None = None,
) -> Tensor:
    """One pass per kept box: the best box left is kept and every remaining box it overlaps by
    more than the threshold (in its class, if classes are given) is removed in one vector op."""
    if max_kept is not None and max_kept < 0:
        raise ConfigError(f"max_kept={max_kept} must be >= 0 (or None: every kept box)")
    # Stable: equal scores in index order, the same on CPU and GPU.
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,)
    areas = _area(boxes)  # (N,)
    kept = [order[:0]]  # torch.cat needs one tensor even when there are no boxes
    limit = len(order) if max_kept is None else max_kept
    while order.numel() > 0 and len(kept) - 1 < limit:
        best, rest = order[:1], order[1:]  # (1,), (R,)
        kept.append(best)
        inter, union = _inter_union(boxes[best], boxes[rest], areas[best], areas[rest])
        suppressed = _ratio(inter, union)[0] > iou_threshold  # (1, R) → (R,)
        if classes is not None:
            suppressed &= classes[rest] == classes[best]
        order = rest[~suppressed]
    return torch.cat(kept)


def _inter_union(
    boxes1: Tensor, boxes2: Tensor, area1: Tensor | None = None, area2: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Intersection and union areas of every pair: (N, 4), (M, 4) → (N, M), (N, M)."""
    area1 = _area(boxes1) if area1 is None else area1
    area2 = _area(boxes2) if area2 is None else area2
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2); disjoint boxes overlap by 0
    inter = wh[..., 0] * wh[..., 1]
    # Summed in torchvision's order (area1 + area2 − inter), so NMS decisions at the threshold
    # agree with torchvision's to the last bit.
    return inter, area1[:, None] + area2[None, :] - inter


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0/0 → 0 (zero-area boxes); den is never negative for valid boxes."""
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(den.dtype).tiny), 0.0)


def _checked(boxes: Tensor, name: str) -> Tensor:
    """(N, 4) boxes with x1 ≤ x2 and y1 ≤ y2, as float32 or float64 (half precision and integer
    coordinates are upcast so areas neither overflow nor round to whole numbers)."""
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ConfigError(
            f"{name} must have shape (N, 4) as (x1, y1, x2, y2), got {tuple(boxes.shape)}"
        )
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    inverted = (boxes[:, 2:] < boxes[:, :2]).any(dim=1)  # (N,)
    if inverted.any():
        bad = int(torch.nonzero(inverted)[0])
        raise ConfigError(f"{name}[{bad}] = {boxes[bad].tolist()} has x2 < x1 or y2 < y1")
    return boxes


def _check_scores(values: Tensor, n: int, name: str) -> None:
    if values.shape != (n,):
        raise ConfigError(f"{name} must have shape ({n},), one per box, got {tuple(values.shape)}")
