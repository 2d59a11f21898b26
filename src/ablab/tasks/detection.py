"""Object detection with a dense, anchor-free detector: FCOS's targets, losses and decoding (Tian
et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection"), scored by COCO's AP.

The network (:class:`ablab.models.detector.DenseDetector`, ``model=fcos``) is injected; for an
(N, C, H, W) batch it gives (N, A, K + 5): per location K class logits, the distances
(l, t, r, b) to its box's sides and a centerness logit, and ``net.locations(H, W)`` gives each
location's (x, y) and stride. Batches are ``(x, boxes, labels)`` with boxes (N, M, 4) in pixels
(x1, y1, x2, y2) and labels (N, M), −1 marking padding (:mod:`ablab.data.shapes_det`), or
``(x, boxes, labels, crowd)`` with ``crowd`` (N, M) bool flagging COCO's crowd regions
(``iscrowd: 1``, :mod:`ablab.data.coco_json`; none when absent).

Targets (FCOS §3.1–3.2): a location is a positive of a box when it lies inside the box and the
largest of its distances (l*, t*, r*, b*) falls in its level's range (m_{l−1}, m_l], with
m_l = ``level_range`` · s_l for every level but the last (m_L = ∞) and m_0 = 0 (FCOS: 8 · s at
800 px, i.e. P3 (0, 64]; here objects are 4 to 40 px and the finest stride is 4, so 2 · s puts
objects up to ~16 px on the finest level, ~16-32 px on the next, larger ones above). A location
inside several boxes takes the one of least area. A single-level net (``model.fpn=false``) takes
every box on its level. Every other location is background. A crowd region is never a target: no
location is its positive, its locations are background (as detectron2 drops crowds from training
targets) and ``balanced_ce`` does not count it. The targets are computed a block of images at a
time, so that the (images, locations, boxes, 4) temporaries stay under :data:`ASSIGN_BUDGET`
elements whatever the batch and the image size.

Losses, each summed over the batch:

- classification, over every location and class, divided by the number of positives (FCOS,
  RetinaNet): ``cls_loss``;
  - ``focal``: the sigmoid focal loss −α_t (1 − p_t)^γ log p_t (Lin et al. 2017, ``focal_alpha``,
    ``focal_gamma``; α < 0 turns α off, γ = 0 with α ≥ 0 is RetinaNet's α-balanced CE);
  - ``ce``: binary cross-entropy, every term weighted 1 (the loss the focal loss replaces);
  - ``balanced_ce``: binary cross-entropy with every location's K terms weighted by
    w_y = N / ((K + 1) · n_y) for its assigned class y among the K classes and background, n_y
    the training split's locations assigned to y (counted once, before the run): the inverse
    class frequency weighting of ``loss=balanced_cross_entropy``, with background the (K + 1)th
    class, so it rebalances both objects against background and a rare class against the others;
- box: 1 − GIoU (Rezatofighi et al. 2019, ``ablab.ops.paired_generalized_box_iou``) between the predicted
  and target boxes of the positives, divided by their number (FCOS's IoU loss, in its later GIoU
  form);
- centerness: binary cross-entropy of the centerness logit against
  √(min(l*, r*)/max(l*, r*) · min(t*, b*)/max(t*, b*)), divided by the number of positives.

Under DDP each of the R ranks divides all three by the mean count over the ranks,
max(Σ_r n_r / R, 1) (FCOS's ``num_pos_avg_per_gpu``), so that the gradient DDP averages is the
one of a single process on the whole batch (:func:`positive_normaliser`); one process divides by
its own count, max(n, 1).

``<stage>/loss`` is their sum (``cls_loss``, ``box_loss``, ``ctr_loss`` logged beside it).

Decoding (FCOS §3.3, and its inference settings): locations whose class probability exceeds
``score_threshold`` are candidates, scored √(p_class · p_centerness) (down-weighting the far-from-
centre boxes); at most ``pre_nms_top_k`` per image by score, boxes (x − l, y − t, x + r, y + b)
clipped to the image, class-wise greedy NMS at IoU ``nms_iou`` (``ablab.ops.batched_nms``),
then the ``max_detections`` best.

Scores (validation and test loaders): COCO AP from ``ablab.ops.mean_average_precision``
(torchmetrics on pycocotools) over the epoch: ``map`` (AP at IoU .50:.05:.95), ``map_50``,
``map_75``, ``mar_100``, ``map_small|medium|large`` (COCO's absolute areas: < 32², 32²–96², ≥ 96²
pixels, so at 64 px every object under 32x32 is small and no object is large: a size with no
object is undefined and not logged), and at test ``ap/<class>``. ``val/map`` is monitored.
Crowd regions go to the metric flagged (``iscrowd``): as in COCOeval, a detection that matches
one is ignored, neither a true nor a false positive, and it is no object to recall.

``gt_covered``: the fraction of the epoch's ground-truth boxes (crowds left out) that at least one
location is assigned to, after the level ranges and the least-area rule: FCOS's "best possible
recall" (§3.2, Table 1), the recall no detector with these targets can exceed. It depends on the
data, the levels and ``level_range``, not on the weights (a box smaller than the stride that no
location centre falls in is never covered); a torchmetrics mean of each box's 0/1.

After every validation epoch (not the sanity check) rank 0 logs ``detection/epoch_NNN.png``: for
the first ``grid_size`` validation images, the ground-truth boxes and the detections scoring at
least ``DRAWN_SCORE``, side by side, one colour per class.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import MeanMetric

from ablab.data.module import TRAIN_EVAL
from ablab.data.shapes_det import PAD, unpack, unpad
from ablab.errors import ConfigError, unknown_choice
from ablab.ops import (
    batched_nms,
    mean_average_precision,
    named_average_precision,
    paired_generalized_box_iou,
    sigmoid_focal_loss,
)
from ablab.tasks.base import OptimizerFactory, Task, tested_stage
from ablab.tasks.segmentation import OVERLAY_SIDE, PALETTE

warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(tested_)?(train|train_eval|val|test)/",
    category=PossibleUserWarning,
)

CLS_LOSSES = ("focal", "ce", "balanced_ce")
#: Loss terms logged beside their sum, ``<stage>/loss``.
PARTS = ("cls_loss", "box_loss", "ctr_loss")
#: Stages scored by COCO AP: every validation and test loader (training only has losses).
SCORED = ("val", "test", TRAIN_EVAL, tested_stage("val"), tested_stage(TRAIN_EVAL))
STAGES = ("train", *SCORED)
#: AP summaries always logged (the size buckets only when defined).
ALWAYS = ("map", "map_50", "map_75", "mar_100")
#: Detections drawn in the box grid: those scoring at least this.
DRAWN_SCORE = 0.3
#: Elements of the (images, locations, boxes, 4) distances :func:`assign` holds at once (64 MiB
#: in float32). All at once, 256 images of 512 px (21,504 locations at strides 4, 8, 16) with 93
#: box rows (COCO's most per image) would take 2 · 10⁹ elements, 8 GB.
ASSIGN_BUDGET = 2**24


class Targets(NamedTuple):
    """Per location of a batch: ``labels`` (N, A) with −1 for background, ``boxes`` (N, A, 4)
    the assigned box (zeros for background), ``distances`` (N, A, 4) its (l*, t*, r*, b*),
    ``index`` (N, A) its row in the batch's boxes (−1 for background)."""

    labels: Tensor
    boxes: Tensor
    distances: Tensor
    index: Tensor

    @property
    def positive(self) -> Tensor:
        return self.labels >= 0


