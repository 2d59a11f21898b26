"""DDP on CPU (``trainer=ddp_cpu``: two gloo processes started by Lightning): one MLflow run per
job, created by rank 0; logged metrics are the all-reduced values; ``data.batch_size`` is the
global batch; a rank that raises ends the run FAILED with its error."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.entities import Run
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import DDPStrategy
from sklearn.metrics import f1_score, recall_score

from ablab.config import composed
from ablab.errors import ConfigError
from ablab.training.run import build
from conftest import run_module, tracking_uri

REPO = Path(__file__).resolve().parents[2]
BATCH = 128  # global: each of the two ranks loads 64
DDP = [
    "trainer=ddp_cpu",
    "trainer.max_epochs=1",
    "model.act=relu",  # learns within the epoch: each rank's half of a split scores differently
    f"data.batch_size={BATCH}",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
]


#: Tests that read the one shared DDP run: kept on one xdist worker so it runs once.
shared_run = pytest.mark.xdist_group("ddp_run")


class RaiseOnRank(Callback):
    """Raise ``RuntimeError`` on global rank ``rank`` only, once training reaches ``step``."""

    def __init__(self, rank: int = 1, step: int = 1) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise RuntimeError(f"injected failure on rank {trainer.global_rank}")


def ddp_train(root: Path, *overrides: str):
    """``python -m ablab.train trainer=ddp_cpu …`` in a subprocess; rank 1 is its child."""
    with pytest.MonkeyPatch.context() as mp:  # the ranks import callbacks defined in tests/
        paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        return run_module(["ablab.train", *DDP, *overrides], root, timeout=600)


def all_runs(root: Path) -> list[Run]:
    client = MlflowClient(tracking_uri(root))
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory) -> Path:
    """One finished 1-epoch DDP run (LeNet on digits), shared by the tests that read it."""
    root = tmp_path_factory.mktemp("ddp")
    proc = ddp_train(root, "trainer.system_metrics_interval=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


@pytest.fixture(scope="module")
def expected(ddp_root: Path) -> dict[str, float]:
    """Single-process evaluation of the run's checkpoint on the full val and test splits."""
    # one epoch: last.ckpt holds the weights that were validated and tested (the best ones)
    (checkpoint,) = ddp_root.glob("outputs/runs/*/checkpoints/last.ckpt")
    with composed([*DDP], output_dir=str(ddp_root / "eval")) as cfg:
        datamodule = instantiate(cfg.data, augmentation=instantiate(cfg.augmentation))
        net = instantiate(cfg.model)
    datamodule.setup("fit")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    net.load_state_dict(
        {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    )
    net.eval()
    out = {}
    for split in ("val", "test"):
        x, y = datamodule.splits[split].tensors
        assert len(y) % 2 == 0  # else DistributedSampler pads a rank with a repeated sample
        with torch.no_grad():
            logits = net(datamodule.standardize(x))
        correct = (logits.argmax(1) == y).float()
        out[f"{split}/acc"] = correct.mean().item()
        out[f"{split}/loss"] = F.cross_entropy(logits, y).item()
        # DistributedSampler without shuffling gives rank 0 samples 0, 2, 4, …
        out[f"{split}/acc_rank0"] = correct[0::2].mean().item()
        out[f"{split}/loss_rank0"] = F.cross_entropy(logits[0::2], y[0::2]).item()
        pred = logits.argmax(1)
        out[f"{split}/f1_macro"] = f1_score(y, pred, average="macro")
        out[f"{split}/f1_macro_rank0"] = f1_score(y[0::2], pred[0::2], average="macro")
        out[f"{split}/recall_macro"] = recall_score(y, pred, average="macro")
        for c, recall in enumerate(recall_score(y, pred, average=None)):
            out[f"{split}/recall/{c}"] = recall
    out["train_size"] = len(datamodule.splits["train"])
    return out


@shared_run
@pytest.mark.slow
def test_one_run_from_rank_zero_in_one_folder(ddp_root: Path) -> None:
    (run,) = all_runs(ddp_root)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.strategy"] == "ddp"
    # rank 1 re-ran the entry point inside rank 0's run folder: no second folder or run
    (folder,) = ddp_root.glob("outputs/runs/*")
    assert (folder / "train_ddp_process_1.log").is_file()
    assert run.data.tags["hydra_output_dir"] == str(folder)


@shared_run
@pytest.mark.slow
def test_metrics_are_reduced_over_both_ranks(ddp_root: Path, expected: dict[str, float]) -> None:
    """Each rank sees half of the val/test split; the logged accuracy is over all of it, also
    when test scores validation again (tested_val, the same weights: one epoch)."""
    (run,) = all_runs(ddp_root)
    for split in ("val", "test"):
        assert expected[f"{split}/acc"] != expected[f"{split}/acc_rank0"]  # halves differ here
        logged = run.data.metrics[f"{split}/acc"]
        assert logged == pytest.approx(expected[f"{split}/acc"], abs=1e-6), split
    assert run.data.metrics["tested_val/acc"] == run.data.metrics["val/acc"]
    assert run.data.tags["tested_weights"] == "best val/acc checkpoint (epoch 0)"
    assert run.data.tags["stopped"] == "max_epochs at epoch 0"


@shared_run
@pytest.mark.slow
def test_per_class_metrics_are_over_both_ranks(ddp_root: Path, expected: dict[str, float]) -> None:
    """Macro F1, macro recall and per-class recall are torchmetrics states synced over the ranks
    before they are logged: they match single-process scores of the whole split."""
    (run,) = all_runs(ddp_root)
    for split in ("val", "test"):
        assert expected[f"{split}/f1_macro"] != pytest.approx(expected[f"{split}/f1_macro_rank0"])
        keys = ["f1_macro", "recall_macro", *(f"recall/{c}" for c in range(10))]
        for key in (f"{split}/{k}" for k in keys):
            assert run.data.metrics[key] == pytest.approx(expected[key], abs=1e-6), key


@shared_run
@pytest.mark.slow
def test_loss_is_reduced_over_both_ranks(ddp_root: Path, expected: dict[str, float]) -> None:
    (run,) = all_runs(ddp_root)
    assert expected["val/loss"] != pytest.approx(expected["val/loss_rank0"], rel=1e-3)
    assert run.data.metrics["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-5)


@shared_run
@pytest.mark.slow
def test_global_batch_is_split_across_ranks(ddp_root: Path, expected: dict[str, float]) -> None:
    (run,) = all_runs(ddp_root)
    steps = len(
        MlflowClient(tracking_uri(ddp_root)).get_metric_history(run.info.run_id, "train/loss_step")
    )
    per_rank_samples = math.ceil(expected["train_size"] / 2)  # DistributedSampler's share
    assert steps == math.ceil(per_rank_samples / (BATCH // 2))
    assert steps != math.ceil(per_rank_samples / BATCH)  # what an unsplit batch would give


@shared_run
@pytest.mark.slow
def test_system_metrics_attached_once(ddp_root: Path) -> None:
    (run,) = all_runs(ddp_root)
    history = MlflowClient(tracking_uri(ddp_root)).get_metric_history(
        run.info.run_id, "system/cpu_utilization_percentage"
    )
    assert history
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps))  # one monitor (rank 0), not one per rank


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0])
def test_a_failing_rank_fails_the_run_with_its_error(rank: int, root: Path) -> None:
    """The other rank then fails too, on the broken collective; the first error is the one kept."""
    crash = f"+callbacks.crash={{_target_: tests.training.test_ddp.RaiseOnRank, rank: {rank}}}"
    proc = ddp_train(root, "trainer.limit_train_batches=4", crash)
    assert proc.returncode != 0
    (run,) = all_runs(root)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == f"injected failure on rank {rank}"
    assert run.data.tags["failure"] == "exception"
    assert run.data.tags.get("ended_by_rank") == (str(rank) if rank else None)
    client = MlflowClient(tracking_uri(root))
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "error")]
    assert ("error/traceback_rank1.txt" if rank else "error/traceback.txt") in artifacts


