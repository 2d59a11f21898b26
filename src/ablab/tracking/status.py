"""The MLflow run's final status says how the run ended: FINISHED, FAILED (why) or KILLED (by what).

Lightning marks a run FAILED on Ctrl-C and FINISHED after every ``fit``/``test``; the status set
here, after everything else, is the one that stays.

Preemption: SIGTERM (``scontrol requeue``, a cluster reclaiming the node, ``kill``) and SIGUSR2
(submitit's warning before a time limit) do not cut a training step short. Training stops at the
end of the current batch, ``last.ckpt`` is written, the run ends KILLED and tagged ``preempted``
(never FINISHED), and the handler that was there before (submitit's requeue) runs last. The next
attempt of the job continues from that checkpoint into the same run. SIGINT (Ctrl-C) stops at
once.

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
from pathlib import Path
from typing import Any

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
#: Tag set when a preemption signal stopped the run after saving ``last.ckpt``.
PREEMPTED = "preempted"
#: Signals that ask training to stop at the next batch boundary, keeping its state.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


@dataclass
class RunOutcome:
    """How a tracked block ended; ``failure`` is ``oom``, ``nonfinite_loss`` or ``exception``."""

    run_id: str | None
    status: str = "RUNNING"
    failure: str | None = None
    error: str | None = None
    killed_by: str | None = None
    #: While ``fit`` runs, preemption signals are deferred to the next batch boundary.
    deferring: bool = False
    #: The checkpoint written when a preemption signal stopped training.
    preempted_checkpoint: str | None = None


class Preempted(KeyboardInterrupt):
    """Training stopped on a preemption signal after saving its checkpoint; rerun to continue."""

    def __init__(self, signal_name: str, message: str = "") -> None:
        super().__init__(message or signal_name)
        self.signal_name = signal_name


class Preemption(Callback):
    """Stop at a batch boundary on a preemption signal and save ``last.ckpt`` first.

    SIGTERM is Lightning's own business (it raises at the end of the batch, on every rank);
    SIGUSR2 stops here, at ``on_train_batch_end``. Either way the checkpoint is written in
    ``on_exception``, on every rank (a DDP save is collective), by Lightning's checkpoint I/O,
    which writes to a temporary file and renames it: a kill mid-save leaves the old file.
    """

    def __init__(self, outcome: RunOutcome, received: list[str], checkpoint: Path) -> None:
        self.outcome, self.received, self.checkpoint = outcome, received, checkpoint

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.outcome.deferring = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.outcome.deferring = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.received and self.received[0] != "SIGTERM":
            raise Preempted(self.received[0])

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.outcome.deferring = False
        if not self.received or self.received[0] == "SIGINT":
            return  # Ctrl-C lands mid-step: its state is not one to resume from
        trainer.save_checkpoint(self.checkpoint)
        self.outcome.preempted_checkpoint = str(self.checkpoint)


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
    checkpoint: Path | None = None,
) -> Iterator[RunOutcome]:
    """Create the logger's run (on global rank 0 only), and on exit set its final status and tags.

    SIGINT and SIGTERM raise ``KeyboardInterrupt`` inside the block (Lightning then shuts down
    cleanly, saving what it had) and end the run KILLED with a ``killed_by`` tag.
    ``system_metrics_interval`` (seconds) samples CPU, memory, disk, network and GPU into
    ``system/*`` metrics while the block runs; ``None`` turns that off. With a multi-process
    ``trainer`` the other ranks get the run id during ``fit`` and report their own failures.
    With ``checkpoint`` (a ``last.ckpt`` path) and a ``trainer``, preemption signals during
    ``fit`` stop training at a batch boundary and save that checkpoint first.
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
    if trainer is not None and checkpoint is not None:
        trainer.callbacks.append(Preemption(outcome, received, checkpoint))

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum).name)
        if outcome.deferring and signum != signal.SIGINT:
            return  # fit stops at the end of this batch, after saving its checkpoint
        raise KeyboardInterrupt(received[-1])

    in_main = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGINT, *PREEMPTION_SIGNALS)
    previous = {s: signal.signal(s, on_signal) for s in handled} if in_main else {}
    try:
        yield outcome
        outcome.status = "FINISHED"
    except BaseException as exc:
        if received or isinstance(exc, KeyboardInterrupt):
            outcome.status, outcome.killed_by = "KILLED", received[0] if received else "SIGINT"
            if outcome.preempted_checkpoint:
                if rank == 0:
                    client.set_tag(outcome.run_id, PREEMPTED, outcome.killed_by)
                raise Preempted(
                    outcome.killed_by,
                    f"{outcome.killed_by}: stopped after saving {outcome.preempted_checkpoint}; "
                    "run the job again to continue it",
                ) from exc
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
        chained = previous.get(signal.Signals[outcome.killed_by]) if outcome.killed_by else None
        if outcome.preempted_checkpoint and callable(chained):
            chained(signal.Signals[outcome.killed_by], None)  # e.g. submitit: requeue, then exit
        if late:
            signal.raise_signal(signal.Signals[late[0]])


def tag_experiment_kind(client: MlflowClient, experiment_id: str) -> None:
    """MLflow 3's UI opens untagged experiments in its GenAI view; these are training runs."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND in experiment.tags:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, "custom_model_development")
    except MlflowException:
        # A parallel job tagged it between our read and write (a unique-key violation on a
        # PostgreSQL-backed server); anything else is re-raised.
        if EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
            raise


def clear_end_tags(client: MlflowClient, run_id: str) -> None:
    """Drop how an earlier attempt of a resumed run ended: this attempt's end replaces it."""
    tags = client.get_run(run_id).data.tags
    for key in (*END_TAGS, PREEMPTED):
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


#: ``killed_by`` of a run whose process died without ending it (kill -9, OOM killer, lost node).
PROCESS_GONE = "process_gone"


def end_lost_run(client: MlflowClient, run_id: str) -> None:
    """End a RUNNING run whose process is gone: KILLED, ``killed_by=process_gone``.

    Only for a run known dead (its job lock is free): a later attempt of the job that resumes it
    sets it RUNNING again and clears the tag.
    """
    client.set_tag(run_id, "killed_by", PROCESS_GONE)
    client.set_terminated(run_id, "KILLED")
