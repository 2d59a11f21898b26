"""A U-Net on procedural shapes through the real entry point: tracked, with per-class IoU and the
overlay artifact, resumable after ``kill -9``; an input size the poolings cannot halve is one
line and no run. Every new option (up, skip, mask folders) trains a fast step through the real
build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from test_components import assert_trained, fit
from tests.data.formats import make_pet_folder

from conftest import run_module, tracking_uri
from jobs import killed_then_resumed, pause_at

SEGMENTATION = ["task=segmentation", "model=unet", "data=shapes"]
#: Tiny shapes and a tiny U-Net: 5 steps an epoch.
TINY = [
    "data.n_train=160",
    "data.n_val=32",
    "data.n_test=32",
    "data.image_size=16",
    "model.depth=2",
    "model.base_width=4",
]
SEGMENTATION_RUN = [
    *SEGMENTATION,
    *TINY,
    "task.overlay_size=4",
    "trainer=smoke",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "trainer.limit_test_batches=null",
    "trainer.system_metrics_interval=null",
]


def test_unet_on_shapes_is_tracked_and_resumes_after_kill_9(root: Path) -> None:
    # epoch 2: last.ckpt is from step 5
    client, run = killed_then_resumed(root, pause_at(7, root), SEGMENTATION_RUN)
    run_id, params, metrics = run.info.run_id, run.data.params, run.data.metrics
    assert (params["task.monitor"], params["task.mode"]) == ("val/miou", "max")
    assert params["model._target_"] == "ablab.models.UNet"
    counts = [int(c) for c in params["data.train_class_counts"].strip("[]").split(",")]
    assert len(counts) == 5 and sum(counts) == 160 * 16 * 16  # pixels per class
    history = [m.value for m in client.get_metric_history(run_id, "val/miou")]
    assert len(history) == 3 and metrics["val/miou_best"] == pytest.approx(max(history))
    assert len(client.get_metric_history(run_id, "val/iou/thin")) == 3
    assert {"val/dice", "val/pixel_acc", "train/miou", "test/miou", "test/iou/thin",
            "tested_val/miou"} <= set(metrics)  # fmt: skip
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/miou", "val/pixel_acc"))
    # an overlay per validation epoch, the killed attempt's included; none for the sanity check
    overlays = [a.path for a in client.list_artifacts(run_id, "segmentation")]
    assert overlays == [f"segmentation/epoch_{e:03d}.png" for e in range(3)]
    local = client.download_artifacts(run_id, overlays[-1], str(root))
    from PIL import Image

    with Image.open(local) as grid:  # 4 rows of image, truth, prediction at 96 px
        assert grid.size == (3 * 96 + 4 * 2, 4 * 96 + 5 * 2)


def test_a_size_the_unet_cannot_halve_is_one_line_and_no_run(root: Path) -> None:
    args = ["ablab.train", *SEGMENTATION, "data.image_size=30", "trainer=smoke"]
    proc = run_module(args, root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        "ablab: error: model=unet with depth 3 needs input height and width divisible by 8; got "
        "30x30: use data.image_size=24 or 32 (or a smaller model.depth)"
    )
    assert not (root / "mlflow.db").exists() and not (root / "outputs").exists()
    client = MlflowClient(tracking_uri(root))
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module: creating a sqlite store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('segmentation')}/mlflow.db"


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.up=bilinear"],
        ["model.skip=none"],
        ["model.norm=none", "model.act=leaky_relu"],
        ["loss=balanced_cross_entropy"],
        ["data.train_eval=true"],
        ["data=mask_folder"],
        # the trimaps' border left out: two classes, the third value ignored
        ["data=mask_folder", "data.num_classes=2", "data.class_names=[pet,background]",
         "task.ignore_index=2"],
    ],
    ids=lambda o: " ".join(o),
)  # fmt: skip
def test_every_segmentation_option_trains(overrides, compose_cfg, store, tmp_path) -> None:
    if overrides[0] == "data=mask_folder":
        make_pet_folder(tmp_path / "pets", n_trainval=20, n_test=4)
        data = [f"data.root={tmp_path / 'pets'}", "data.image_size=16", "data.batch_size=4",
                "data.num_workers=0"]  # fmt: skip
        base = ["task=segmentation", "model=unet", "model.depth=2", "model.base_width=4", *data]
    else:
        base = [*SEGMENTATION, *TINY]
    run = fit(compose_cfg, store, *base, *overrides)
    assert_trained(run)
    metrics = run.trainer.callback_metrics
    assert torch.isfinite(metrics["val/miou"]) and 0.0 <= metrics["val/miou"] <= 1.0
    if "task.ignore_index=2" in overrides:
        assert run.task.loss_fn.ignore_index == 2
        assert {"val/iou/pet", "val/iou/background"} <= set(metrics)
        assert "val/iou/border" not in metrics
    if "data.train_eval=true" in overrides:
        assert "train_eval/miou" in metrics
