"""The inference benchmark: a fused RepVGG copy that matches the trained net, a trained net left
exactly as it was, plain timing for nets without reparameterize(), the batch the test step sees,
one-line config errors, and the metrics in the MLflow run of a real training run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn

from ablab.blocks.repvgg import RepVGGBlock
from ablab.errors import ConfigError
from ablab.training.benchmark import (
    InferenceBenchmark,
    first_test_loader,
    model_inputs,
    timing_batch,
)
from conftest import run_module, tracking_uri
from injected import SAFETY_TIMEOUT_S

TINY_REPVGG = ["model=repvgg_small", "model.depths=[1,1,2]", "model.widths=[8,8,16]"]
BENCH_KEYS = {
    "bench/ms_per_batch",
    "bench/ms_iqr",
    "bench/images_per_s",
    "bench/threads",
    "bench/batch_size",
}
FUSED_KEYS = {
    "bench/fused/ms_per_batch",
    "bench/fused/ms_iqr",
    "bench/fused/images_per_s",
    "bench/fused/speedup",
    "reparam/max_abs_diff",
    "reparam/max_rel_diff",
    "reparam/agreement",
    "reparam/params",
    "reparam/fused_params",
}
FAST = {"min_run_time": 0.02, "rounds": 2}  # timing quality is not under test here


def build_task(compose_cfg, *overrides: str) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """Data module and classifier task from the real config (no MLflow run)."""
    with compose_cfg("data=digits", *overrides) as cfg:
        data = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
        task = instantiate(
            cfg.task,
            net=instantiate(cfg.model),
            optimizer=instantiate(cfg.optimizer),
            scheduler=None,
            loss=instantiate(cfg.loss),
        )
    return data, task


def randomize_batch_norms(net: nn.Module, seed: int = 0) -> None:
    """Running stats and affine parameters far from (0, 1): BN folding must do real work."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))


def trainer(tmp_path: Path, callbacks: list[Callback], steps: int = 3) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        limit_test_batches=2,
        log_every_n_steps=1,
        logger=CSVLogger(tmp_path, name="bench"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def logged(trainer: pl.Trainer) -> dict[str, tuple[int, float]]:
    """Every metric the CSV logger wrote: key -> (step, value)."""
    path = Path(trainer.logger.log_dir) / "metrics.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {
        k: (int(row["step"]), float(v)) for row in rows for k, v in row.items() if v and k != "step"
    }


class Witness(Callback):
    """At ``on_test_end``: optionally put the task in a mixed train/eval mode first, then record
    its modes, weights, buffers and device (and the first test batch the test step received)."""

    def __init__(self, mix: bool = False) -> None:
        self.mix = mix
        self.seen: dict[str, Any] = {}
        self.first_batch: Tensor | None = None
        self.rebuilt: Tensor | None = None

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.first_batch is None:
            self.first_batch = batch[0].clone()

    def on_test_end(self, trainer, pl_module) -> None:
        if self.mix:  # a mode the test loop never leaves behind: every flag must come back
            pl_module.train()
            pl_module.net.head.eval()
            self.rebuilt = next(model_inputs(trainer, pl_module, first_test_loader(trainer)))
        self.seen = {
            "modes": {name: m.training for name, m in pl_module.named_modules()},
            "state": {k: v.clone() for k, v in pl_module.state_dict().items()},
            "device": pl_module.device,
        }


@pytest.fixture(scope="module")
def fitted_repvgg(tmp_path_factory) -> dict[str, Any]:
    """A tiny RepVGG with random BN statistics trained 3 steps on digits, then tested with the
    benchmark between two witnesses."""
    from ablab.config import composed

    tmp = tmp_path_factory.mktemp("repvgg")

    def compose(*overrides: str):
        return composed(list(overrides), output_dir=str(tmp / "run"))

    with pytest.MonkeyPatch.context() as mp:  # the function-scoped isolation is not active yet
        mp.setenv("ABLAB_ROOT", str(tmp))
        data, task = build_task(compose, *TINY_REPVGG)
        randomize_batch_norms(task.net)
        bench = InferenceBenchmark(batch_size=32, **FAST)
        before, after = Witness(mix=True), Witness()
        t = trainer(tmp, [before, bench, after])
        t.fit(task, datamodule=data)
        t.test(task, datamodule=data, verbose=False)
    return {"trainer": t, "task": task, "bench": bench, "before": before, "after": after}


