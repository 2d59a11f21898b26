"""Semantic segmentation: one class per pixel, scored by intersection over union.

The network (a U-Net, or any module mapping (N, C, H, W) images to (N, classes, H, W) logits) is
injected, the loss comes from the ``loss`` group (cross-entropy over pixels by default), and the
data must yield a class mask per image (``data=shapes``, ``data=mask_folder``).

Every stage logs the batch-size-weighted ``<stage>/loss`` and, over the whole epoch (torchmetrics,
reduced over every DDP rank at ``compute()``):

- ``miou``: the mean over classes of IoU_c = TP_c / (TP_c + FP_c + FN_c), with TP/FP/FN counted
  over every pixel of the epoch (one confusion matrix, the PASCAL VOC definition) — not a mean
  of per-image IoUs;
- ``dice``: the mean over classes of Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c) (the per-class F1
  score, Sørensen–Dice), from the same counts;
- ``pixel_acc``: the fraction of pixels whose arg-max class is right;

and the held-out stages (``val``, ``test``, ``tested_val``) also ``iou/<class name>``, to the
logger only. Pixels labelled ``ignore_index`` count nowhere (neither the loss nor any metric);
an ignored label is no class (PASCAL VOC's 255, or C for data whose masks hold C + 1 values), so
it must lie outside [0, num_classes).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)
from torchmetrics.wrappers import ClasswiseWrapper
from torchvision.utils import draw_segmentation_masks, make_grid

from ablab.data.module import TRAIN_EVAL
from ablab.errors import ConfigError
from ablab.tasks.base import OptimizerFactory, StagedTask, bind_class_counts, tested_stage

# Epoch values are computed by torchmetrics over every DDP rank (see the classifier).
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(tested_)?(train|train_eval|val|test)/"
    r"(loss|miou|dice|pixel_acc|iou/.+)'",
    category=PossibleUserWarning,
)

STAGES = ("train", "val", "test", TRAIN_EVAL, tested_stage("val"), tested_stage(TRAIN_EVAL))
#: Stages that also score IoU per class: the held-out ones.
CLASS_SCORED = ("val", "test", tested_stage("val"))
#: Overlay colours, one per class (cycled beyond ten): distinct hues, class 0 first.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
#: Each overlay tile is shown at least this many pixels wide (nearest-neighbour up-scaling).
OVERLAY_SIDE = 96


class SegmentationModule(StagedTask):
    """logits = net(x), (N, classes, H, W); loss = loss_fn(logits, mask) for mask (N, H, W);
    per-pixel metrics logged as ``<stage>/<name>``.

    Classes absent from an epoch: a class that is neither in any target nor predicted anywhere
    has no IoU or Dice (0 / 0); it is left out of ``miou`` and ``dice`` (the mean runs over the
    classes that occur) and its ``iou/<class>`` is not logged for that epoch. A class predicted
    but absent from the targets scores IoU 0 (all its pixels are false positives).

    At the end of every validation epoch (not the sanity check), with an MLflow logger, rank 0
    logs ``segmentation/epoch_NNN.png``: one row per image for the first ``overlay_size``
    validation images (of rank 0's share under DDP), the image, the ground truth over it and the
    prediction over it.
    """

    components: ClassVar[dict[str, str]] = {"loss": "loss"}

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        loss: nn.Module,
        num_classes: int,
        ignore_index: int | None = None,
        overlay_size: int = 8,
        monitor: str = "val/miou",
        mode: Literal["min", "max"] = "max",
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        if num_classes < 2:
            raise ConfigError(f"task.num_classes={num_classes}: segmentation needs at least 2")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ConfigError(
                f"task.ignore_index={ignore_index} is one of the {num_classes} classes; an "
                f"ignored label is no class: use a value outside [0, {num_classes}) (e.g. 255), "
                "with data.num_classes and data.class_names leaving it out"
            )
        if overlay_size < 0:
            raise ConfigError(f"task.overlay_size={overlay_size} must be >= 0 (0: no overlays)")
        self.net, self.loss_fn = net, loss
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.overlay_size = overlay_size
        for stage in STAGES:
            # Training checks no arguments per step (the loss has checked the targets already).
            common = {"ignore_index": ignore_index, "validate_args": stage != "train"}
            metrics = {
                "miou": MulticlassJaccardIndex(num_classes, **common),
                "dice": MulticlassF1Score(num_classes, average="macro", **common),
                "pixel_acc": MulticlassAccuracy(num_classes, average="micro", **common),
            }
            setattr(self, f"{stage}_metrics", MetricCollection(metrics, prefix=f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric())
        self.class_names = [str(c) for c in range(num_classes)]
        self._make_class_metrics()
        self._overlay: list[tuple[Tensor, Tensor, Tensor]] = []

    def _make_class_metrics(self) -> None:
        """``iou/<class name>`` of every held-out stage: one IoU per class from the epoch's
        confusion matrix; 0 / 0 (a class neither present nor predicted) is NaN, not logged."""
        for stage in CLASS_SCORED:
            iou = MulticlassJaccardIndex(
                self.num_classes,
                average=None,
                ignore_index=self.ignore_index,
                zero_division=math.nan,
            )
            per_class = {"iou": ClasswiseWrapper(iou, labels=self.class_names, prefix="iou/")}
            setattr(self, f"{stage}_class_metrics", MetricCollection(per_class, prefix=f"{stage}/"))

    def check(self, datamodule: Any) -> None:
        """The data must yield class masks of this many classes; a class-count loss gets the
        training split's pixel counts per class; the loss must take (N, C, H, W) logits with
        (N, H, W) targets (and ignore ``ignore_index``), tried once on dummy ones."""
        if getattr(datamodule, "target", None) != "mask":
            raise ConfigError(
                "task=segmentation needs data with a class mask per image "
                f"(data=shapes|mask_folder); {type(datamodule).__name__} yields no masks"
            )
        have = datamodule.num_classes
        if have != self.num_classes:
            raise ConfigError(
                f"task.num_classes={self.num_classes} but the data has {have} classes; use "
                f"task.num_classes={have}"
            )
        names = [str(n) for n in getattr(datamodule, "class_names", self.class_names)]
        if names != self.class_names:
            self.class_names = names
            self._make_class_metrics()
        self.check_mask_values(datamodule)
        self.check_output(datamodule.example_input())
        # Pixel counts: w_c = N / (C · n_c) re-weights pixels as the classifier's images.
        self.loss_fn = bind_class_counts(self.loss_fn, datamodule, self.num_classes)
        if self.ignore_index is not None:
            if not hasattr(self.loss_fn, "ignore_index"):
                raise ConfigError(
                    f"task.ignore_index={self.ignore_index} but loss {type(self.loss_fn).__name__} "
                    "cannot ignore pixels; use loss=cross_entropy"
                )
            self.loss_fn.ignore_index = self.ignore_index  # the metrics' pixels, no others
        logits = torch.zeros(2, self.num_classes, 4, 4)
        try:  # once on dummy outputs, so a loss that cannot take them fails before the run
            with warnings.catch_warnings():
                # a loss that only warns, broadcasting the masks against the logits (mse with
                # two classes), would train on nonsense: refused as well
                warnings.simplefilter("error", UserWarning)
                self.loss_fn(logits, torch.zeros(2, 4, 4, dtype=torch.long))
        except (ValueError, RuntimeError, TypeError, UserWarning) as err:
            raise ConfigError(
                f"loss {type(self.loss_fn).__name__} cannot score per-pixel logits "
                f"(N, C, H, W) against masks (N, H, W) ({err}); use loss=cross_entropy, "
                "label_smoothing or balanced_cross_entropy"
            ) from None

    def check_output(self, example: Tensor) -> None:
        """One dry forward on the data's example images (eval mode, batch-norm statistics
        untouched): the net must give (N, num_classes, H, W) logits. A classifier's (N, C) or an
        autoencoder's image would otherwise fail at the first loss, after the run exists."""
        n, _, height, width = example.shape
        wanted = (n, self.num_classes, height, width)
        shape = self.dry_output_shape(self.net, example)
        if shape != wanted:
            raise ConfigError(
                f"model {type(self.net).__name__} outputs {shape}, not a score per class and "
                f"pixel {wanted}: task=segmentation needs a segmentation net (model=unet)"
            )

    def check_mask_values(self, datamodule: Any) -> None:
        """A spot check of the first validation mask: every value a class or ``ignore_index``
        (a mask value beyond the classes would stop validation after the run exists)."""
        splits = getattr(datamodule, "splits", None)
        if not splits or not len(splits["val"]):
            return
        values = splits["val"][0][1].unique()
        stray = values[
            ((values < 0) | (values >= self.num_classes)) & (values != self.ignore_index)
        ]
        if len(stray):
            value = int(stray[0])
            raise ConfigError(
                f"the data's masks hold the value {value}, which is none of the "
                f"{self.num_classes} classes; set task.ignore_index={value} to leave those "
                f"pixels out, or give the data more classes (data.num_classes)"
            )

    def validation_metric_names(self) -> set[str]:
        """What every validation epoch logs: not ``val/iou/<class>``, which an epoch without
        the class leaves out, so a checkpoint or early stopping on it would fail mid-run."""
        return {"val/loss", *self.val_metrics.keys()}

    def training_metric_names(self) -> set[str]:
        return {"train/loss", *self.train_metrics.keys()}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, mask = batch
        logits = self(x)
        loss = self.loss_fn(logits, mask)
        pred = logits.detach().argmax(dim=1)  # (N, H, W): once for every metric
        getattr(self, f"{stage}_metrics").update(pred, mask)
        getattr(self, f"{stage}_loss").update(loss.detach(), len(mask))
        if stage in CLASS_SCORED:
            getattr(self, f"{stage}_class_metrics").update(pred, mask)
        trainer = self._trainer  # None in a bare call (unit tests): no overlay then
        if stage == "val" and trainer is not None and not trainer.sanity_checking:
            self._keep_for_overlay(x, mask, pred)
        return loss

    def epoch_metrics(self, stage: str) -> list[MetricCollection]:
        """The mean scores (on the progress bar); per-class IoU is logged by :meth:`_log_epoch`."""
        return [getattr(self, f"{stage}_metrics")]

    def _log_epoch(self, stage: str) -> None:
        """The stage's means and loss (:meth:`StagedTask._log_epoch`) and, on held-out stages,
        every class's IoU that is defined this epoch (not NaN: see the class docstring)."""
        if stage in CLASS_SCORED:
            per_class = getattr(self, f"{stage}_class_metrics")
            values = per_class.compute()
            self.log_dict({k: v for k, v in values.items() if not torch.isnan(v)})
            per_class.reset()
        super()._log_epoch(stage)

    # -- the overlay artifact ------------------------------------------------------------------
    def _keep_for_overlay(self, x: Tensor, mask: Tensor, pred: Tensor) -> None:
        """The first ``overlay_size`` validation images of the epoch, with masks and predictions."""
        kept = sum(len(k[0]) for k in self._overlay)
        if kept < self.overlay_size:
            n = self.overlay_size - kept
            self._overlay.append((x[:n].detach().cpu(), mask[:n].cpu(), pred[:n].cpu()))

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._overlay = []

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        kept, self._overlay = self._overlay, []
        logger = self.logger
        if not kept or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if not isinstance(logger, MLFlowLogger):
            return
        x, mask, pred = (torch.cat(parts) for parts in zip(*kept, strict=True))
        grid = overlay_grid(x, mask, pred, self.num_classes)
        artifact = f"segmentation/epoch_{self.current_epoch:03d}.png"
        logger.experiment.log_image(logger.run_id, grid, artifact_file=artifact)


