"""ablab.ops box geometry and NMS against torchvision.ops on seeded random boxes, empty inputs,
zero-area and identical boxes, tied scores, many classes, float32 and float64."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tv

from ablab.errors import ConfigError
from ablab.ops import batched_nms, box_area, box_iou, generalized_box_iou, nms

DTYPES = [torch.float32, torch.float64]


def random_boxes(n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n boxes (n, 4) with corners in [0, 100] and sides in [0, 40]: many overlap."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


def random_scores(
    n: int, seed: int, ties: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Scores in [0, 1), or only 4 distinct values so that most scores are tied (torchvision's
    NMS wants them in the boxes' dtype)."""
    g = torch.Generator().manual_seed(seed + 1000)
    if ties:
        return (torch.randint(0, 4, (n,), generator=g) / 4).to(dtype)
    return torch.rand(n, generator=g, dtype=torch.float64).to(dtype)


# Zero-area boxes: two points, a horizontal and a vertical segment, and a point inside `BOX`.
DEGENERATE = torch.tensor(
    [[1.0, 1, 1, 1], [5, 5, 5, 5], [0, 3, 4, 3], [2, 0, 2, 6], [1, 1, 1, 1]], dtype=torch.float64
)
BOX = torch.tensor([[0.0, 0, 2, 2]], dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_area_matches_torchvision(dtype: torch.dtype) -> None:
    boxes = random_boxes(40, seed=0, dtype=dtype)
    assert box_area(boxes).dtype == dtype
    torch.testing.assert_close(box_area(boxes), tv.box_area(boxes), rtol=0, atol=0)


def test_box_area_has_no_plus_one() -> None:
    assert box_area(torch.tensor([[0.0, 0, 2, 3], [1.5, 1.5, 1.5, 4]])).tolist() == [6.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", [(0, 0), (0, 5), (7, 0), (1, 1), (50, 60)])
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(box_iou, tv.box_iou), (generalized_box_iou, tv.generalized_box_iou)],
    ids=["iou", "giou"],
)
def test_pairwise_matches_torchvision(ours, theirs, sizes: tuple[int, int], dtype) -> None:
    a, b = random_boxes(sizes[0], seed=1, dtype=dtype), random_boxes(sizes[1], seed=2, dtype=dtype)
    result = ours(a, b)
    assert result.shape == sizes and result.dtype == dtype
    torch.testing.assert_close(result, theirs(a, b))


def test_giou_bounds_and_order() -> None:
    a, b = random_boxes(30, seed=3), random_boxes(40, seed=4)
    iou, giou = box_iou(a, b), generalized_box_iou(a, b)
    assert (iou >= 0).all() and (iou <= 1).all()
    assert (giou > -1).all() and (giou <= iou).all()  # the hull penalty is never negative


def test_identical_boxes_have_iou_and_giou_one() -> None:
    boxes = random_boxes(20, seed=5, dtype=torch.float64)
    torch.testing.assert_close(
        box_iou(boxes, boxes).diagonal(), torch.ones(20, dtype=torch.float64)
    )
    torch.testing.assert_close(
        generalized_box_iou(boxes, boxes).diagonal(), torch.ones(20, dtype=torch.float64)
    )


def test_zero_area_boxes_have_iou_zero_where_torchvision_has_nan() -> None:
    boxes = torch.cat([DEGENERATE, BOX])
    iou, theirs = box_iou(boxes, boxes), tv.box_iou(boxes, boxes)
    assert not iou.isnan().any()
    assert iou[:5, :5].eq(0).all() and iou[:5, 5].eq(0).all()
    # torchvision: 0/0 = NaN between two zero-area boxes, the same numbers everywhere else.
    assert theirs[:5, :5].isnan().all()
    torch.testing.assert_close(iou[5:], theirs[5:])