def test_fused_copy_matches_the_trained_net(fitted_repvgg) -> None:
    metrics = {k: v for k, (_, v) in logged(fitted_repvgg["trainer"]).items()}
    assert metrics.keys() >= BENCH_KEYS | FUSED_KEYS
    assert metrics["reparam/max_abs_diff"] < 1e-4
    assert metrics["reparam/agreement"] == 1.0
    # the copy really is the single-path net: no 1x1 or BN parameters left
    assert metrics["reparam/fused_params"] < metrics["reparam/params"]
    task = fitted_repvgg["task"]
    assert metrics["reparam/params"] == sum(p.numel() for p in task.net.parameters())
    for key in BENCH_KEYS | FUSED_KEYS:
        assert math.isfinite(metrics[key]) and metrics[key] >= 0, key
    for key in BENCH_KEYS | FUSED_KEYS - {"reparam/max_abs_diff", "reparam/max_rel_diff"}:
        assert metrics[key] > 0, key
    assert metrics["bench/threads"] == torch.get_num_threads()
    assert metrics["bench/batch_size"] == 32
    # logged at the step the test metrics are logged at
    steps = logged(fitted_repvgg["trainer"])
    assert steps["bench/ms_per_batch"][0] == steps["test/acc"][0] == 3
    result = fitted_repvgg["bench"].result
    assert result.batch_shape == [32, 1, 28, 28]
    assert len(result.unfused.replicates) == len(result.fused.replicates) == FAST["rounds"]
    assert len(result.unfused.measurement.times) >= FAST["rounds"]


def test_trained_net_is_left_as_it_was(fitted_repvgg) -> None:
    before, after = fitted_repvgg["before"].seen, fitted_repvgg["after"].seen
    assert after["modes"] == before["modes"]
    assert not after["modes"]["net.head"] and after["modes"]["net.stem"]  # the mixed mode
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert after["device"] == before["device"]
    blocks = [m for m in fitted_repvgg["task"].net.modules() if isinstance(m, RepVGGBlock)]
    assert blocks and all(b.fused is None and hasattr(b, "dense") for b in blocks)


def test_timed_batch_is_what_the_test_step_receives(fitted_repvgg) -> None:
    witness = fitted_repvgg["before"]
    assert torch.equal(witness.rebuilt, witness.first_batch)
    assert witness.first_batch.min() < 0  # standardised, not the [0, 1] images


@pytest.mark.parametrize(
    ("overrides", "fused"),
    [(("model=lenet5",), True), (TINY_REPVGG, False)],
    ids=["no_reparameterize", "fused_off"],
)
def test_plain_timing_only(compose_cfg, tmp_path: Path, overrides, fused: bool) -> None:
    data, task = build_task(compose_cfg, *overrides)
    t = trainer(tmp_path, [InferenceBenchmark(batch_size=16, fused=fused, **FAST)], steps=1)
    t.fit(task, datamodule=data)
    t.test(task, datamodule=data, verbose=False)
    keys = {k for k in logged(t) if k.startswith(("bench/", "reparam/"))}
    assert keys == BENCH_KEYS


def test_timing_batch_concatenates_and_repeats() -> None:
    batches = [torch.full((3, 1, 2, 2), float(i)) for i in range(2)]
    assert timing_batch(iter(batches), 4)[:, 0, 0, 0].tolist() == [0, 0, 0, 1]
    # fewer test images than the batch: the test set is repeated
    assert timing_batch(iter(batches), 8)[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"min_run_time": 0}, "min_run_time"),
        ({"rounds": 0}, "rounds"),
        ({"num_threads": 0}, "num_threads"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(kwargs, key: str) -> None:
    with pytest.raises(ConfigError, match=f"callbacks.benchmark.{key}") as err:
        InferenceBenchmark(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_training_run_logs_benchmark_to_mlflow(root: Path) -> None:
    args = [
        "ablab.train",
        "model=repvgg_small",
        "data=digits",
        "trainer=smoke",
        "callbacks=benchmark",
        "callbacks.benchmark.min_run_time=0.1",
    ]
    proc = run_module(args, root, timeout=SAFETY_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri(root))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = run.data.metrics
    assert metrics.keys() >= BENCH_KEYS | FUSED_KEYS
    assert metrics["reparam/agreement"] == 1.0
    assert metrics["bench/batch_size"] == 64
    assert metrics["reparam/fused_params"] < metrics["reparam/params"]
    assert metrics["reparam/params"] == float(run.data.params["complexity.params"])
    run_id = run.info.run_id
    (test_acc,) = client.get_metric_history(run_id, "test/acc")
    (speedup,) = client.get_metric_history(run_id, "bench/fused/speedup")
    assert speedup.step == test_acc.step  # beside the test metrics, once
    local = client.download_artifacts(run_id, "benchmark/inference.json", str(root))
    summary = json.loads(Path(local).read_text())
    assert summary["nets"].keys() == {"unfused", "fused"}
    assert summary["batch_shape"] == [64, 1, 28, 28]
    assert summary["metrics"]["bench/fused/speedup"] == pytest.approx(speedup.value)
