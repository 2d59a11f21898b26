"""The MLflow run's final status says how the run ended: FINISHED, FAILED (why) or KILLED (by what).

Lightning marks a run FAILED on Ctrl-C and FINISHED after every ``fit``/``test``; the status set
here, after everything else, is the one that stays.

One run per job, however many processes train it: global rank 0 creates the run, attaches MLflow's
system metrics to it and sets its final status. The other ranks create nothing; they learn the run
id from rank 0 once the process group exists, and use it only to report their own failure (the
rank that raises is the one that knows why: rank 0 then sees a broken collective or is killed by
Lightning's launcher, and keeps the first rank's reason).
"""

from __future__ import annotations

import logging
import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger

# MLflow announces every start and stop of the system metrics monitor at INFO; warnings stay.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

EXPERIMENT_KIND = "mlflow.experimentKind"
#: Tag naming the global rank other than 0 whose exception or signal ended the run.
ENDED_BY_RANK = "ended_by_rank"
#: Tags that explain how a run ended.
END_TAGS = ("failure", "error", "killed_by", ENDED_BY_RANK)


@dataclass
class RunOutcome:
    """How a tracked block ended; ``failure`` is ``oom``, ``nonfinite_loss`` or ``exception``."""

    run_id: str | None
    status: str = "RUNNING"
    failure: str | None = None
    error: str | None = None
    killed_by: str | None = None


class ShareRunId(Callback):
    """Broadcast rank 0's run id to every rank when the process group is up (``setup``)."""

    def __init__(self, outcome: RunOutcome) -> None:
        self.outcome = outcome

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.outcome.run_id = trainer.strategy.broadcast(self.outcome.run_id, src=0)


def failure_kind(exc: BaseException) -> str:
    """Classify an exception for the ``failure`` tag."""
    if isinstance(exc, torch.OutOfMemoryError):
        return "oom"
    return getattr(exc, "failure_kind", "exception")


def experiment_client(logger: MLFlowLogger) -> MlflowClient:
    """``logger.experiment``, retried once when a parallel job created the experiment first.

    Lightning looks the experiment up by name and creates it when missing; two sweep jobs that
    start together both miss it, and the second ``create_experiment`` fails with
    RESOURCE_ALREADY_EXISTS. The logger is left uninitialised, so the retry finds it by name.
    """
    try:
        return logger.experiment
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return logger.experiment


@contextmanager
def tracked_run(
    logger: MLFlowLogger,
    trainer: pl.Trainer | None = None,
    *,
    system_metrics_interval: float | None = None,
) -> Iterator[RunOutcome]:
    """Create the logger's run (on global rank 0 only), and on exit set its final status and tags.

    SIGINT and SIGTERM raise ``KeyboardInterrupt`` inside the block (Lightning then shuts down
    cleanly, saving what it had) and end the run KILLED with a ``killed_by`` tag.
    ``system_metrics_interval`` (seconds) samples CPU, memory, disk, network and GPU into
    ``system/*`` metrics while the block runs; ``None`` turns that off. With a multi-process
    ``trainer`` the other ranks get the run id during ``fit`` and report their own failures.
    """
    rank = trainer.global_rank if trainer is not None else 0
    if rank == 0:
        client, outcome = experiment_client(logger), RunOutcome(run_id=logger.run_id)
        tag_experiment_kind(client, logger.experiment_id)
        clear_end_tags(client, outcome.run_id)
    else:  # Lightning's logger has no run here; rank 0 shares its id once the group exists
        client, outcome = MlflowClient(logger._tracking_uri), RunOutcome(run_id=None)
    if trainer is not None and trainer.world_size > 1:
        trainer.callbacks.append(ShareRunId(outcome))
    monitor = None
    if rank == 0 and system_metrics_interval:
        monitor = SystemMetricsMonitor(
            outcome.run_id,
            sampling_interval=system_metrics_interval,
            resume_logging=True,  # a resumed run continues its system/* steps
            tracking_uri=logger._tracking_uri,
        )
        monitor.start()
    received: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(received[-1])

    in_main = threading.current_thread() is threading.main_thread()
    previous = (
        {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    )
    try:
        yield outcome
        outcome.status = "FINISHED"
    except BaseException as exc:
        if received or isinstance(exc, KeyboardInterrupt):
            outcome.status, outcome.killed_by = "KILLED", received[0] if received else "SIGINT"
        else:
            outcome.status, outcome.failure = "FAILED", failure_kind(exc)
            outcome.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:500]
            if outcome.run_id is not None:
                name = "error/traceback.txt" if rank == 0 else f"error/traceback_rank{rank}.txt"
                client.log_text(outcome.run_id, traceback.format_exc(), name)
        raise
    finally:
        late: list[str] = []
        if in_main:  # a signal now must not cut the status update short: note it, act after
            for sig in previous:
                signal.signal(sig, lambda signum, frame: late.append(signal.Signals(signum).name))
        try:
            if monitor is not None:
                monitor.finish()
            if late and outcome.status == "FINISHED":
                outcome.status, outcome.killed_by = "KILLED", late[0]
            if outcome.run_id is not None and (rank == 0 or outcome.status != "FINISHED"):
                shared = trainer is not None and trainer.world_size > 1
                set_final_status(client, outcome, rank, shared)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if late:
            signal.raise_signal(signal.Signals[late[0]])


def tag_experiment_kind(client: MlflowClient, experiment_id: str) -> None:
    """MLflow 3's UI opens untagged experiments in its GenAI view; these are training runs."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, "custom_model_development")


def clear_end_tags(client: MlflowClient, run_id: str) -> None:
    """Drop how an earlier attempt of a resumed run ended: this attempt's end replaces it."""
    tags = client.get_run(run_id).data.tags
    for key in END_TAGS:
        if key in tags:
            client.delete_tag(run_id, key)


def set_final_status(
    client: MlflowClient, outcome: RunOutcome, rank: int, shared: bool = False
) -> None:
    """Tag how the run ended and terminate it.

    With ``shared`` (several ranks) the first rank to explain a failure or kill wins: the other
    ranks only fail after it has exited, on the collective it broke, and must not overwrite it.
    """
    if shared and {"failure", "killed_by"} & client.get_run(outcome.run_id).data.tags.keys():
        return
    values = (outcome.failure, outcome.error, outcome.killed_by, str(rank) if rank else None)
    for key, value in zip(END_TAGS, values, strict=True):
        if value is not None:
            client.set_tag(outcome.run_id, key, value)
    client.set_terminated(outcome.run_id, outcome.status)
