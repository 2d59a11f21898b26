"""Anchor boxes as a training run: YOLOv2's dimension clusters (Redmon & Farhadi 2017, "YOLO9000:
Better, Faster, Stronger", section "Dimension Clusters"), k-means over the training boxes'
(width, height) pairs, trained, tracked and resumed like any other task.

There is no network and no optimizer: the state is the k anchors (a checkpointed buffer, (k, 2)
(w, h) in pixels), and training is Lloyd's algorithm, one step per epoch, built from the pieces of
:func:`ablab.ops.kmeans_anchors` itself:

- at fit start (not when resuming: the anchors then come from the checkpoint), k-means++ seeding
  (:func:`ablab.ops.anchors.seed_anchors`) on the training split's boxes (``train_targets()``,
  padding and crowd regions left out), seeded with ``seed`` (``seeds.init``);
- every training batch assigns its boxes to their nearest anchor
  (:func:`~ablab.ops.anchors.nearest_anchor`, d = 1 − IoU of centre-aligned boxes or Euclidean,
  ``distance``) and adds each cluster's Σ(w, h) and count to the epoch's (:class:`LloydStep`, a
  torchmetrics state, so DDP ranks sum theirs);
- once the epoch's training batches are all seen, each anchor moves to its members' mean
  (:func:`~ablab.ops.anchors.centroid_step`; an empty cluster keeps its anchor): at the start of
  the epoch's validation, so that validation scores, and the epoch's checkpoint holds, the moved
  anchors; at the training epoch's end when the epoch has no validation.

The sums are exact: float32 box sides of at least a pixel are multiples of 2⁻²³ px, which float64
adds without rounding while the sum stays below 2³⁰ px, so the batches' order does not change
them, and after E epochs the anchors are ``kmeans_anchors(wh, k, distance, seed, iters=E)``'s
(``wh`` the same float32 sides in float64, :func:`box_sides`), bit for bit. ``train/changed`` counts the
boxes whose nearest anchor differs from the previous epoch's (every box at the first step):
k-means has converged when it is 0, and the epochs after that leave the anchors as they are
(``conf/task/anchors.yaml`` stops the run there). ``train/mean_iou`` is the training boxes' mean
best IoU with the anchors the epoch started with (YOLOv2's "Avg IoU", Table 1). An epoch cut
short (``trainer.limit_train_batches``) steps on the boxes it saw.

``method: hand`` is the baseline: the anchors are ``hand_anchors``, (w, h) pairs as fractions
of the data's ``image_size`` (so one list fits every image size), and never move.

Scores (validation and test loaders), per held-out box (padding and crowds left out) its best
IoU with the anchors, centre-aligned: ``<stage>/mean_iou`` (monitored: the best epoch is the
highest ``val/mean_iou``), ``<stage>/mean_iou_small`` and ``<stage>/mean_iou_large`` over the
boxes whose area w·h is at most / above the training boxes' median area (the mean of the two
middle areas for an even count), and ``<stage>/anchor_area_share_large``, the fraction of
anchors whose area is above that median, and ``<stage>/anchor_log_area``, the mean over the
anchors of log10(area / median area), i.e. log10 of their geometric-mean area in units of the
median box: the claim's "bias toward large boxes" as two numbers (the share moves in steps of
1/k; the log area sees an anchor grow inside its half too).
After testing (on the tested anchors) rank 0 logs ``anchors/anchors.json`` (the anchors as
[w, h] in pixels, by increasing area) and ``anchors/anchors.png`` (the training boxes' (w, h)
with the anchors marked).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from ablab.data.module import TRAIN_EVAL
from ablab.data.shapes_det import PAD, unpack
from ablab.errors import ConfigError, unknown_choice
from ablab.ops.anchors import DISTANCES, centroid_step, iou_wh, nearest_anchor, seed_anchors
from ablab.tasks.base import OptimizerFactory, Task, tested_stage

# Nothing to optimise: Lightning runs the epochs with a stand-in optimizer and skips backward.
warnings.filterwarnings(
    "ignore", message=r"`LightningModule\.configure_optimizers` returned `None`"
)
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")
# Epoch values are torchmetrics' own reductions over DDP ranks.
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(tested_)?(train|train_eval|val|test)/",
    category=PossibleUserWarning,
)

METHODS = ("kmeans", "hand")
#: Stages that score the anchors on held-out boxes: every validation and test loader.
SCORED = ("val", "test", TRAIN_EVAL, tested_stage("val"), tested_stage(TRAIN_EVAL))
#: Per-box means logged by every scored stage (the anchors' area share beside them).
SCORES = ("mean_iou", "mean_iou_small", "mean_iou_large")
ANCHORS_JSON = "anchors/anchors.json"
ANCHORS_FIGURE = "anchors/anchors.png"
#: Training boxes drawn in the figure at most (a seeded subset beyond).
FIGURE_POINTS = 20000


def box_sides(boxes: Tensor, labels: Tensor, crowd: Tensor | None = None) -> Tensor:
    """(w, h) float64 (B, 2) of the rows of padded boxes (N, M, 4) and labels (N, M) that are
    boxes (not padding, not crowd regions): x2 − x1, y2 − y1 in the boxes' dtype, then float64."""
    keep = labels != PAD
    if crowd is not None:
        keep = keep & ~crowd
    rows = boxes[keep]  # (B, 4)
    return (rows[:, 2:] - rows[:, :2]).double()


