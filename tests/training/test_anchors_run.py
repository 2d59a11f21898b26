"""Anchor clustering through the real entry point: tracked, and after ``kill -9`` continued into the
same MLflow run without changing a single Lloyd step.

``python -m ablab.train task=anchors`` with a small box set: no network, no optimizer; one Lloyd
step per epoch. The tested anchors (``anchors/anchors.json``, the best ``val/mean_iou`` epoch's)
must be exactly ``ablab.ops.kmeans_anchors``'s after as many iterations, although the run was
killed half-way and resumed from its ``last.ckpt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ablab.data.box_sets import BoxSetsDataModule
from ablab.ops import kmeans_anchors
from ablab.tasks.anchors import box_sides
from jobs import killed_then_resumed, pause_at

ANCHORS_RUN = [
    "task=anchors",
    "data.skew=small",
    "data.n_train=400",  # 4 steps an epoch
    "data.n_val=200",
    "data.n_test=200",
    "data.batch_size=100",
    "trainer=smoke",
    "trainer.max_epochs=6",
    "trainer.limit_train_batches=null",  # an epoch is a Lloyd step over every training box
    "trainer.limit_val_batches=null",
    "trainer.limit_test_batches=null",
    "trainer.system_metrics_interval=null",
]


def test_anchors_are_tracked_and_resume_after_kill_9_without_changing_kmeans(root: Path) -> None:
    # killed in epoch 2 (steps 8-11): last.ckpt holds the anchors after 2 Lloyd steps
    client, run = killed_then_resumed(root, pause_at(9, root), ANCHORS_RUN)
    run_id, data = run.info.run_id, run.data
    params, metrics, tags = data.params, data.metrics, data.tags
    task = (params["task.distance"], params["task.method"], params["task.k"])
    assert task == ("iou", "kmeans", "5")
    assert params["complexity.params"] == "0"  # no network
    epochs = int(tags["stopped_epoch"]) + 1  # 6, or fewer once no box changes cluster
    history = client.get_metric_history(run_id, "val/mean_iou")
    assert len({m.step for m in history}) == len(history) == epochs  # every epoch's, once
    assert metrics["val/mean_iou_best"] == max(m.value for m in history)
    changed = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/changed"))
    assert changed[0][1] == 400 and len(changed) == epochs  # the first step places every box
    for name in ("mean_iou", "mean_iou_small", "mean_iou_large", "anchor_area_share_large"):
        assert 0 <= metrics[f"test/{name}"] <= 1 and f"tested_val/{name}" in metrics
    assert metrics["tested_val/mean_iou"] == metrics["val/mean_iou_best"]

    # the tested anchors: k-means after tested_epoch + 1 iterations, bit for bit
    boxes = BoxSetsDataModule(skew="small", n_train=400, n_val=200, n_test=200)
    wh = box_sides(*boxes.train_targets())
    iterations = int(tags["tested_epoch"]) + 1
    expected = kmeans_anchors(wh, 5, "iou", seed=0, iters=iterations).anchors
    local = client.download_artifacts(run_id, "anchors/anchors.json", str(root))
    assert torch.equal(torch.tensor(json.loads(Path(local).read_text()), dtype=torch.float64),
                       expected)  # fmt: skip
    assert "anchors/anchors.png" in [a.path for a in client.list_artifacts(run_id, "anchors")]
