"""A DCGAN on digits through the real entry point: tracked, scored, drawn, resumable.

``python -m ablab.train task=gan``, made tiny: the task picks its nets (DCGAN), its optimizer
(Adam 0.0002, β1 0.5) and its monitored metric (``val/fid``, lower is better); the run logs both
nets' losses, a Fréchet distance and mode coverage from a feature classifier it trains once and
caches, a sample grid per epoch from a fixed noise; after ``kill -9`` a rerun continues the same
MLflow run from ``last.ckpt``, with the cached classifier and the same grid noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ablab.tasks.gan import GRID_SEED
from jobs import histories, killed_then_resumed, pause_at

RUN = [
    "task=gan",
    "trainer=smoke",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=5",
    "trainer.system_metrics_interval=null",
    "data.batch_size=16",
    "generator.base_width=8",
    "discriminator.base_width=8",
    "task.latent_size=16",
    "task.grid_size=16",
    "task.classifier.steps=10",
    "task.eval_samples=64",
]
PER_STEP = ("train/d_loss_step", "train/g_loss_step")


def test_dcgan_on_digits_is_tracked_scored_drawn_and_resumes_after_kill_9(root: Path) -> None:
    # Lightning's global step counts both optimizers' steps: 10 an epoch. Step 24 is in epoch 2,
    # and last.ckpt is from the end of epoch 1 (step 20).
    client, run = killed_then_resumed(root, pause_at(24, root), RUN)
    run_id, params, metrics, tags = (
        run.info.run_id,
        run.data.params,
        run.data.metrics,
        run.data.tags,
    )
    assert (params["task.loss"], params["task.n_critic"]) == ("non_saturating", "1")
    assert (params["task.monitor"], params["task.mode"]) == ("val/fid", "min")
    assert (params["optimizer.lr"], params["optimizer.betas"]) == ("0.0002", "[0.5, 0.999]")
    assert params["generator._target_"] == "ablab.models.gan.DCGANGenerator"
    assert "model._target_" not in params and "loss._target_" not in params
    sizes = [int(params[f"complexity.{n}.params"]) for n in ("generator", "discriminator")]
    assert int(params["complexity.params"]) == sum(sizes)
    history = [m.value for m in client.get_metric_history(run_id, "val/fid")]
    assert len(history) == 3 and metrics["val/fid_best"] == pytest.approx(min(history))
    for key in ("train/d_loss", "train/g_loss", "val/d_loss", "val/g_loss", "test/fid"):
        assert math.isfinite(metrics[key]), key
    assert 0 <= metrics["test/mode_coverage"] <= 10 and metrics["train/d_collapsed"] == 0
    # every batch's losses once: the resumed attempt logged from where the checkpoint was
    for key, values in histories(client, run_id, PER_STEP).items():
        steps = [step for step, _ in values]
        assert len(steps) == 15 and len(set(steps)) == 15, key
    drawn = {a.path for a in client.list_artifacts(run_id, "samples")}
    epochs = [f"epoch_{e:03d}" for e in range(3)]
    assert {f"samples/{e}.png" for e in [*epochs, "test"]} <= drawn
    assert {f"samples/classes_{e}.json" for e in [*epochs, "test"]} <= drawn
    local = client.download_artifacts(run_id, "samples/classes_test.json", str(root))
    histogram = json.loads(Path(local).read_text())
    assert histogram["samples"] == 64 and sum(histogram["counts"].values()) == 64
    # the feature classifier: trained by the first attempt, read back by the second
    assert Path(tags["feature_classifier.path"]).exists()
    assert 0 <= float(tags["feature_classifier.test_acc"]) <= 1
    # the two attempts' logs, numbered by the worker's job counter (other tests came first)
    logs = sorted(root.glob("run-*.log"), key=lambda p: int(p.stem.split("-")[1]))
    first, second = (log.read_text() for log in logs)
    assert "training the feature classifier" in first
    assert "training the feature classifier" not in second
    # the counters and the grid's noise came back from last.ckpt
    (last,) = (root / "outputs" / "runs").glob("*/checkpoints/last.ckpt")
    state = torch.load(last, weights_only=True)["state_dict"]
    assert int(state["d_steps"]) == 15  # 3 epochs of 5 batches, not 5 + 2 epochs from 0
    fixed = torch.randn(16, 16, generator=torch.Generator().manual_seed(GRID_SEED))
    assert torch.equal(state["grid_noise"], fixed)
    assert not any(key.startswith(("scorer", "frechet")) for key in state)
