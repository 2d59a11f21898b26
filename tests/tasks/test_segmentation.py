"""The segmentation task: IoU, Dice and pixel accuracy over an epoch's pixels against a hand count,
absent classes, ignored pixels, and the one-line refusals of data and losses that do not fit."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from tests.data.formats import make_pet_folder
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ablab.data.mask_folder import MaskFolderDataModule
from ablab.data.shapes import ShapesDataModule
from ablab.errors import ConfigError
from ablab.tasks.segmentation import SegmentationModule, overlay_grid
from ablab.training.losses import balanced_cross_entropy, focal_loss

#: A 3x4 target and prediction over 5 classes. Counted by hand, per class (TP, FP, FN):
#: 0: (3, 1, 2) → IoU 3/6, Dice 6/9;  1: (4, 1, 0) → IoU 4/5, Dice 8/9;
#: 2: (2, 0, 1) → IoU 2/3, Dice 4/5;  3: predicted once, never a target (0, 1, 0) → IoU 0, Dice 0;
#: 4: neither a target nor predicted → no IoU or Dice: left out of both means.
TARGET = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1], [2, 2, 2, 1]])
PRED = torch.tensor([[0, 0, 1, 1], [0, 3, 1, 1], [2, 2, 0, 1]])
IOU = {"0": 3 / 6, "1": 4 / 5, "2": 2 / 3, "3": 0.0}
DICE = {"0": 6 / 9, "1": 8 / 9, "2": 4 / 5, "3": 0.0}
CORRECT = 3 + 4 + 2  # of 12 pixels


def task(net: nn.Module | None = None, **kw) -> SegmentationModule:
    """By default its net passes the input through: the batches are the logits themselves."""
    args = {"num_classes": 5, "loss": nn.CrossEntropyLoss(), **kw}
    net = nn.Identity() if net is None else net
    return SegmentationModule(net, partial(torch.optim.SGD, lr=0.0), None, **args)


def validate(module: SegmentationModule, logits: torch.Tensor, target: torch.Tensor) -> dict:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and small datasets
        (scores,) = trainer.validate(
            module, DataLoader(TensorDataset(logits, target), batch_size=1)
        )
    return scores


def as_batches(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3x4 maps as two 3x2 images (one per batch): the scores must count pixels over the
    epoch, not average the two batches' scores."""
    logits = 10 * nn.functional.one_hot(pred, 5).permute(2, 0, 1).float()  # (5, 3, 4)
    return (
        torch.stack([logits[..., :2], logits[..., 2:]]),
        torch.stack([target[:, :2], target[:, 2:]]),
    )


def test_scores_are_counted_over_the_epochs_pixels() -> None:
    logits, target = as_batches(PRED, TARGET)
    scores = validate(task(), logits, target)
    assert scores["val/miou"] == pytest.approx(sum(IOU.values()) / 4)
    assert scores["val/dice"] == pytest.approx(sum(DICE.values()) / 4)
    assert scores["val/pixel_acc"] == pytest.approx(CORRECT / 12)
    for name, iou in IOU.items():
        assert scores[f"val/iou/{name}"] == pytest.approx(iou)
    assert "val/iou/4" not in scores  # absent from targets and predictions: no IoU, not logged
    loss = nn.functional.cross_entropy(logits, target)  # both batches have 6 pixels
    assert scores["val/loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_ignored_pixels_count_nowhere() -> None:
    """Pixels labelled ignore_index (a value that is no class) count in no score and no loss."""
    target = TARGET.clone()
    target[0, 2] = target[1, 1] = 255  # class 0's two misses, predicted 1 and 3
    logits, target = as_batches(PRED, target)
    module = task(ignore_index=255)
    module.check(datamodule(num_classes=5))  # sets the loss's ignore_index
    scores = validate(module, logits, target)
    # counted again: 0: (3, 1, 0) → IoU 3/4;  1: (4, 0, 0) → 1;  2: (2, 0, 1) → 2/3;
    # 3: its one prediction is on an ignored pixel → absent, left out
    assert scores["val/miou"] == pytest.approx((3 / 4 + 1 + 2 / 3) / 3)
    assert scores["val/pixel_acc"] == pytest.approx(CORRECT / 10)
    assert "val/iou/3" not in scores
    kept = target != 255
    loss = nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[kept], target[kept])
    assert scores["val/loss"] == pytest.approx(loss.item(), rel=1e-5)


class Masks:
    """A stand-in data module with masks."""

    target = "mask"

    def __init__(self, num_classes: int, class_names: list[str] | None = None) -> None:
        self.num_classes = num_classes
        self.class_names = class_names or [str(c) for c in range(num_classes)]
        self.train_class_counts = [10 * (c + 1) for c in range(num_classes)]

    def example_input(self) -> torch.Tensor:
        """What the identity net turns into logits of the right shape."""
        return torch.zeros(2, self.num_classes, 4, 4)


def datamodule(num_classes: int = 5) -> Masks:
    return Masks(num_classes)


