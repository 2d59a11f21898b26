"""task=anchors: its epochs are ablab.ops.kmeans_anchors' Lloyd steps, bit for bit (on box sets
and on detection shapes, with and without validation); hand anchors never move; held-out scores
of a case checked by hand; a reloaded checkpoint goes on to the uninterrupted run's anchors; the
real config stops at convergence; bad input is one line."""

from __future__ import annotations

import math
import warnings
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from ablab.data.box_sets import BoxSetsDataModule
from ablab.data.shapes_det import PAD, ShapesDetDataModule
from ablab.errors import ConfigError
from ablab.ops import kmeans_anchors
from ablab.tasks.anchors import AnchorsModule, box_sides
from ablab.training.run import build


def trainer(epochs: int, **kw) -> pl.Trainer:
    kw = {"enable_checkpointing": False, "num_sanity_val_steps": 0, **kw}
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, max_epochs=epochs, **kw)  # fmt: skip


def fit(task: AnchorsModule, data, epochs: int, **kw) -> pl.Trainer:
    task.check(data)  # as the core does, before the run
    run = trainer(epochs, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging intervals
        run.fit(task, datamodule=data)
    return run


def boxes(**kw) -> BoxSetsDataModule:
    dm = BoxSetsDataModule(**{"n_train": 600, "n_val": 200, "n_test": 200, "batch_size": 64,
                              "skew": "small", **kw})  # fmt: skip
    dm.setup("fit")
    return dm


def training_wh(data) -> torch.Tensor:
    return box_sides(*data.train_targets())


@pytest.mark.parametrize("distance", ["iou", "euclidean"])
@pytest.mark.parametrize("validate", [True, False], ids=["validated", "unvalidated"])
def test_e_epochs_are_e_lloyd_steps_of_kmeans_anchors(distance: str, validate: bool) -> None:
    data = boxes(seed=1)
    for epochs in (1, 4):
        task = AnchorsModule(k=5, distance=distance, seed=3)
        run = fit(task, data, epochs, limit_val_batches=None if validate else 0)
        expected = kmeans_anchors(training_wh(data), 5, distance, seed=3, iters=epochs).anchors
        # in shuffled batches of 64, stepped at validation's start or at the epoch's end: the same
        assert torch.equal(task.sorted_anchors(), expected)
        assert int(task.lloyd_steps) == epochs
        if epochs == 1:  # the first step moves every box into a cluster
            assert run.callback_metrics["train/changed"] == 600
    assert 0 < run.callback_metrics["train/changed"] < 600


def test_on_detection_boxes_padding_is_left_out() -> None:
    data = ShapesDetDataModule(n_train=60, n_val=10, n_test=10, batch_size=16)
    data.setup("fit")
    labels = data.train_targets()[1]
    assert (labels == PAD).any()  # padded rows that must not count as boxes
    wh = training_wh(data)
    assert len(wh) == int((labels != PAD).sum()) and (wh >= 1).all()
    task = AnchorsModule(k=4, distance="iou", seed=0)
    fit(task, data, 3)
    assert torch.equal(task.sorted_anchors(), kmeans_anchors(wh, 4, "iou", 0, iters=3).anchors)


def test_hand_anchors_never_move() -> None:
    data = boxes()
    hand = [[0.1, 0.1], [0.2, 0.4], [0.5, 0.25]]
    task = AnchorsModule(k=3, method="hand", hand_anchors=hand)
    run = fit(task, data, 3)
    assert torch.equal(task.anchors, torch.tensor(hand, dtype=torch.float64) * 64)  # fractions
    assert run.callback_metrics["train/changed"] == 0
    assert 0 < run.callback_metrics["train/mean_iou"] < 1


class Known:
    """Box data of a case checked by hand: four training boxes, a 100 px image."""

    target = "boxes"
    image_size = 100

    def train_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        sides = torch.tensor([[5.0, 10.0], [10.0, 10.0], [20.0, 20.0], [40.0, 40.0]])
        corners = torch.cat([torch.zeros(4, 2), sides], dim=1)  # areas 50, 100, 400, 1600
        return corners[:, None], torch.zeros(4, 1, dtype=torch.long)


def box(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y + h]


def test_held_out_scores_of_a_case_checked_by_hand() -> None:
    # anchors (10, 10) and (20, 40) px; the training boxes' median area is (100 + 400) / 2 = 250
    task = AnchorsModule(k=2, method="hand", hand_anchors=[[0.1, 0.1], [0.2, 0.4]])
    task.check(Known())
    assert float(task.median_area) == 250
    # best IoU, centre-aligned: (10, 10) -> 1 | (20, 20) -> 400/800 with (20, 40) |
    # (5, 10) -> 50/100 with (10, 10) | (40, 40) -> 800/1600 with (20, 40). Image 0's third row
    # is padding, image 1's third a crowd region: neither is scored.
    boxes = torch.tensor([[box(0, 0, 10, 10), box(50, 50, 20, 20), box(0, 0, 30, 30)],
                          [box(3, 3, 5, 10), box(10, 20, 40, 40), box(0, 0, 90, 90)]])  # fmt: skip
    labels = torch.tensor([[0, 0, PAD], [0, 0, 0]])
    crowd = torch.tensor([[False, False, False], [False, False, True]])
    loader = DataLoader(TensorDataset(torch.zeros(2, 0), boxes, labels, crowd), batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (scores,) = trainer(1).validate(task, loader, verbose=False)
    assert scores["val/mean_iou"] == pytest.approx((1 + 0.5 + 0.5 + 0.5) / 4)
    assert scores["val/mean_iou_small"] == pytest.approx((1 + 0.5) / 2)  # areas 100, 50 <= 250
    assert scores["val/mean_iou_large"] == pytest.approx(0.5)  # areas 400, 1600
    assert scores["val/anchor_area_share_large"] == 0.5  # 800 > 250, 100 is not
    # log10 of the anchors' geometric-mean area over the median: (log10 0.4 + log10 3.2) / 2
    assert scores["val/anchor_log_area"] == pytest.approx(math.log10(math.sqrt(100 * 800) / 250))


def test_a_reloaded_checkpoint_continues_to_the_uninterrupted_anchors(tmp_path: Path) -> None:
    data = boxes(seed=2)
    whole = AnchorsModule(k=5, seed=4)
    fit(whole, data, 5)
    first = AnchorsModule(k=5, seed=4)
    fit(first, data, 2, enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["lloyd_steps"]) == 2 and bool(state["seeded"])
    resumed = AnchorsModule(k=5, seed=4)  # not seeded again: the anchors come from the checkpoint
    resumed.check(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(5).fit(resumed, datamodule=data, ckpt_path=tmp_path / "last.ckpt")
    assert int(resumed.lloyd_steps) == 5
    assert torch.equal(resumed.anchors, whole.anchors)


def test_the_real_config_runs_kmeans_until_no_box_changes_cluster(compose_cfg) -> None:
    small = ["data.n_train=300", "data.n_val=100", "data.n_test=100", "data.batch_size=100"]
    with compose_cfg("task=anchors", *small, "logger=null", "trainer.accelerator=cpu",
                     "trainer.max_epochs=300", "trainer.enable_model_summary=false",
                     "callbacks.progress_bar=null", "callbacks.model_checkpoint=null") as cfg:  # fmt: skip
        run = build(cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run.trainer.fit(run.task, datamodule=run.datamodule)
    task = run.task
    assert run.trainer.callback_metrics["train/changed"] == 0
    assert int(task.lloyd_steps) == run.trainer.current_epoch < 300  # stopped when converged
    converged = kmeans_anchors(training_wh(run.datamodule), 5, "iou", seed=0)  # to convergence
    assert torch.equal(task.sorted_anchors(), converged.anchors)
    assert run.complexity == {}  # no network traced


class NoBoxes:
    target = "class"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distance": "iuo"}, r"unknown task.distance 'iuo' \(did you mean 'iou'\?\); valid: "
                              r"euclidean, iou"),
        ({"method": "kmean"}, r"unknown task.method 'kmean' \(did you mean 'kmeans'\?\)"),
        ({"k": 0}, r"task.k=0: the number of anchors must be at least 1"),
        ({"method": "hand"}, r"task.method=hand needs task.hand_anchors: 5 \(w, h\) pairs"),
        ({"method": "hand", "k": 2, "hand_anchors": [[0.1, 0.2]]},
         r"task.hand_anchors must be task.k=2 \[w, h\] pairs .*got 1 entries of length \[2\]"),
        ({"method": "hand", "k": 1, "hand_anchors": [[0.1, 0.2, 0.3]]},
         r"got 1 entries of length \[3\]"),
        ({"method": "hand", "k": 1, "hand_anchors": [[0.1, 1.5]]}, r"every w and h in \(0, 1\]"),
        ({"method": "hand", "k": 1, "hand_anchors": [["a", 1]]}, r"a list of \[w, h\] pairs"),
        ({"optimizer": partial(torch.optim.SGD, lr=0.1)}, r"use optimizer=null scheduler=none"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        AnchorsModule(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("task", "data", "message"),
    [
        (partial(AnchorsModule, k=3), NoBoxes, r"task=anchors clusters the training boxes of "
                                               r"box data .*NoBoxes has none"),
        (partial(AnchorsModule, k=5), Known, r"task.k=5 is more than the 4 distinct \(w, h\)"),
    ],
)  # fmt: skip
def test_data_the_task_cannot_cluster_is_refused_before_the_run(task, data, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        task().check(data())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        (["trainer=ddp_cpu"], r"trainer.strategy=ddp "),
        # strategy=auto: Lightning itself picks DDP for more than one device or node
        (["trainer=cpu", "trainer.devices=2"],
         r"trainer.strategy=auto with trainer.devices=2 trainer.num_nodes=1 \(Lightning's ddp\)"),
        (["trainer=cpu", "trainer.num_nodes=2"], r"trainer.strategy=auto .* trainer.num_nodes=2 \(Lightning's ddp\)"),
    ],
    ids=["ddp", "auto-devices", "auto-nodes"],
)  # fmt: skip
def test_ddp_is_refused_in_one_line_before_any_run(
    trainer, message, compose_cfg, tmp_path: Path
) -> None:
    """torch's DDP refuses a module with no trainable parameter at fit start, after the run
    exists: k-means is refused first, with what to use instead."""
    store = tmp_path / "store" / "m.db"
    with (
        compose_cfg("task=anchors", *trainer, f"logger.tracking_uri=sqlite:///{store}") as cfg,
        pytest.raises(ConfigError, match=r"AnchorsModule has no trainable parameter, so "
                                         + message + r".* use trainer=cpu") as error,
    ):  # fmt: skip
        build(cfg)
    assert "\n" not in str(error.value)
    assert not store.parent.exists()  # no store made, so no run