def test_zero_area_boxes_giou() -> None:
    giou, theirs = (
        generalized_box_iou(DEGENERATE, DEGENERATE),
        tv.generalized_box_iou(DEGENERATE, DEGENERATE),
    )
    assert theirs.isnan().all()  # torchvision: NaN for every pair of zero-area boxes
    # Ours: IoU 0; the penalty (|C| − 0) / |C| is 1 when the hull has an area, 0/0 → 0 when the
    # hull is itself degenerate (the same point twice, or two points on one horizontal line).
    expected = torch.tensor(
        [
            [0.0, -1, -1, -1, 0],
            [-1, 0, -1, -1, -1],
            [-1, -1, 0, -1, -1],
            [-1, -1, -1, 0, -1],
            [0, -1, -1, -1, 0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(giou, expected)
    # Against a box with an area, torchvision's numbers are finite and equal ours.
    torch.testing.assert_close(
        generalized_box_iou(DEGENERATE, BOX), tv.generalized_box_iou(DEGENERATE, BOX)
    )


def test_giou_gradient_is_finite_on_zero_area_boxes() -> None:
    boxes = torch.cat([DEGENERATE, BOX]).requires_grad_()
    generalized_box_iou(boxes, boxes).sum().backward()
    assert boxes.grad is not None and boxes.grad.isfinite().all()


def test_integer_boxes_are_upcast() -> None:
    boxes = torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3]])
    torch.testing.assert_close(box_iou(boxes, boxes), box_iou(boxes.float(), boxes.float()))
    assert box_iou(boxes, boxes)[0, 1].item() == pytest.approx(1 / 7)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: box_iou(torch.zeros(3, 5), torch.zeros(2, 4)), r"boxes1 must have shape \(N, 4\)"),
        (lambda: box_area(torch.tensor([[0.0, 0, 1, 1], [2, 0, 1, 1]])), r"boxes\[1\] .* x2 < x1"),
        (lambda: nms(torch.zeros(3, 4), torch.zeros(2), 0.5), r"scores must have shape \(3,\)"),
        (
            lambda: batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(4), 0.5),
            r"classes must have shape \(3,\)",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_torchvision(threshold: float, ties: bool, dtype: torch.dtype) -> None:
    boxes, scores = (
        random_boxes(300, seed=6, dtype=dtype),
        random_scores(300, seed=6, ties=ties, dtype=dtype),
    )
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    # Exactly equal, order included: torchvision's CPU kernel also sorts stably.
    assert torch.equal(keep, tv.nms(boxes, scores, threshold))


def test_nms_keeps_one_of_identical_boxes() -> None:
    boxes = BOX.repeat(4, 1)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9], dtype=torch.float64)
    assert nms(boxes, scores, 0.5).tolist() == [1]  # tie: the lower index
    assert torch.equal(nms(boxes, scores, 0.5), tv.nms(boxes, scores, 0.5))
    # IoU 1 is not > 1: at threshold 1 nothing is suppressed.
    assert nms(boxes, scores, 1.0).tolist() == [1, 3, 2, 0]


def test_nms_never_suppresses_zero_area_boxes() -> None:
    boxes = torch.cat([BOX, DEGENERATE, BOX])
    scores = torch.linspace(1, 0, len(boxes), dtype=torch.float64)
    keep = nms(boxes, scores, 0.0)
    assert keep.tolist() == [0, 1, 2, 3, 4, 5]  # only the second copy of BOX goes
    assert torch.equal(keep, tv.nms(boxes, scores, 0.0))


@pytest.mark.parametrize("n_boxes", [0, 1])
def test_nms_on_no_or_one_box(n_boxes: int) -> None:
    boxes, scores = random_boxes(n_boxes, seed=7), torch.rand(n_boxes)
    classes = torch.zeros(n_boxes, dtype=torch.int64)
    assert nms(boxes, scores, 0.5).tolist() == list(range(n_boxes))
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == list(range(n_boxes))
    assert nms(boxes, scores, 0.5).dtype == torch.int64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("n_classes", [1, 3, 50, 300])