def overlay_grid(x: Tensor, mask: Tensor, pred: Tensor, num_classes: int) -> Any:
    """A PIL image with one row per image: the image (each channel min-max scaled to [0, 1], as
    standardised inputs have any range), the mask over it and the prediction over it, each class
    in its :data:`PALETTE` colour (pixels of no class, e.g. ``ignore_index``, left bare)."""
    from PIL import Image

    x = x.float()
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    images = ((x - low) / (high - low).clamp_min(1e-6) * 255).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = max(1, math.ceil(OVERLAY_SIDE / images.shape[-1]))
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    mask = F.interpolate(mask[:, None].float(), scale_factor=scale, mode="nearest")[:, 0].long()
    pred = F.interpolate(pred[:, None].float(), scale_factor=scale, mode="nearest")[:, 0].long()
    classes = torch.arange(num_classes).view(-1, 1, 1)
    colours = [PALETTE[c % len(PALETTE)] for c in range(num_classes)]
    tiles = []
    for image, truth, guess in zip(images, mask, pred, strict=True):
        tiles.append(image)
        for labels in (truth, guess):
            tiles.append(draw_segmentation_masks(image, labels == classes, 0.5, colours))
    grid = make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=255)
    return Image.fromarray(grid.permute(1, 2, 0).numpy())