def level_bounds(strides: Tensor, level_range: float) -> tuple[Tensor, Tensor]:
    """The (lower, upper] range of the largest target distance at each location, from its
    stride: m_l = level_range · s_l, m_0 = 0, the coarsest level's upper bound ∞."""
    levels = torch.unique(strides)  # sorted: finest first
    upper = level_range * levels
    upper[-1] = math.inf
    lower = torch.cat([upper.new_zeros(1), upper[:-1]])
    index = torch.searchsorted(levels, strides)
    return lower[index], upper[index]


def assign(
    points: Tensor,
    lower: Tensor,
    upper: Tensor,
    boxes: Tensor,
    labels: Tensor,
    budget: int = ASSIGN_BUDGET,
) -> Targets:
    """FCOS targets for one batch: locations (A, 2) as (x, y) with their ranges (A,), padded
    boxes (N, M, 4) and labels (N, M) (−1: no target).

    A block of images at a time, and of locations when one image alone is over ``budget``, so
    that the (n, a, M, 4) distances hold at most ``budget`` elements: a location's target depends
    on its image's boxes and its own position alone, so the blocks give the same targets."""
    n, a = len(boxes), len(points)
    per_location = 4 * max(boxes.shape[1], 1)
    images = max(1, budget // (a * per_location))
    locations = min(a, max(1, budget // per_location))  # below A only when images is 1
    if images >= n and locations >= a:
        return assign_block(points, lower, upper, boxes, labels)
    targets = Targets(
        labels.new_full((n, a), PAD), boxes.new_zeros(n, a, 4), boxes.new_zeros(n, a, 4),
        labels.new_full((n, a), PAD),
    )  # fmt: skip
    for i in range(0, n, images):
        for j in range(0, a, locations):
            at = slice(j, j + locations)
            block = assign_block(
                points[at], lower[at], upper[at], boxes[i : i + images], labels[i : i + images]
            )
            for whole, part in zip(targets, block, strict=True):
                whole[i : i + images, at] = part
    return targets


def assign_block(
    points: Tensor, lower: Tensor, upper: Tensor, boxes: Tensor, labels: Tensor
) -> Targets:
    """:func:`assign` on every image and location it is given at once."""
    n, a = len(boxes), len(points)
    x, y = points[:, 0].view(1, a, 1), points[:, 1].view(1, a, 1)
    # (N, A, M, 4): distances from every location to the sides of every box
    distances = torch.stack(
        [x - boxes[:, None, :, 0], y - boxes[:, None, :, 1],
         boxes[:, None, :, 2] - x, boxes[:, None, :, 3] - y],
        dim=-1,
    )  # fmt: skip
    largest = distances.amax(dim=-1)
    fits = (
        (distances.amin(dim=-1) > 0)
        & (largest > lower.view(1, a, 1))
        & (largest <= upper.view(1, a, 1))
        & (labels != PAD)[:, None, :]
    )
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))[:, None, :]
    area = torch.where(fits, area, math.inf)  # (N, A, M)
    least, match = area.min(dim=-1)  # the smallest box a location fits
    positive = torch.isfinite(least)
    gather = match[..., None, None].expand(n, a, 1, 4)
    matched = distances.gather(2, gather)[:, :, 0]  # (N, A, 4)
    matched_boxes = boxes.gather(1, match[..., None].expand(n, a, 4))
    keep = positive[..., None]
    return Targets(
        torch.where(positive, labels.gather(1, match), PAD),
        torch.where(keep, matched_boxes, 0.0),
        torch.where(keep, matched, 0.0),
        torch.where(positive, match, PAD),
    )


def covered(targets: Targets, rows: int) -> Tensor:
    """Per box row (N, ``rows``) of the batch: whether at least one location is assigned to it."""
    n = len(targets.index)
    hit = torch.zeros(n, rows + 1, dtype=torch.bool, device=targets.index.device)
    # background writes to the extra last column
    return hit.scatter_(1, torch.where(targets.positive, targets.index, rows), True)[:, :rows]


def positive_normaliser(
    count: Tensor, reduce_sum: Callable[[Tensor], Tensor] | None = None, world_size: int = 1
) -> Tensor:
    """The classification loss's divisor: max(n, 1) for one process's n positives; with
    ``reduce_sum`` (the sum over R = ``world_size`` ranks), max(Σ_r n_r / R, 1), FCOS's
    ``num_pos_avg_per_gpu``. Then the gradient DDP averages over the ranks, (1/R) Σ_r ∇L_r / n̄,
    is ∇(Σ_r L_r) / Σ_r n_r: one process's on the whole batch."""
    if reduce_sum is None:
        return count.clamp(min=1)
    return (reduce_sum(count.float()) / world_size).clamp(min=1)


def distributed_sum(value: Tensor) -> Tensor:
    """Σ of ``value`` over the ranks of torch.distributed's default group, as a new tensor."""
    total = value.clone()
    dist.all_reduce(total)
    return total


def ground_truth(boxes: Tensor, labels: Tensor, crowd: Tensor) -> list[dict[str, Tensor]]:
    """Per image ``{"boxes", "labels", "iscrowd"}`` of its rows that are not padding, crowd
    regions flagged for COCO's evaluation."""
    return [
        {**truth, "iscrowd": c[y != PAD].long()}
        for truth, c, y in zip(unpad(boxes, labels), crowd, labels, strict=True)
    ]


def centerness(distances: Tensor) -> Tensor:
    """√(min(l, r)/max(l, r) · min(t, b)/max(t, b)) of (..., 4) distances (l, t, r, b)."""
    lr, tb = distances[..., 0::2], distances[..., 1::2]
    ratio = (lr.amin(-1) / lr.amax(-1)) * (tb.amin(-1) / tb.amax(-1))
    return ratio.clamp(min=0).sqrt()


def to_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """(x − l, y − t, x + r, y + b) of locations (..., 2) and distances (..., 4)."""
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


class DetectionModule(Task):
    """out = net(x), (N, A, K + 5); loss = cls + (1 − GIoU) + centerness BCE on FCOS targets;
    COCO AP of the decoded, NMS-ed detections over every held-out epoch."""

    networks: ClassVar[dict[str, str]] = {"net": "model"}

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        num_classes: int,
        *,
        cls_loss: str = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        level_range: float = 2.0,
        score_threshold: float = 0.05,
        pre_nms_top_k: int = 1000,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        grid_size: int = 8,
        monitor: str = "val/map",
        mode: Literal["min", "max"] = "max",
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        if cls_loss not in CLS_LOSSES:
            raise unknown_choice("task.cls_loss", cls_loss, CLS_LOSSES)
        if num_classes < 1:
            raise ConfigError(f"task.num_classes={num_classes}: detection needs at least 1")
        if focal_gamma < 0 or focal_alpha > 1:
            raise ConfigError(
                f"task.focal_gamma={focal_gamma} must be >= 0 and task.focal_alpha={focal_alpha} "
                "in [0, 1] (or < 0: no weighting)"
            )
        if level_range <= 0:
            raise ConfigError(f"task.level_range={level_range} must be > 0")
        if not 0 <= score_threshold < 1 or not 0 < nms_iou <= 1:
            raise ConfigError(
                f"task.score_threshold={score_threshold} must be in [0, 1) and task.nms_iou="
                f"{nms_iou} in (0, 1]"
            )
        if pre_nms_top_k < 1 or max_detections < 1 or grid_size < 0:
            raise ConfigError(
                f"task.pre_nms_top_k={pre_nms_top_k} and task.max_detections={max_detections} "
                f"must be >= 1, task.grid_size={grid_size} >= 0"
            )
        self.net, self.num_classes = net, num_classes
        self.cls_loss, self.focal_alpha, self.focal_gamma = cls_loss, focal_alpha, focal_gamma
        self.level_range, self.score_threshold = level_range, score_threshold
        self.pre_nms_top_k, self.nms_iou = pre_nms_top_k, nms_iou
        self.max_detections, self.grid_size = max_detections, grid_size
        self.class_names = [str(c) for c in range(num_classes)]
        #: balanced_ce's weight of each class and background (last), set by :meth:`check`
        self.register_buffer("class_weights", torch.ones(num_classes + 1), persistent=False)
        for stage in STAGES:
            setattr(self, f"{stage}_loss", MeanMetric())
            for part in PARTS:
                setattr(self, f"{stage}_{part}", MeanMetric())
        for stage in SCORED:
            setattr(self, f"{stage}_map", mean_average_precision())
            setattr(self, f"{stage}_gt_covered", MeanMetric())  # of each box's 0/1
        self._grid: list[tuple[Tensor, list[dict[str, Tensor]], list[dict[str, Tensor]]]] = []

    # -- before the run ------------------------------------------------------------------------
    def check(self, datamodule: Any) -> None:
        """The data must yield boxes of this many classes, the net be a dense detector that takes
        the data's images (a size it cannot take is its own one line); ``balanced_ce`` counts
        the training split's locations per assigned class here."""
        if getattr(datamodule, "target", None) != "boxes":
            raise ConfigError(
                "task=detection needs data with boxes and classes per image "
                f"(data=shapes_det|coco_json); {type(datamodule).__name__} yields none"
            )
        if datamodule.num_classes != self.num_classes:
            raise ConfigError(
                f"task.num_classes={self.num_classes} but the data has {datamodule.num_classes} "
                f"classes; use task.num_classes={datamodule.num_classes}"
            )
        if not callable(getattr(self.net, "locations", None)):
            raise ConfigError(
                f"model {type(self.net).__name__} is not a dense detector (no locations()); "
                "task=detection needs model=fcos"
            )
        self.class_names = [str(n) for n in datamodule.class_names]
        example = datamodule.example_input()
        n, _, height, width = example.shape
        wanted = (n, len(self.net.locations(height, width)[0]), self.num_classes + 5)
        shape = self.dry_output_shape(self.net, example)
        if shape != wanted:
            raise ConfigError(
                f"model {type(self.net).__name__} outputs {shape}, not {wanted} (a row of "
                f"{self.num_classes} class logits, 4 distances and a centerness per location)"
            )
        if self.cls_loss == "balanced_ce":
            self.class_weights = self.location_weights(*datamodule.train_targets(), height, width)

    def location_weights(self, boxes: Tensor, labels: Tensor, height: int, width: int) -> Tensor:
        """w_y = N / ((K + 1) n_y) over the K classes and background (last) of the locations of
        every training image (a class with no location gets weight 0: it never occurs)."""
        points, lower, upper = self.geometry(height, width, boxes.device)
        counts = torch.zeros(self.num_classes + 1)
        for b, y in zip(boxes.split(256), labels.split(256), strict=True):
            assigned = assign(points, lower, upper, b.float(), y).labels
            assigned = torch.where(assigned == PAD, self.num_classes, assigned)
            counts += torch.bincount(assigned.flatten(), minlength=self.num_classes + 1)
        weights = counts.sum() / (len(counts) * counts)
        return torch.where(counts > 0, weights, 0.0)

    def validation_metric_names(self) -> set[str]:
        """Logged every validation epoch; not ``map_small|medium|large``, undefined (not logged)
        when the validation set has no object of that size."""
        return {
            "val/loss",
            "val/gt_covered",
            *(f"val/{p}" for p in PARTS),
            *(f"val/{k}" for k in ALWAYS),
        }

    def training_metric_names(self) -> set[str]:
        return {"train/loss", *(f"train/{p}" for p in PARTS)}

    # -- targets, losses, decoding -------------------------------------------------------------
    def geometry(self, height: int, width: int, device: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Locations (A, 2) and their level's range of target distances (A,), (A,)."""
        points, strides = self.net.locations(height, width)
        if len(self.net.strides) == 1:  # one level takes every object
            lower, upper = torch.zeros_like(strides), torch.full_like(strides, math.inf)
        else:
            lower, upper = level_bounds(strides, self.level_range)
        return points.to(device), lower.to(device), upper.to(device)

    def losses(self, out: Tensor, points: Tensor, targets: Targets) -> dict[str, Tensor]:
        """cls, box and centerness losses of outputs (N, A, K + 5) against ``targets``."""
        logits, distances, ctr = out[..., : self.num_classes], out[..., -5:-1], out[..., -1]
        positive = targets.positive
        if dist.is_available() and dist.is_initialized():
            n_pos = positive_normaliser(positive.sum(), distributed_sum, dist.get_world_size())
        else:
            n_pos = positive_normaliser(positive.sum())
        onehot = F.one_hot(targets.labels.clamp(min=0), self.num_classes).to(logits.dtype)
        onehot = onehot * positive[..., None]
        if self.cls_loss == "focal":
            cls = sigmoid_focal_loss(
                logits, onehot, self.focal_alpha, self.focal_gamma, reduction="sum"
            )
        else:
            terms = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
            if self.cls_loss == "balanced_ce":
                assigned = torch.where(positive, targets.labels, self.num_classes)
                terms = terms * self.class_weights[assigned][..., None]
            cls = terms.sum()
        cls = cls / n_pos
        if positive.any():
            where = points.expand(len(out), -1, -1)[positive]  # (P, 2)
            predicted = to_boxes(where, distances[positive].float())
            giou = paired_generalized_box_iou(predicted, targets.boxes[positive].float())
            box = (1 - giou).sum() / n_pos
            ctr_target = centerness(targets.distances[positive])
            ctr_loss = (
                F.binary_cross_entropy_with_logits(ctr[positive], ctr_target, reduction="sum")
                / n_pos
            )
        else:  # no object in the batch: nothing to regress (kept in the graph, at 0)
            box = ctr_loss = distances.sum() * 0.0 + ctr.sum() * 0.0
        return {"cls_loss": cls, "box_loss": box, "ctr_loss": ctr_loss}

    @torch.no_grad()
    def decode(self, out: Tensor, points: Tensor, height: int, width: int) -> list[dict]:
        """Per image ``{"boxes", "scores", "labels"}``: thresholded, top-k, clipped, NMS-ed."""
        detections = []
        for image in out.float():
            prob = image[:, : self.num_classes].sigmoid()  # (A, K)
            where, label = (prob > self.score_threshold).nonzero(as_tuple=True)
            score = (prob[where, label] * image[where, -1].sigmoid()).sqrt()
            score, order = score.topk(min(self.pre_nms_top_k, len(score)))
            where, label = where[order], label[order]
            boxes = to_boxes(points[where], image[where, -5:-1])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            keep = batched_nms(boxes, score, label, self.nms_iou, self.max_detections)
            detections.append({"boxes": boxes[keep], "scores": score[keep], "labels": label[keep]})
        return detections

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared_step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x, boxes, labels, crowd = unpack(batch)
        height, width = x.shape[-2:]
        points, lower, upper = self.geometry(height, width, x.device)
        out = self(x)
        trained = torch.where(crowd, PAD, labels)  # a crowd region is never a target
        targets = assign(points, lower, upper, boxes, trained)
        parts = self.losses(out, points, targets)
        loss = sum(parts.values())
        getattr(self, f"{stage}_loss").update(loss.detach(), len(x))
        for name, value in parts.items():
            getattr(self, f"{stage}_{name}").update(value.detach(), len(x))
        if stage in SCORED:
            detections = self.decode(out.detach(), points, height, width)
            truth = ground_truth(boxes, labels, crowd)
            getattr(self, f"{stage}_map").update(detections, truth)
            hit = covered(targets, labels.shape[1])[trained != PAD]
            getattr(self, f"{stage}_gt_covered").update(hit.float())
            trainer = self._trainer
            if stage == "val" and trainer is not None and not trainer.sanity_checking:
                self._keep_for_grid(x, truth, detections)
        return loss

    # -- Lightning hooks -----------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        if self.trainer._logger_connector.should_update_logs:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._validation_sets = self.validation_sets()
        self._grid = []

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step(batch, self._validation_sets[dataloader_idx])

    def on_test_epoch_start(self) -> None:
        self._test_stages = [tested_stage(name) for name in self.test_sets()]

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._shared_step(batch, self._test_stages[dataloader_idx])

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        for stage in self._validation_sets:
            self._log_epoch(stage)
        kept, self._grid = self._grid, []
        logger = self.logger
        if not kept or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if isinstance(logger, MLFlowLogger):
            x = torch.cat([k[0] for k in kept])
            truth = [t for k in kept for t in k[1]]
            detections = [d for k in kept for d in k[2]]
            grid = box_grid(x, truth, detections, self.class_names)
            artifact = f"detection/epoch_{self.current_epoch:03d}.png"
            logger.experiment.log_image(logger.run_id, grid, artifact_file=artifact)

    def on_test_epoch_end(self) -> None:
        for stage in self._test_stages:
            self._log_epoch(stage)

    def _log_epoch(self, stage: str) -> None:
        """The epoch's losses and, on a scored stage, its COCO AP (per class at test) and
        ``gt_covered``."""
        values = {f"{stage}/loss": getattr(self, f"{stage}_loss").compute()}
        for part in PARTS:
            values[f"{stage}/{part}"] = getattr(self, f"{stage}_{part}").compute()
            getattr(self, f"{stage}_{part}").reset()
        getattr(self, f"{stage}_loss").reset()
        if stage in SCORED:
            values[f"{stage}/gt_covered"] = getattr(self, f"{stage}_gt_covered").compute()
            getattr(self, f"{stage}_gt_covered").reset()
            metric = getattr(self, f"{stage}_map")
            named = named_average_precision(metric.compute(), self.class_names)
            metric.reset()
            per_class = stage.startswith(("test", "tested_"))
            for key, value in named.items():
                if key in ALWAYS or (math.isfinite(value) and (per_class or "/" not in key)):
                    values[f"{stage}/{key}"] = torch.tensor(value)
        shown = {f"{stage}/loss", f"{stage}/map"}
        self.log_dict({k: v for k, v in values.items() if k in shown}, prog_bar=True)
        self.log_dict({k: v for k, v in values.items() if k not in shown})

    # -- the box grid --------------------------------------------------------------------------
    def _keep_for_grid(self, x: Tensor, truth: list[dict], detections: list[dict]) -> None:
        """The first ``grid_size`` validation images of the epoch, with boxes and detections."""
        n = self.grid_size - sum(len(k[0]) for k in self._grid)
        if n > 0:
            on_cpu = [[{k: v.cpu() for k, v in d.items()} for d in ds[:n]]
                      for ds in (truth, detections)]  # fmt: skip
            self._grid.append((x[:n].detach().cpu(), *on_cpu))


def box_grid(x: Tensor, truth: list[dict], detections: list[dict], class_names: list[str]) -> Any:
    """A PIL image, two tiles per image: the ground-truth boxes, and the detections scoring at
    least :data:`DRAWN_SCORE` (each image min-max scaled per channel, up-scaled to at least
    ``OVERLAY_SIDE`` px; one :data:`PALETTE` colour per class)."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes, make_grid

    x = x.float()
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    images = ((x - low) / (high - low).clamp_min(1e-6) * 255).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = max(1, math.ceil(OVERLAY_SIDE / images.shape[-1]))
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    tiles = []
    for image, true, found in zip(images, truth, detections, strict=True):
        shown = found["scores"] >= DRAWN_SCORE
        for boxes, labels in ((true["boxes"], true["labels"]),
                              (found["boxes"][shown], found["labels"][shown])):  # fmt: skip
            colours = [PALETTE[int(c) % len(PALETTE)] for c in labels]
            names = [class_names[int(c)] for c in labels]
            if not len(boxes):  # nothing to draw (torchvision would warn)
                tiles.append(image)
                continue
            tiles.append(draw_bounding_boxes(image, boxes * scale, names, colours))
    grid = make_grid(torch.stack(tiles), nrow=2, padding=2, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())
