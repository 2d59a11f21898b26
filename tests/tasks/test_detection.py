"""The detection task and the dense detector: FCOS target assignment on hand-made boxes (in
blocks as at once), losses and their cross-rank normaliser, decoding with NMS, the mAP of perfect
outputs, crowd regions ignored by the score and never a target, the boxes no location covers, fpn
on and off, and the one-line refusals."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

import ablab.tasks.detection as detection
from ablab.complexity import measure
from ablab.data.coco_json import CocoJsonDataModule
from ablab.data.shapes import ShapesDataModule
from ablab.data.shapes_det import PAD, ShapesDetDataModule, unpad
from ablab.errors import ConfigError
from ablab.models import ResNet
from ablab.models.detector import DenseDetector
from ablab.ops import detection_map, mean_average_precision, named_average_precision
from ablab.tasks.detection import (
    DetectionModule,
    assign,
    box_grid,
    centerness,
    covered,
    level_bounds,
    positive_normaliser,
)

K = 4  # classes


def detector(fpn: bool = True, **kw) -> DenseDetector:
    """A quarter-width three-stage ResNet: levels at strides 4, 8, 16."""
    backbone = ResNet(3, K, depths=(1, 1, 1), widths=(8, 16, 32), stem_width=8)
    return DenseDetector(backbone, K, fpn=fpn, fpn_channels=16, head_convs=1, **kw)


def task(net: nn.Module | None = None, **kw) -> DetectionModule:
    net = detector() if net is None else net
    return DetectionModule(net, partial(torch.optim.SGD, lr=0.0), None, K, **kw)


def grid(stride: int, size: int) -> torch.Tensor:
    """Locations (x, y) of a level of ``stride`` on a ``size`` px image, row-major."""
    c = torch.arange(size // stride, dtype=torch.float32) * stride + stride // 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1)


def test_the_detector_locations_are_fcos_points_finest_level_first() -> None:
    points, strides = detector().locations(64, 64)
    assert torch.equal(points, torch.cat([grid(4, 64), grid(8, 64), grid(16, 64)]))
    assert strides.tolist() == [4.0] * 256 + [8.0] * 64 + [16.0] * 16


def test_a_location_takes_the_smallest_box_it_lies_in_and_fits_its_level() -> None:
    # One 16 px image, one level of stride 4: locations at 2, 6, 10, 14 on each axis.
    points = grid(4, 16)
    lower, upper = torch.zeros(16), torch.full((16,), math.inf)
    big, small = [0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 8.0, 12.0]
    boxes = torch.tensor([[big, small, [0.0] * 4]])  # the third row is padding
    labels = torch.tensor([[0, 3, PAD]])
    targets = assign(points, lower, upper, boxes, labels)
    inside_small = {(6, 6), (6, 10)}  # (x, y) strictly inside (4, 4, 8, 12)
    for a, (x, y) in enumerate(points.tolist()):
        want = 3 if (x, y) in inside_small else 0  # every location lies inside the big box
        assert targets.labels[0, a] == want
    a = points.tolist().index([6.0, 10.0])
    assert targets.distances[0, a].tolist() == [2.0, 6.0, 2.0, 2.0]  # l, t, r, b
    assert targets.boxes[0, a].tolist() == small
    assert targets.index[0, a] == 1 and set(targets.index[0].tolist()) == {0, 1}  # its row
    # ranges: with (0, 6] the big box's locations (largest distance ≥ 10) are background
    targets = assign(points, lower, torch.full((16,), 6.0), boxes, labels)
    assert set(targets.labels[0].tolist()) == {PAD, 3}
    assert int(targets.positive.sum()) == 2


def random_boxes(n: int, m: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of up to m boxes 1-31 px, with padding rows, an image without boxes and two
    identical boxes of different classes (a tie of least area)."""
    torch.manual_seed(0)
    xy = torch.rand(n, m, 2) * (size - 8)
    boxes = torch.cat([xy, xy + torch.rand(n, m, 2) * 30 + 1], dim=2).clamp(max=size)
    labels = torch.randint(0, K, (n, m))
    labels[1], labels[3, m // 2 :] = PAD, PAD
    boxes[2, 1], labels[2, :2] = boxes[2, 0], torch.tensor([0, 1])
    return boxes * (labels != PAD)[..., None], labels


def test_assign_in_blocks_is_assign_at_once_bitwise_and_keeps_within_its_budget(
    monkeypatch,
) -> None:
    points, lower, upper = task().geometry(64, 64, "cpu")
    n, m, a = 5, 7, len(points)
    boxes, labels = random_boxes(n, m)
    whole = assign(points, lower, upper, boxes, labels, budget=n * a * m * 4)  # one block
    assert int(whole.positive.sum()) > 20 and whole.index.max() == m - 1
    seen = []
    block = detection.assign_block

    def recorded(points, lower, upper, boxes, labels):
        seen.append(len(boxes) * len(points) * boxes.shape[1] * 4)
        return block(points, lower, upper, boxes, labels)

    monkeypatch.setattr(detection, "assign_block", recorded)
    # 2 images a block, 1 image, 35 locations of one image (one image alone is over 1000)
    for budget in (2 * a * m * 4, a * m * 4 + 1, 1000):
        seen.clear()
        parts = assign(points, lower, upper, boxes, labels, budget=budget)
        assert len(seen) > 1 and max(seen) <= budget
        for one, many in zip(whole, parts, strict=True):
            assert one.dtype == many.dtype and one.shape == many.shape
            assert one.numpy().tobytes() == many.numpy().tobytes()


def test_level_ranges_grow_with_the_stride_and_the_last_is_open() -> None:
    strides = torch.tensor([4.0, 4.0, 8.0, 16.0])
    lower, upper = level_bounds(strides, 2.0)
    assert lower.tolist() == [0.0, 0.0, 8.0, 16.0]
    assert upper.tolist() == [8.0, 8.0, 16.0, math.inf]


def test_centerness_is_one_at_the_centre_and_falls_off_it() -> None:
    d = torch.tensor([[4.0, 4.0, 4.0, 4.0], [1.0, 4.0, 7.0, 4.0], [0.0, 1.0, 1.0, 1.0]])
    assert centerness(d).tolist() == pytest.approx([1.0, math.sqrt(1 / 7), 0.0])


def outputs_for(module: DetectionModule, boxes, labels, size: int = 64) -> torch.Tensor:
    """Net outputs that say exactly the targets: a confident logit for every positive's class,
    its true distances, a confident centerness; confident background elsewhere."""
    points, lower, upper = module.geometry(size, size, "cpu")
    targets = assign(points, lower, upper, boxes, labels)
    n, a = targets.labels.shape
    logits = torch.full((n, a, K), -12.0)
    logits[targets.positive, targets.labels[targets.positive]] = 12.0
    distances = torch.where(targets.positive[..., None], targets.distances, 1.0)
    return torch.cat([logits, distances, torch.full((n, a, 1), 12.0)], dim=2), targets


BOXES = torch.tensor([[[4.0, 4.0, 12.0, 12.0], [20.0, 8.0, 52.0, 40.0], [0.0] * 4],
                      [[30.0, 30.0, 36.0, 38.0], [0.0] * 4, [0.0] * 4]])  # fmt: skip
LABELS = torch.tensor([[1, 2, PAD], [0, PAD, PAD]])


def test_perfect_outputs_decode_to_the_boxes_and_score_map_1() -> None:
    module = task()
    out, _ = outputs_for(module, BOXES, LABELS)
    points, _, _ = module.geometry(64, 64, "cpu")
    detections = module.decode(out, points, 64, 64)
    truth = unpad(BOXES, LABELS)
    for found, true in zip(detections, truth, strict=True):
        # every location of a box says the same box: NMS leaves one per object
        assert sorted(found["labels"].tolist()) == sorted(true["labels"].tolist())
        order = found["labels"].argsort()
        assert torch.allclose(found["boxes"][order], true["boxes"][true["labels"].argsort()])
    metric = mean_average_precision()
    metric.update(detections, truth)
    named = named_average_precision(metric.compute(), ["a", "b", "c", "d"])
    assert named["map"] == pytest.approx(1.0) and named["map_50"] == pytest.approx(1.0)
    assert math.isnan(named["map_large"])  # no object of 96² px: undefined, not 0


def test_losses_are_zero_where_nothing_is_wrong_and_finite_everywhere() -> None:
    module = task()
    out, targets = outputs_for(module, BOXES, LABELS)
    points, _, _ = module.geometry(64, 64, "cpu")
    parts = module.losses(out, points, targets)
    assert parts["box_loss"].item() == pytest.approx(0.0, abs=1e-6)  # GIoU 1
    assert parts["cls_loss"].item() < 1e-6  # confident and right everywhere
    # no box in the batch: nothing to regress, background only
    empty = torch.full_like(LABELS, PAD)
    out = torch.randn_like(out, requires_grad=True)
    targets = assign(*module.geometry(64, 64, "cpu"), BOXES, empty)
    parts = module.losses(out, points, targets)
    assert parts["box_loss"].item() == 0.0 and parts["ctr_loss"].item() == 0.0
    assert torch.isfinite(parts["cls_loss"]) and parts["cls_loss"] > 0
    sum(parts.values()).backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()


def test_the_cls_normaliser_is_the_mean_positive_count_over_ranks() -> None:
    counts = [torch.tensor(30), torch.tensor(0), torch.tensor(6)]  # three ranks' positives

    def summed(value: torch.Tensor) -> torch.Tensor:  # the all-reduce of the ranks
        return sum(c.to(value.dtype) for c in counts)

    for count in counts:  # every rank divides by the same (30 + 0 + 6) / 3
        assert positive_normaliser(count, summed, world_size=3).item() == 12.0
    assert positive_normaliser(torch.tensor(0), lambda v: v * 0, world_size=2).item() == 1.0
    # one process: max(n, 1), the count itself, as before
    one = positive_normaliser(torch.tensor(7))
    assert one.dtype == torch.int64 and one.item() == 7
    assert positive_normaliser(torch.tensor(0)).item() == 1


def test_focal_with_gamma_0_and_no_alpha_is_the_cross_entropy() -> None:
    out = torch.randn(2, 336, K + 5)
    out[..., K : K + 4] = out[..., K : K + 4].abs() + 1  # positive distances
    ce, focal = task(cls_loss="ce"), task(focal_alpha=-1.0, focal_gamma=0.0)
    points, lower, upper = ce.geometry(64, 64, "cpu")
    targets = assign(points, lower, upper, BOXES, LABELS)
    a, b = ce.losses(out, points, targets), focal.losses(out, points, targets)
    assert a["cls_loss"].item() == pytest.approx(b["cls_loss"].item(), rel=1e-5)
    assert task().losses(out, points, targets)["cls_loss"] < a["cls_loss"]  # easy ones shrink


def test_decode_keeps_one_box_per_class_where_boxes_overlap() -> None:
    module = task()
    points, _, _ = module.geometry(64, 64, "cpu")
    out = torch.full((1, len(points), K + 5), -12.0)
    out[..., K : K + 4] = 4.0  # every location: an 8x8 box around it
    # locations (18, 18) and (22, 18): boxes (14, 14, 22, 22) and (18, 14, 26, 22), IoU 1/3
    first, second = 4 * 16 + 4, 4 * 16 + 5
    out[0, first, 1], out[0, second, 1] = 3.0, 2.0
    out[0, [first, second], -1] = 12.0
    keep = module.decode(out, points, 64, 64)[0]
    assert keep["labels"].tolist() == [1, 1]  # IoU 1/3 ≤ 0.6: both stay
    out[0, second, K : K + 4] = torch.tensor([7.0, 4.0, 1.0, 4.0])  # (15, 14, 23, 22): IoU 7/9
    keep = module.decode(out, points, 64, 64)[0]
    assert keep["labels"].tolist() == [1] and keep["scores"][0] == pytest.approx(
        math.sqrt(torch.sigmoid(torch.tensor(3.0)).item()), rel=1e-5
    )
    out[0, second, 1], out[0, second, 2] = -12.0, 2.0  # another class: never suppressed
    assert sorted(module.decode(out, points, 64, 64)[0]["labels"].tolist()) == [1, 2]
    out[..., :K] = -12.0  # nothing above the score threshold
    assert len(module.decode(out, points, 64, 64)[0]["boxes"]) == 0
    # the boxes are clipped to the image
    out[0, 0, 1] = 12.0  # location (2, 2) with distances 4: (−2, −2, 6, 6)
    assert module.decode(out, points, 64, 64)[0]["boxes"].tolist() == [[0.0, 0.0, 6.0, 6.0]]


def test_fpn_off_reads_the_deepest_level_alone_and_costs_fewer_macs() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    with_fpn, without = detector(fpn=True), detector(fpn=False)
    assert with_fpn(x).shape == (2, 16 * 16 + 8 * 8 + 4 * 4, K + 5)
    assert without(x).shape == (2, 4 * 4, K + 5)  # stride 16 only
    assert without.strides == (16,) and with_fpn.strides == (4, 8, 16)
    macs = measure(with_fpn, x).macs, measure(without, x).macs
    assert macs[0] > 2 * macs[1]  # the head runs on 21x more locations, and the pyramid
    # the backbone is shared and the classifier head dropped: only the neck's parameters differ
    backbone = sum(p.numel() for p in with_fpn.backbone.parameters())
    assert backbone == sum(p.numel() for p in without.backbone.parameters())
    assert not any(isinstance(m, nn.Linear) for m in with_fpn.modules())
    # a single level takes every object
    _, lower, upper = task(without).geometry(64, 64, "cpu")
    assert lower.unique().tolist() == [0.0] and upper.unique().tolist() == [math.inf]


def test_the_prior_bias_survives_an_init_scheme() -> None:
    from ablab.init import initialize

    net = initialize(detector(), scheme="kaiming_normal")
    prob = torch.sigmoid(net.cls_logits.bias)
    assert torch.allclose(prob, torch.full((K,), 0.01))


def test_gt_covered_counts_the_boxes_some_location_is_assigned_to() -> None:
    # strides 4, 8, 16 with level_range 2: ranges (0, 8], (8, 16], (16, ∞)
    tiny = [4.5, 4.5, 5.5, 5.5]  # inside no location centre (2, 6, 10, ... on stride 4)
    mid = [4.0, 4.0, 12.0, 12.0]  # stride 4 at (6, 6): largest distance 6 in (0, 8]
    # big's only fitting locations are stride 8's (4, 4)...(12, 12), largest distance 12; they
    # lie in inner too (largest 10 in (8, 16]), whose area is smaller: big gets none
    big, inner = [0.0, 0.0, 16.0, 16.0], [2.0, 2.0, 14.0, 14.0]
    boxes = torch.tensor([[tiny, mid, [0.0] * 4], [big, inner, [30.0, 30.0, 50.0, 50.0]]])
    labels = torch.tensor([[0, 1, PAD], [2, 3, 0]])
    crowd = torch.tensor([[False, False, False], [False, False, True]])  # never a target
    module = task()
    points, lower, upper = module.geometry(64, 64, "cpu")
    targets = assign(points, lower, upper, boxes, torch.where(crowd, PAD, labels))
    assert covered(targets, 3).tolist() == [[False, True, False], [False, True, False]]
    alone = assign(points, lower, upper, boxes, torch.tensor([[PAD] * 3, [2, PAD, PAD]]))
    assert covered(alone, 3)[1].tolist() == [True, False, False]  # big, without inner
    module._shared_step((torch.rand(2, 3, 64, 64), boxes, labels, crowd), "val")
    assert module.val_gt_covered.compute().item() == 0.5  # 2 of the 4 boxes, the crowd left out


def write_coco(root, annotations: list[dict]) -> None:
    """One 64x64 image, train.json = val.json with ``annotations`` and K categories, ids 1..K."""
    (root / "images").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "images" / "001.png")
    content = {
        "images": [{"id": 1, "file_name": "001.png", "width": 64, "height": 64}],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, K + 1)],
    }
    for name in ("train.json", "val.json"):
        (root / name).write_text(json.dumps(content))