class LloydStep(Metric):
    """One Lloyd step's sums over the epoch's boxes: per cluster Σ(w, h) (k, 2) and the count
    (k,), and the boxes whose cluster changed; summed over batches and DDP ranks."""

    full_state_update = False

    def __init__(self, k: int) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(k, 2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("changed", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, wh: Tensor, assignment: Tensor, previous: Tensor) -> None:
        """Boxes (B, 2), their cluster now (B,) and under the previous anchors (B,)."""
        self.sums.index_add_(0, assignment, wh.to(self.sums.dtype))
        self.counts += torch.bincount(assignment, minlength=len(self.counts))
        self.changed += (assignment != previous).sum()

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.sums, self.counts, self.changed


class AnchorsModule(Task):
    """anchors ← mean (w, h) of the training boxes nearest to each (d = 1 − IoU or Euclidean),
    one Lloyd step per epoch from a k-means++ seeding; scored by held-out boxes' best IoU."""

    networks: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: dict[str, Any] | None = None,
        *,
        k: int = 5,
        distance: str = "iou",
        method: str = "kmeans",
        hand_anchors: Sequence[Sequence[float]] | None = None,
        seed: int = 0,
        monitor: str = "val/mean_iou",
        mode: Literal["min", "max"] = "max",
    ) -> None:
        if optimizer is not None or scheduler is not None:
            raise ConfigError(
                "task=anchors fits k-means, which has no gradient: an optimizer or scheduler "
                "would be ignored; use optimizer=null scheduler=none"
            )
        if distance not in DISTANCES:
            raise unknown_choice("task.distance", distance, DISTANCES)
        if method not in METHODS:
            raise unknown_choice("task.method", method, METHODS)
        if k < 1:
            raise ConfigError(f"task.k={k}: the number of anchors must be at least 1")
        if hand_anchors is not None:  # a plain list (Hydra passes a ListConfig) before it is saved
            hand_anchors = hand_anchor_list(hand_anchors, k, checked=method == "hand")
        elif method == "hand":
            raise ConfigError(
                f"task.method=hand needs task.hand_anchors: {k} (w, h) pairs as fractions of "
                "data.image_size"
            )
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        self.k, self.distance, self.method, self.seed = k, distance, method, seed
        self.hand_anchors = hand_anchors
        # The trained state, in every checkpoint: the anchors (k, 2) in pixels, those of the step
        # before (for train/changed), the steps taken, whether they were seeded, and the
        # training boxes' median area (what small and large mean in the scores).
        self.register_buffer("anchors", torch.zeros(k, 2, dtype=torch.float64))
        self.register_buffer("previous_anchors", torch.zeros(k, 2, dtype=torch.float64))
        self.register_buffer("lloyd_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("seeded", torch.zeros((), dtype=torch.bool))
        self.register_buffer("median_area", torch.tensor(float("nan"), dtype=torch.float64))
        self.lloyd = LloydStep(k)
        self.train_mean_iou = MeanMetric()
        self.scores = nn.ModuleDict(
            {stage: nn.ModuleDict({name: MeanMetric() for name in SCORES}) for stage in SCORED}
        )
        self._train_wh: Tensor | None = None
        self._changed = 0

    # -- before the run ------------------------------------------------------------------------
    def example_inputs(self, datamodule: Any) -> dict[str, Any]:
        return {}  # no network to trace

    def check(self, datamodule: Any) -> None:
        """The data must have training boxes: at least ``k`` distinct (w, h) pairs for k-means,
        an ``image_size`` for hand anchors (fractions of it). Reads the training boxes once."""
        if getattr(datamodule, "target", None) != "boxes" or not callable(
            getattr(datamodule, "train_targets", None)
        ):
            raise ConfigError(
                "task=anchors clusters the training boxes of box data "
                f"(data=box_sets|shapes_det|coco_json); {type(datamodule).__name__} has none"
            )
        wh = box_sides(*datamodule.train_targets()).cpu()  # crowds are padding there already
        if not len(wh):
            raise ConfigError("task=anchors: the training split has no boxes to cluster")
        if not (wh > 0).all():
            raise ConfigError(
                f"task=anchors: {int((wh <= 0).any(dim=1).sum())} training boxes have no width or "
                "no height; every box needs w > 0 and h > 0"
            )
        if self.method == "kmeans":
            distinct = len(torch.unique(wh, dim=0))
            if self.k > distinct:
                raise ConfigError(
                    f"task.k={self.k} is more than the {distinct} distinct (w, h) pairs of the "
                    "training boxes; use a smaller task.k"
                )
        else:
            size = getattr(datamodule, "image_size", None)
            if size is None:
                raise ConfigError(
                    f"task.method=hand: task.hand_anchors are fractions of data.image_size, "
                    f"which {type(datamodule).__name__} does not have"
                )
            self.anchors.copy_(torch.tensor(self.hand_anchors, dtype=torch.float64) * size)
        self.median_area.fill_(torch.quantile(wh.prod(dim=1), 0.5).item())
        self._train_wh = wh

    def validation_metric_names(self) -> set[str]:
        return {f"val/{name}" for name in (*SCORES, "anchor_area_share_large", "anchor_log_area")}

    def training_metric_names(self) -> set[str]:
        return {"train/changed", "train/mean_iou"}

    def configure_optimizers(self) -> None:
        return None  # k-means has no parameters

    # -- training: one Lloyd step per epoch ----------------------------------------------------
    def on_fit_start(self) -> None:
        if self._train_wh is None:  # fitted without the core, which calls check() first
            self.check(self.trainer.datamodule)
        if self.method == "kmeans" and not self.seeded:
            self.anchors.copy_(seed_anchors(self._train_wh, self.k, self.distance, self.seed))
            self.seeded.fill_(True)

    def on_train_epoch_start(self) -> None:
        self.lloyd.reset()
        self.train_mean_iou.reset()
        self._changed = 0

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        _, boxes, labels, crowd = unpack(batch)
        wh = box_sides(boxes, labels, crowd)
        if not len(wh):
            return None
        self.train_mean_iou.update(iou_wh(wh, self.anchors).max(dim=1).values)
        if self.method == "kmeans":
            nearest = nearest_anchor(wh, self.anchors, self.distance)  # (B,)
            if self.lloyd_steps > 0:
                previous = nearest_anchor(wh, self.previous_anchors, self.distance)
            else:  # the first step: every box joins a cluster
                previous = torch.full_like(nearest, -1)
            self.lloyd.update(wh, nearest, previous)
        return None

    def lloyd_step(self) -> None:
        """Move each anchor to the mean (w, h) of the epoch's boxes nearest to it, once per
        epoch, when the epoch's training batches are all seen (nothing when none were)."""
        if not self.lloyd.update_called:
            return
        sums, counts, changed = self.lloyd.compute()
        self.previous_anchors.copy_(self.anchors)
        self.anchors.copy_(centroid_step(self.anchors, sums, counts))
        self.lloyd_steps += 1
        self._changed = int(changed)
        self.lloyd.reset()

    def on_train_epoch_end(self) -> None:
        self.lloyd_step()  # unless validation took it
        values = {"train/changed": float(self._changed)}
        if self.train_mean_iou.update_called:
            values["train/mean_iou"] = self.train_mean_iou.compute()
        self.log_dict(values, prog_bar=True)

    # -- validation and test: held-out boxes' best IoU -----------------------------------------
    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.lloyd_step()  # validation scores the anchors this epoch moved to
        self._validation_sets = self.validation_sets()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score(batch, self._validation_sets[dataloader_idx])

    def on_validation_epoch_end(self) -> None:
        for stage in self._validation_sets:
            self._log_scores(stage)

    def on_test_epoch_start(self) -> None:
        self._test_stages = [tested_stage(name) for name in self.test_sets()]

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score(batch, self._test_stages[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        for stage in self._test_stages:
            self._log_scores(stage)
        logger = self.logger
        if self.trainer.is_global_zero and isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            client.log_text(run_id, json.dumps(self.sorted_anchors().tolist()), ANCHORS_JSON)
            if self._train_wh is not None:
                client.log_figure(run_id, self.figure(), ANCHORS_FIGURE)

    def _score(self, batch: Sequence[Tensor], stage: str) -> None:
        """Each box's best IoU with the anchors, into the stage's means (all, small, large)."""
        _, boxes, labels, crowd = unpack(batch)
        wh = box_sides(boxes, labels, crowd)
        if not len(wh):
            return
        best = iou_wh(wh, self.anchors).max(dim=1).values  # (B,)
        large = wh.prod(dim=1) > self.median_area
        means = self.scores[stage]
        means["mean_iou"].update(best)
        for name, part in (("mean_iou_small", ~large), ("mean_iou_large", large)):
            if part.any():
                means[name].update(best[part])

    def _log_scores(self, stage: str) -> None:
        means = self.scores[stage]
        values = {f"{stage}/{n}": m.compute() for n, m in means.items() if m.update_called}
        values[f"{stage}/anchor_area_share_large"] = self.area_share_large()
        values[f"{stage}/anchor_log_area"] = self.log_area()
        for metric in means.values():
            metric.reset()
        shown = f"{stage}/mean_iou"
        self.log_dict({k: v for k, v in values.items() if k == shown}, prog_bar=True)
        self.log_dict({k: v for k, v in values.items() if k != shown})

    # -- the anchors ---------------------------------------------------------------------------
    def area_share_large(self) -> Tensor:
        """The fraction of anchors whose area is above the training boxes' median area."""
        return (self.anchors.prod(dim=1) > self.median_area).float().mean()

    def log_area(self) -> Tensor:
        """mean_j log10(w_j h_j / m) over the anchors, m the training boxes' median area."""
        return torch.log10(self.anchors.prod(dim=1) / self.median_area).mean().float()

    def sorted_anchors(self) -> Tensor:
        """The anchors (k, 2) by increasing area, on the CPU."""
        anchors = self.anchors.detach().cpu()
        return anchors[torch.argsort(anchors.prod(dim=1), stable=True)]

    def figure(self) -> Figure:
        """The training boxes' (w, h) (at most :data:`FIGURE_POINTS`, a seeded subset), the
        anchors, and the median area w·h = m that splits small from large, on log axes."""
        wh = self._train_wh
        if len(wh) > FIGURE_POINTS:
            keep = torch.randperm(len(wh), generator=torch.Generator().manual_seed(0))
            wh = wh[keep[:FIGURE_POINTS]]
        anchors = self.sorted_anchors()
        fig = Figure(figsize=(5, 4.5))
        ax = fig.subplots()
        ax.scatter(wh[:, 0], wh[:, 1], s=3, alpha=0.3, color="0.5", label="training boxes")
        ax.scatter(anchors[:, 0], anchors[:, 1], s=80, marker="x", color="C3", label="anchors")
        median = float(self.median_area)
        xs = torch.logspace(float(wh.min().log10()), float(wh.max().log10()), 50)
        ax.plot(xs, median / xs, "--", color="C0", lw=1, label="median training area")
        low, high = float(wh.min()) / 1.2, float(wh.max()) * 1.2
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # pixels as plain numbers, not powers of 10
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        how = f"k-means, d = {self.distance}" if self.method == "kmeans" else "hand-picked"
        ax.set_title(f"{self.k} anchors, {how}", fontsize=9)
        ax.legend(fontsize=7)
        return fig


def hand_anchor_list(
    anchors: Sequence[Sequence[float]], k: int, checked: bool
) -> list[list[float]]:
    """``task.hand_anchors`` as a plain list of [w, h] floats; when ``checked`` (they are the
    anchors), exactly ``k`` pairs of fractions in (0, 1], else a one-line error."""
    try:
        pairs = [[float(v) for v in pair] for pair in anchors]
    except (TypeError, ValueError):
        raise ConfigError(
            f"task.hand_anchors must be a list of [w, h] pairs of numbers, got {anchors}"
        ) from None
    if checked:
        shape = (len(pairs), *{len(p) for p in pairs})
        if shape != (k, 2):
            raise ConfigError(
                f"task.hand_anchors must be task.k={k} [w, h] pairs (fractions of "
                f"data.image_size), got {len(pairs)} entries of length "
                f"{sorted({len(p) for p in pairs})}"
            )
        if not all(0 < v <= 1 for p in pairs for v in p):
            raise ConfigError(
                "task.hand_anchors are fractions of data.image_size: every w and h in (0, 1], "
                f"got {pairs}"
            )
    return pairs