def test_check_takes_the_datas_class_names_for_the_per_class_metrics() -> None:
    module = task(net=nn.Conv2d(3, 5, 1))  # a score per class and pixel of the RGB shapes
    module.check(ShapesDataModule(n_train=4, n_val=2, n_test=2))
    names = module.validation_metric_names()
    assert names == {"val/miou", "val/dice", "val/pixel_acc", "val/loss"}
    # a class's IoU is not logged in an epoch without it: no monitor may wait for it
    with pytest.raises(ConfigError, match=r"task\.monitor=val/iou/thin is not a validation metric"):
        task(net=nn.Conv2d(3, 5, 1), monitor="val/iou/thin").check_monitors({})
    assert module.training_metric_names() == {"train/loss", "train/miou", "train/dice",
                                              "train/pixel_acc"}  # fmt: skip


def test_a_class_count_loss_gets_the_pixel_counts() -> None:
    module = task(num_classes=3, loss=partial(balanced_cross_entropy))
    module.check(datamodule(3))  # pixels per class: 10, 20, 30
    assert torch.allclose(module.loss_fn.weight, torch.tensor([60 / 30, 60 / 60, 60 / 90]))


@pytest.mark.parametrize(
    ("classes", "data", "loss", "message"),
    [
        (5, object(), None, "task=segmentation needs data with a class mask per image "
                            "(data=shapes|mask_folder); object yields no masks"),
        (5, Masks(3), None, "task.num_classes=5 but the data has 3 classes"),
        (5, Masks(5), focal_loss(), "loss FocalLoss cannot score per-pixel logits (N, C, H, W) "
                                    "against masks (N, H, W)"),
        (5, Masks(5), nn.MSELoss(), "loss MSELoss cannot score per-pixel logits"),
        (2, Masks(2), nn.MSELoss(), "loss MSELoss cannot score"),  # it would broadcast: a warning
    ],
)  # fmt: skip
def test_data_or_loss_that_does_not_fit_is_one_line(classes, data, loss, message) -> None:
    module = task(num_classes=classes, **({"loss": loss} if loss is not None else {}))
    with pytest.raises(ConfigError) as err:
        module.check(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_ignored_label_is_no_class_and_needs_a_loss_that_ignores() -> None:
    with pytest.raises(ConfigError, match=r"task.ignore_index=2 is one of the 5 classes"):
        task(ignore_index=2)
    module = task(ignore_index=255)
    module.loss_fn = focal_loss()
    with pytest.raises(ConfigError, match="loss FocalLoss cannot ignore pixels"):
        module.check(Masks(5))


def test_the_overlay_has_a_row_per_image_of_image_truth_and_prediction() -> None:
    x = torch.randn(3, 1, 16, 16)  # standardised, any range; grey images drawn in RGB
    mask, pred = TARGET.repeat(3, 6, 4)[:, :16], PRED.repeat(3, 6, 4)[:, :16]  # (3, 16, 16)
    grid = overlay_grid(x, mask, pred, 5)
    side = 16 * 6  # up-scaled to at least 96 px
    assert grid.size == (3 * side + 4 * 2, 3 * side + 4 * 2)  # 3 tiles a row, 2 px padding
    assert grid.mode == "RGB"


def test_a_mask_value_beyond_the_classes_is_one_line_before_the_run(tmp_path) -> None:
    """The Pet trimaps with two classes: the border value 2 is refused unless it is ignored."""
    make_pet_folder(tmp_path, n_trainval=10, n_test=2)
    data = MaskFolderDataModule(root=str(tmp_path), num_classes=2, class_names=["pet", "bg"],
                                image_size=16)  # fmt: skip
    data.setup("fit")
    with pytest.raises(ConfigError) as err:
        task(num_classes=2).check(data)
    assert str(err.value) == (
        "the data's masks hold the value 2, which is none of the 2 classes; set "
        "task.ignore_index=2 to leave those pixels out, or give the data more classes "
        "(data.num_classes)"
    )
    net = nn.Conv2d(3, 2, 1)  # a score per class and pixel
    task(net=net, num_classes=2, ignore_index=2).check(data)  # ignored: accepted


@pytest.mark.parametrize(
    ("net", "message"),
    [
        (nn.Sequential(nn.Flatten(), nn.LazyLinear(5)), "outputs (2, 5), not a score per class "
                                                        "and pixel (2, 5, 32, 32)"),
        (nn.Conv2d(3, 3, 1), "outputs (2, 3, 32, 32), not a score per class and pixel"),
        (nn.Conv2d(1, 5, 1), "cannot take the data's example input (2, 3, 32, 32)"),
    ],
    ids=["classifier", "autoencoder", "other-channels"],
)  # fmt: skip
def test_a_net_that_gives_no_score_per_pixel_is_one_line_before_the_run(net, message) -> None:
    """A classifier's (N, C) or an autoencoder's image would fail at the first loss, after the
    run exists: one dry forward on the data's example images refuses them."""
    with pytest.raises(ConfigError) as err:
        task(net=net).check(ShapesDataModule(n_train=4, n_val=2, n_test=2))
    assert message in str(err.value) and "\n" not in str(err.value)