def test_a_detection_of_a_crowd_region_is_ignored_and_the_crowd_is_no_target(tmp_path) -> None:
    # The reviewer's case: an object and a crowd region of its class, both detected, the crowd
    # region scoring higher. Dropping the crowd made its detection a false positive ranked first:
    # map_50 0.5; COCOeval ignores it: 1.0.
    write_coco(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 16, 16], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [32, 32, 24, 24], "iscrowd": 1},
    ])  # fmt: skip
    dm = CocoJsonDataModule(root=str(tmp_path), num_classes=K, batch_size=1, normalize=False)
    dm.setup("fit")
    assert dm.train_class_counts == [1, 0, 0, 0]  # the crowd is no training box
    both = torch.tensor([[[8.0, 8.0, 24.0, 24.0], [32.0, 32.0, 56.0, 56.0]]])
    module = task()
    # outputs that say both boxes, as if the crowd region were an object, and it more surely
    out, targets = outputs_for(module, both, torch.tensor([[0, 0]]))
    on_object = targets.positive & (targets.index == 0)
    out[..., 0] = torch.where(on_object, 2.0, out[..., 0])
    module.net.forward = lambda x: out
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    (logged,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert logged["val/map_50"] == pytest.approx(1.0) and logged["val/map"] == pytest.approx(1.0)
    assert logged["val/gt_covered"] == 1.0  # the one object; the crowd region is not counted
    # the same detections scored without the crowd region: the defect's 0.5
    points, _, _ = module.geometry(64, 64, "cpu")
    dropped = unpad(both[:, :1], torch.tensor([[0]]))
    assert detection_map(module.decode(out, points, 64, 64), dropped)["map_50"] == 0.5
    # never a target: its confident locations are background (focal loss ≈ 0.75 · 12 each), and
    # balanced_ce counts the locations of the object alone
    assert logged["val/cls_loss"] > 1
    weighted = task(cls_loss="balanced_ce")
    weighted.check(dm)
    alone = weighted.location_weights(both[:, :1], torch.tensor([[0]]), 64, 64)
    assert torch.equal(weighted.class_weights, alone)


def small_data(**kw) -> ShapesDetDataModule:
    dm = ShapesDetDataModule(n_train=24, n_val=4, n_test=4, **kw)
    dm.setup("fit")
    return dm


def test_check_takes_class_names_and_balanced_ce_weights_from_the_data() -> None:
    module = task(cls_loss="balanced_ce")
    dm = small_data(rare_class="ring", rare_ratio=0.2)
    module.check(dm)
    assert module.class_names == ["disc", "square", "triangle", "ring"]
    weights = module.class_weights
    assert weights[-1] < 1 < weights[:-1].min()  # background: the most frequent class
    assert weights[3] == weights[:-1].max()  # the rare ring
    assert module.validation_metric_names() == {
        "val/loss", "val/cls_loss", "val/box_loss", "val/ctr_loss",
        "val/map", "val/map_50", "val/map_75", "val/mar_100", "val/gt_covered",
    }  # fmt: skip


def test_the_box_grid_draws_truth_and_detections_side_by_side() -> None:
    x = torch.rand(3, 3, 64, 64)
    truth = unpad(BOXES[:1].expand(3, -1, -1), LABELS[:1].expand(3, -1))
    found = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(2)} for t in truth]
    image = box_grid(x, truth, found, ["a", "b", "c", "d"])
    assert image.size == (2 * 128 + 3 * 2, 3 * 128 + 4 * 2)  # 64 px up-scaled twice


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: task(cls_loss="softmax"), "unknown task.cls_loss 'softmax'; valid: balanced_ce"),
        (lambda: task(focal_gamma=-1.0), "task.focal_gamma=-1.0 must be >= 0"),
        (lambda: task(nms_iou=0.0), "task.nms_iou=0.0 in (0, 1]"),
        (lambda: detector(fpn=False, extra_levels=1), "model.extra_levels=1 extends a pyramid"),
        (lambda: DenseDetector(nn.Conv2d(3, 3, 1), K), "has no feature levels"),
        (lambda: ShapesDetDataModule(rare_class="star"), "unknown data.rare_class 'star'"),
        (lambda: ShapesDetDataModule(num_classes=5), "data.num_classes=5 but data=shapes_det"),
        (lambda: ShapesDetDataModule(min_size=0.01), "objects need at least 2 px"),
    ],
)
def test_bad_values_are_one_line(make, message) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("module", "data", "message"),
    [
        (lambda: task(), lambda: ShapesDataModule(n_train=2, n_val=2, n_test=2),
         "task=detection needs data with boxes and classes per image (data=shapes_det|coco_json); "
         "ShapesDataModule yields none"),
        (lambda: task(), lambda: small_data(image_size=56),
         "needs input sides divisible by its largest stride 16; got 56x56: use "
         "data.image_size=48 or 64"),
        (lambda: DetectionModule(nn.Conv2d(3, 9, 1), partial(torch.optim.SGD, lr=0.0), None, K),
         small_data, "model Conv2d is not a dense detector (no locations()); task=detection "
         "needs model=fcos"),
        (lambda: DetectionModule(detector(), partial(torch.optim.SGD, lr=0.0), None, 3),
         small_data, "task.num_classes=3 but the data has 4 classes"),
    ],
)  # fmt: skip
def test_data_or_net_that_does_not_fit_is_one_line(module, data, message) -> None:
    with pytest.raises(ConfigError) as err:
        module().check(data())
    assert message in str(err.value) and "\n" not in str(err.value)
