"""A tiny FCOS on procedural shapes through the real entry point: tracked, with COCO AP and the box
grid artifact, resumable after ``kill -9``; an image size the detector cannot take is one line
and no run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import run_module, tracking_uri
from jobs import killed_then_resumed, pause_at

DETECTION = ["task=detection"]  # data=shapes_det and model=fcos follow
#: 80 images of 32 px in batches of 16 (5 steps an epoch), an 8-channel pyramid and head.
TINY = [
    "data.n_train=80",
    "data.n_val=16",
    "data.n_test=16",
    "data.image_size=32",
    "data.batch_size=16",
    "model.backbone.depths=[1,1,1]",
    "model.backbone.widths=[8,8,8]",
    "model.backbone.stem_width=8",
    "model.fpn_channels=8",
    "model.head_convs=1",
]
DETECTION_RUN = [
    *DETECTION,
    *TINY,
    "task.grid_size=4",
    "trainer=smoke",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "trainer.limit_test_batches=null",
    "trainer.system_metrics_interval=null",
]


def test_fcos_on_shapes_is_tracked_and_resumes_after_kill_9(root: Path) -> None:
    # epoch 2: last.ckpt is from step 5
    client, run = killed_then_resumed(root, pause_at(7, root), DETECTION_RUN)
    run_id, params, metrics = run.info.run_id, run.data.params, run.data.metrics
    assert (params["task.monitor"], params["task.mode"]) == ("val/map", "max")
    assert params["model._target_"] == "ablab.models.detector.DenseDetector"
    assert params["model.backbone._target_"] == "ablab.models.ResNet"
    counts = [int(c) for c in params["data.train_class_counts"].strip("[]").split(",")]
    assert len(counts) == 4 and 80 <= sum(counts) <= 80 * 6  # boxes per class
    assert int(params["complexity.macs"]) > 0
    # the detector's parts, traced: what the pyramid costs beside the backbone and the head
    parts = {p: int(params[f"complexity.part.{p}.macs"]) for p in ("backbone", "neck", "cls_tower")}
    assert all(m > 0 for m in parts.values())
    assert sum(parts.values()) < int(params["complexity.macs"])  # plus the logits, the box convs
    history = [m.value for m in client.get_metric_history(run_id, "val/map")]
    assert len(history) == 3 and metrics["val/map_best"] == pytest.approx(max(history))
    assert {"val/map_50", "val/map_75", "val/mar_100", "val/map_small", "val/cls_loss",
            "val/box_loss", "val/ctr_loss", "train/loss", "test/map", "tested_val/map",
            "val/gt_covered", "test/gt_covered"} <= set(
        metrics
    )  # fmt: skip
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/map", "val/map_50", "val/gt_covered"))
    assert any(k.startswith("test/ap/") for k in metrics)  # per class, named, at test
    assert not any(k.startswith("val/ap/") for k in metrics)
    # a box grid per validation epoch, the killed attempt's included; none for the sanity check
    grids = [a.path for a in client.list_artifacts(run_id, "detection")]
    assert grids == [f"detection/epoch_{e:03d}.png" for e in range(3)]
    local = client.download_artifacts(run_id, grids[-1], str(root))
    from PIL import Image

    with Image.open(local) as grid:  # 4 rows of truth and detections at 96 px
        assert grid.size == (2 * 96 + 3 * 2, 4 * 96 + 5 * 2)


def test_a_size_the_detector_cannot_take_is_one_line_and_no_run(root: Path) -> None:
    args = ["ablab.train", *DETECTION, "data.image_size=56", "trainer=smoke"]
    proc = run_module(args, root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        "ablab: error: model=DenseDetector needs input sides divisible by its largest stride 16; "
        "got 56x56: use data.image_size=48 or 64"
    )
    assert not (root / "mlflow.db").exists() and not (root / "outputs").exists()
    client = MlflowClient(tracking_uri(root))
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
