"""The ``debug`` group: every option passes the override checker and trains a real short run on
digits that is tracked in MLflow like any other (under the experiment ``debug``)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from ablab.config import check_overrides
from ablab.errors import ConfigError
from ablab.training.lifecycle import train
from ablab.training.run import build_trainer
from ablab.training.types import check_types
from conftest import CONF, run_module
from test_train import artifact_paths

OPTIONS = sorted(p.stem for p in (CONF / "debug").glob("*.yaml"))
#: Keeps the short runs short: no batch preview grid, no progress bar.
QUIET = ["callbacks.batch_preview=null", "callbacks.progress_bar=null"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module's runs: creating a sqlite store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('debug')}/mlflow.db"


def debug_run(compose_cfg, store: str, name: str, *overrides: str) -> tuple[MlflowClient, Run]:
    """Train ``debug=<name>`` in this process; the client and the run (the only one tagged so)."""
    with compose_cfg(f"debug={name}", f"logger.tracking_uri={store}", *QUIET, *overrides) as cfg:
        train(cfg)
    client = MlflowClient(store)
    [run] = client.search_runs(
        [client.get_experiment_by_name("debug").experiment_id], f"tags.debug = '{name}'"
    )
    return client, run


def history(client: MlflowClient, run: Run, key: str) -> list[float]:
    metrics = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return [m.value for m in metrics]


def test_the_options_are_the_documented_ones() -> None:
    assert OPTIONS == ["default", "fdr", "limit", "overfit", "profiler"]


@pytest.mark.parametrize("name", OPTIONS)
def test_every_option_passes_the_checker_and_builds_a_cpu_trainer(name, compose_cfg) -> None:
    check_overrides([f"debug={name}"])
    check_overrides([f"debug={name}", "experiment=cifar10_resnet_he2016"])
    with compose_cfg(f"debug={name}", "experiment=cifar10_resnet_he2016") as cfg:
        # the recipe validates every 400 steps: a debug run of fewer still validates
        assert (cfg.trainer.check_val_every_n_epoch, cfg.trainer.val_check_interval) == (1, 1.0)
    with compose_cfg(f"debug={name}") as cfg:
        check_types(cfg)
        assert cfg.experiment_name == "debug"
        assert cfg.logger.tags.debug == name
        assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("cpu", 1)
        assert cfg.trainer.system_metrics_interval is None
        trainer = build_trainer(cfg, logger=False, enable_progress_bar=False)
    assert trainer._detect_anomaly is (name != "profiler")  # it would time its own checks
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_an_unknown_option_is_one_line_naming_the_valid_ones(root) -> None:
    valid = "valid: default, fdr, limit, overfit, profiler"
    with pytest.raises(ConfigError, match=f"^unknown debug option 'nope'; {valid}$"):
        check_overrides(["debug=nope"])
    proc = run_module(["ablab.train", "debug=nope"], root)
    assert proc.returncode == 2
    assert proc.stderr == f"ablab: error: unknown debug option 'nope'; {valid}\n"
    assert not (root / "mlflow.db").exists()


def test_fdr_is_one_batch_per_stage_with_run_params_metrics_and_checkpoint(
    compose_cfg, store, root
) -> None:
    client, run = debug_run(compose_cfg, store, "fdr")
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "debug"
    assert run.data.tags["debug"] == "fdr"
    params = run.data.params
    assert (params["model.act"], params["trainer.limit_train_batches"]) == ("sigmoid", "1")
    assert params["trainer.num_sanity_val_steps"] == "0"
    assert len(history(client, run, "train/loss_step")) == 1  # one training batch
    for key in ("train/loss", "val/acc", "val/loss", "test/acc", "test/loss"):
        assert key in run.data.metrics, key
    checkpoints = (root / "run" / "checkpoints").glob("*.ckpt")  # compose_cfg's job folder
    assert {p.name for p in checkpoints} == {"epoch000.ckpt", "last.ckpt"}
    assert any(p.endswith(".ckpt") for p in artifact_paths(client, run.info.run_id))


def test_default_is_one_epoch(compose_cfg, store) -> None:
    client, run = debug_run(compose_cfg, store, "default")
    assert run.data.params["trainer.detect_anomaly"] == "True"
    assert len(history(client, run, "val/acc")) == 1
    assert len(history(client, run, "train/loss_step")) == 2  # 21 batches, logged every 10


@pytest.mark.slow
def test_limit_runs_few_batches_for_few_epochs(compose_cfg, store) -> None:
    client, run = debug_run(compose_cfg, store, "limit")
    assert len(history(client, run, "val/acc")) == 3
    assert len(history(client, run, "train/loss_step")) == 3 * 5


@pytest.mark.slow
def test_overfit_drives_the_training_loss_down_on_the_same_batches(compose_cfg, store) -> None:
    # ReLU units fit the three batches in 10 epochs (loss 2.28 -> 0.013), the default sigmoid
    # LeNet in about 40 (debug=overfit runs 50).
    with compose_cfg("experiment=cifar10_resnet_he2016", "debug=overfit") as cfg:
        assert not cfg.augmentation.ops  # the same pixels every epoch, whatever the experiment
    with compose_cfg("debug=overfit", "augmentation=basic") as cfg:
        assert cfg.augmentation.ops  # unless the command line asks for augmentation
    client, run = debug_run(
        compose_cfg, store, "overfit", "trainer.max_epochs=10", "model.act=relu"
    )
    steps = history(client, run, "train/loss_step")
    assert len(steps) == 10 * 3  # three batches an epoch
    losses = history(client, run, "train/loss")
    assert losses[-1] < 0.05 * losses[0], losses
    assert history(client, run, "train/acc")[-1] >= 0.98


@pytest.mark.slow
def test_profiler_writes_its_report_into_the_job_folder(compose_cfg, store, root) -> None:
    debug_run(compose_cfg, store, "profiler")
    job = root / "run"  # compose_cfg's job folder
    report = (job / "fit-profile.txt").read_text()
    assert "FIT Profiler Report" in report and "run_training_batch" in report
    assert (job / "test-profile.txt").exists()
