"""A denoising autoencoder through the real entry point: tracked, probed, drawn, resumable; and a
fast step of every reconstruction option through the real build.

``python -m ablab.train task=reconstruction model=ae_conv data.noise=gaussian
data.noise_level=0.3``: the task picks its loss (MSE) and its monitored metric (``val/noisy_mse``,
lower is better, with noise), logs pixel scores on clean and fixed noisy held-out images, a
linear probe's accuracy at test and a reconstruction grid per epoch; after ``kill -9`` a rerun
continues the same MLflow run, and the training noise its draws, from ``last.ckpt``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_components import assert_trained, fit

from jobs import killed_then_resumed, pause_at

RUN = [
    "task=reconstruction",
    "model=ae_conv",
    "data.noise=gaussian",
    "data.noise_level=0.3",
    "model.code_size=8",
    "model.widths=[8,16]",
    "trainer=smoke",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=5",
    "trainer.system_metrics_interval=null",
]


def test_denoising_autoencoder_is_tracked_probed_drawn_and_resumes_after_kill_9(root: Path) -> None:
    # epoch 2: last.ckpt is from step 5
    client, run = killed_then_resumed(root, pause_at(7, root), RUN)
    params, metrics = run.data.params, run.data.metrics
    assert params["loss._target_"] == "torch.nn.MSELoss"
    assert (params["task.monitor"], params["task.mode"]) == ("val/noisy_mse", "min")
    history = [m.value for m in client.get_metric_history(run.info.run_id, "val/noisy_mse")]
    assert len(history) == 3 and metrics["val/noisy_mse_best"] == pytest.approx(min(history))
    for key in ("val/mse", "val/psnr", "val/noisy_psnr", "test/mse", "test/noisy_mse"):
        assert math.isfinite(metrics[key]), key
    for key in ("test/probe_acc", "test/probe_acc_noisy", "tested_val/probe_acc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    drawn = {a.path for a in client.list_artifacts(run.info.run_id, "reconstruction")}
    assert drawn == {f"reconstruction/epoch_{e:03d}.png" for e in range(3)}
    # the training noise resumed its draws: 3 epochs of 5 batches, not 5 + 2 epochs from 0
    (last,) = (root / "outputs" / "runs").glob("*/checkpoints/last.ckpt")
    assert int(torch.load(last, weights_only=True)["state_dict"]["noise_draws"]) == 15


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module: creating a sqlite store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('reconstruction')}/mlflow.db"


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=ae_mlp"], ["model=ae_conv", "model.norm=none"],
        ["data.noise=gaussian", "data.noise_level=0.3"], ["data.noise=mask", "data.noise_level=0.5"],
        ["data.noise=mask", "data.noise_level=0.5", "task.denoise=false"],
    ],
    ids=lambda o: " ".join(o),
)  # fmt: skip
def test_every_reconstruction_option_trains(overrides, compose_cfg, store) -> None:
    model = next((o for o in overrides if o.startswith("model=")), "model=ae_conv")
    small = ["model.hidden=[32]"] if model == "model=ae_mlp" else ["model.widths=[8,16]"]
    others = [o for o in overrides if o != model]
    run = fit(
        compose_cfg, store, "task=reconstruction", model, "model.code_size=8", *small, *others
    )
    assert_trained(run)
    metrics = run.trainer.callback_metrics
    assert torch.isfinite(metrics[run.task.monitor]), run.task.monitor
    noisy = run.datamodule.corruption.active
    assert run.task.monitor == ("val/noisy_mse" if noisy else "val/mse")
    assert ("val/noisy_psnr" in metrics) == noisy
    # training draws noise only when denoising noisy data
    assert int(run.task.noise_draws) == (2 if noisy and run.task.denoise else 0)