def test_batched_nms_matches_torchvision(n_classes: int, ties: bool, dtype: torch.dtype) -> None:
    boxes, scores = (
        random_boxes(300, seed=8, dtype=dtype),
        random_scores(300, seed=8, ties=ties, dtype=dtype),
    )
    classes = torch.randint(0, n_classes, (300,), generator=torch.Generator().manual_seed(8))
    keep = batched_nms(boxes, scores, classes, 0.5)
    # Below 1000 boxes on CPU torchvision runs one NMS over class-shifted boxes: same order.
    assert torch.equal(keep, tv.batched_nms(boxes, scores, classes, 0.5))


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_batched_nms_matches_torchvision_per_class_path(ties: bool) -> None:
    # Above 1000 boxes torchvision runs NMS class by class and orders the kept boxes with an
    # unstable sort: the same boxes, the same scores in order, tied boxes possibly swapped.
    boxes, scores = random_boxes(1200, seed=9), random_scores(1200, seed=9, ties=ties)
    classes = torch.randint(0, 40, (1200,), generator=torch.Generator().manual_seed(9))
    keep, theirs = (
        batched_nms(boxes, scores, classes, 0.5),
        tv.batched_nms(boxes, scores, classes, 0.5),
    )
    assert sorted(keep.tolist()) == sorted(theirs.tolist())
    assert torch.equal(scores[keep], scores[theirs])
    if not ties:
        assert torch.equal(keep, theirs)


def test_batched_nms_is_nms_per_class() -> None:
    boxes, scores = random_boxes(200, seed=10), random_scores(200, seed=10, ties=True)
    classes = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(10))
    keep = batched_nms(boxes, scores, classes, 0.4)
    for c in range(5):
        members = torch.nonzero(classes == c).flatten()
        assert torch.equal(
            keep[classes[keep] == c], members[nms(boxes[members], scores[members], 0.4)]
        )


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("max_kept", [0, 1, 7, 100, 10_000])
def test_max_kept_is_the_head_of_the_full_result(max_kept: int, ties: bool) -> None:
    """Stopping after ``max_kept`` kept boxes gives the full NMS's first ``max_kept`` (a kept box
    depends on higher-scoring boxes only), for both NMS forms; more than there are: all."""
    boxes, scores = random_boxes(400, seed=11), random_scores(400, seed=11, ties=ties)
    classes = torch.randint(0, 3, (400,), generator=torch.Generator().manual_seed(11))
    full = tv.nms(boxes, scores, 0.5)
    assert torch.equal(nms(boxes, scores, 0.5, max_kept), full[:max_kept])
    full = batched_nms(boxes, scores, classes, 0.5)
    assert torch.equal(batched_nms(boxes, scores, classes, 0.5, max_kept), full[:max_kept])


def test_negative_max_kept_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="max_kept=-1 must be >= 0") as error:
        nms(random_boxes(3, seed=12), torch.rand(3), 0.5, max_kept=-1)
    assert "\n" not in str(error.value)


def test_different_classes_never_suppress_each_other() -> None:
    boxes, scores = BOX.repeat(4, 1), torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 2, 1]), 0.5).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_paired_giou_is_the_diagonal_without_the_matrix() -> None:
    """The box loss's GIoU of matched pairs equals the pairwise matrix's diagonal, zero-area
    and disjoint pairs included, with a finite gradient."""
    from ablab.ops import generalized_box_iou, paired_generalized_box_iou

    torch.manual_seed(0)
    xy = torch.rand(200, 2) * 50
    a = torch.cat([xy, xy + torch.rand(200, 2) * 20], dim=1)
    b = torch.cat([xy + 5, xy + 5 + torch.rand(200, 2) * 20], dim=1)
    a[:10, 2:] = a[:10, :2]  # zero-area boxes
    a.requires_grad_(True)
    paired = paired_generalized_box_iou(a, b)
    assert paired.shape == (200,)
    assert torch.allclose(paired, generalized_box_iou(a, b).diagonal(), atol=1e-6)
    paired.sum().backward()
    assert torch.isfinite(a.grad).all()