def test_ddp_cpu_is_two_gloo_processes_splitting_the_batch(compose_cfg) -> None:
    with compose_cfg("trainer=ddp_cpu", "data.batch_size=64") as cfg:
        run = build(cfg)
    strategy = run.trainer.strategy
    assert isinstance(strategy, DDPStrategy) and run.trainer.world_size == 2
    assert strategy._get_process_group_backend() == "gloo"
    assert not strategy._ddp_kwargs.get("find_unused_parameters", False)
    run.datamodule.trainer = run.trainer
    assert run.datamodule.train_dataloader().batch_size == 32
    assert run.datamodule.val_dataloader().batch_size == 32


def test_global_batch_must_divide_over_ranks(compose_cfg, root: Path) -> None:
    bad = pytest.raises(ConfigError, match=r"data.batch_size=63 .* over 2 processes")
    with compose_cfg("trainer=ddp_cpu", "data.batch_size=63") as cfg, bad:
        build(cfg)
    assert not all_runs(root)  # refused before any run


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_multirun_refuses_a_strategy_that_reruns_the_command_line(compose_cfg, strategy) -> None:
    overrides = ("hydra.mode=MULTIRUN", "trainer=ddp_cpu", f"trainer.strategy={strategy}")
    with compose_cfg(*overrides) as cfg:
        if strategy == "ddp":  # its children re-run argv, i.e. the whole sweep
            with pytest.raises(ConfigError, match="ddp_spawn"):
                build(cfg)
        else:  # spawned processes run a function, not the command line
            assert build(cfg).trainer.world_size == 2
