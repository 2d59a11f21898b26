"""One run's life, top to bottom: identify the job, open the store, hold the job folder, find or
create the MLflow run, restore from the run's own checkpoint, train and test, end with a status
that says how it ended. A sweep job's failure policy lives here too.

1. **Identify** the job: its folder (``paths.output_dir``, named after the overrides) and the
   fingerprint of its resolved config.
2. **Store**: checked before anything is built (a server must answer, a path must be
   creatable), so an unreachable or invalid tracking URI is one line within seconds; a new local
   store is created and migrated, under a lock, only once everything has been built.
3. **Hold** the folder (``job.lock``, :class:`ablab.locks.FolderLock`) for the whole run: a
   second start of the same job is refused, and a run left RUNNING whose lock is free is known
   dead (ended KILLED, ``killed_by=process_gone``, then continued).
4. **Find** the folder's run (``job.json``): a FINISHED one is reported, not trained again; an
   unfinished one is continued when its logged params match the config, refused otherwise.
5. **Build** every component (:func:`ablab.training.run.build`), still before any run exists.
6. **Restore** only from a checkpoint written for this run and config
   (:class:`ablab.training.job.CheckpointOwner`); anything else in the folder is set aside.
7. **Train and test** inside :func:`tracked_run`, which creates the run (rank 0), samples system
   metrics, turns signals into a clean stop, and sets the final status.

A start refused before training (a ConfigError) leaves no run and no folder behind.

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

import contextlib
import logging
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from rich.console import Console

from ablab.config import resolved
from ablab.errors import ConfigError
from ablab.locks import FolderLock, process_gone
from ablab.tracking import flatten_params
from ablab.tracking.status import (
    PREEMPTED,
    clear_end_tags,
    end_lost_run,
    set_final_status,
    tag_experiment_kind,
)
from ablab.tracking.store import check_store
from ablab.tracking.sweep import record_job as record_sweep_job
from ablab.training.job import (
    CheckpointOwner,
    JobState,
    clear_checkpoints,
    fingerprint,
    metric_summary,
    previous_attempt,
    recorded_steps,
    set_aside,
)
from ablab.training.run import (
    LAST_CHECKPOINT,
    Run,
    build,
    is_tracked,
    log_run_config,
    refuse_unused_augmentation,
    report,
)
from ablab.training.types import check_types

# MLflow announces every start and stop of the system metrics monitor at INFO; warnings stay.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

#: Signals that ask training to stop at the next batch boundary, keeping its state.
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
#: What Hydra writes into a job folder before the job runs; a folder holding nothing else when
#: a start is refused was made by that start, and is removed.
HYDRA_FILES = {".hydra", "train.log"}


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
    logger: MLFlowLogger | None,
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
    if logger is None:  # logger=null: signals and preemption only, nothing tracked
        client, outcome, system_metrics_interval = None, RunOutcome(run_id=None), None
    elif rank == 0:
        client, outcome = experiment_client(logger), RunOutcome(run_id=logger.run_id)
        tag_experiment_kind(client, logger.experiment_id)
        clear_end_tags(client, outcome.run_id)
    else:  # Lightning's logger has no run here; rank 0 shares its id once the group exists
        client, outcome = MlflowClient(logger._tracking_uri), RunOutcome(run_id=None)
    if trainer is not None and trainer.world_size > 1 and logger is not None:
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
                if rank == 0 and client is not None:
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
                finish_monitor(monitor)
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


def finish_monitor(monitor: SystemMetricsMonitor) -> None:
    """Stop sampling system metrics; a run that never published a sample gets one now.

    MLflow's monitor publishes only after a whole interval, and stops as soon as the run is not
    RUNNING (Lightning marks it FINISHED after ``fit``, before testing): a short run would
    otherwise have no system metrics at all, depending on how fast the machine was.
    """
    monitor.finish()
    if monitor._logging_step == 0:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()


def run_job(cfg: DictConfig) -> float | None:
    """The Hydra task: train one job and return the value a sweeper optimises (or None).

    A single run's refusal (ConfigError) is raised for the entry point to print; a refused start
    leaves no folder behind. In a sweep one job's failure must not stop the others: it is
    recorded (its MLflow run is already FAILED), the sweep goes on, and the sweep's end reports
    it and exits non-zero. A preempted job exits with 128 + the signal number.
    """
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    job = HydraConfig.get().job.num if in_sweep else None
    # record_job writes the job's job_status.json when its folder is a sweep job's (also when
    # rerun_failed.sh runs it alone), and does nothing otherwise; only global rank 0 writes it.
    record_job = record_sweep_job if rank_zero_only.rank == 0 else lambda *a, **k: None
    try:
        metrics = train(cfg)
    except ConfigError as err:
        record_job("ERROR", error=str(err))
        if not in_sweep:
            remove_refused_folder(Path(cfg.paths.output_dir), Path(cfg.paths.root_dir))
            raise
        print(f"ablab: job {job} error: {err}", file=sys.stderr)
        return None
    except Preempted as err:  # a checkpoint was saved; the job's next attempt continues it
        record_job("KILLED", error=str(err))
        print(f"ablab: preempted by {err}", file=sys.stderr)
        raise SystemExit(128 + signal.Signals[err.signal_name].value) from err
    except KeyboardInterrupt:
        record_job("KILLED")
        raise
    except Exception as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        record_job("FAILED", error=first)
        if not in_sweep:
            raise
        print(f"ablab: job {job} failed: {first}", file=sys.stderr)
        return None
    record_job("FINISHED")
    optimized = cfg.get("optimized_metric")
    if optimized and optimized not in metrics:  # a sweeper would fail on None, trial by trial
        raise ConfigError(f"optimized_metric={optimized} is not a metric of this run; it has: "
                          f"{', '.join(sorted(metrics))}")  # fmt: skip
    return metrics.get(optimized) if optimized else None


def remove_refused_folder(job_dir: Path, root: Path) -> None:
    """Remove ``job_dir`` when it holds only what Hydra and the job lock put there at this start,
    and the folders above it up to ``root`` that it leaves empty. A folder whose lock another
    process holds (the same job, still building) is never touched."""
    if not job_dir.is_dir() or {p.name for p in job_dir.iterdir()} - HYDRA_FILES - {"job.lock"}:
        return
    if process_gone(job_dir) is False:
        return
    shutil.rmtree(job_dir, ignore_errors=True)
    for folder in job_dir.parents:
        if folder == root or root not in folder.parents:
            break
        with contextlib.suppress(OSError):  # not empty: another run's folder is in it
            folder.rmdir()


def check_tracking_uri(uri: str) -> None:
    """Refuse an unusable tracking store in one line naming the key, creating nothing."""
    try:
        check_store(uri)
    except ConfigError as err:
        raise ConfigError(f"logger.tracking_uri={uri}: {err}") from None


def end_if_lost(run_id: str, uri: str) -> bool:
    """End run ``run_id`` KILLED (``killed_by=process_gone``) if it is RUNNING; the caller holds
    its job's lock, so no process runs it. Whether it was."""
    client = MlflowClient(uri)
    if client.get_run(run_id).info.status != "RUNNING":
        return False
    end_lost_run(client, run_id)
    return True


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test on the best checkpoint; return the test metrics (with the same weights'
    validation scores, ``tested_val/*``) and the best validation value of the task's monitored
    metric (``<monitor>_best``, what a sweeper should optimise).

    Under DDP every rank runs this (Lightning's launcher re-runs the entry point for ranks
    1..N-1); only global rank 0 holds the job folder and creates, fills and reports the run.

    With ``resume=true`` a rerun continues the folder's unfinished run from its own ``last.ckpt``
    and reports a finished one without training it again; ``resume=false`` sets the old run's
    files aside and starts anew (see the module docstring for the whole sequence). With
    ``logger=null`` nothing is tracked: there is no run to continue, so every start trains anew.
    """
    job_dir = Path(cfg.paths.output_dir)
    tracked = is_tracked(cfg)
    uri = str(cfg.logger.tracking_uri) if tracked else None
    params = flatten_params(resolved(cfg))
    config_fingerprint = fingerprint(params)
    rank_zero = rank_zero_only.rank == 0
    refuse_unused_augmentation(cfg)  # images' augmentation on sequences: one line, not a type
    check_types(cfg)  # a typo'd value is the user's to fix before any store is touched
    if rank_zero and tracked:  # an unusable store fails here, before data and model are built
        check_tracking_uri(uri)
    with FolderLock(job_dir) if rank_zero else contextlib.nullcontext():
        previous = previous_attempt(job_dir, uri, params) if cfg.resume and tracked else None
        if previous is not None and previous.status == "FINISHED":
            if rank_zero:
                Console(soft_wrap=True).print(
                    f"job already finished: MLflow run {previous.state.run_id} in {job_dir}; "
                    "resume=false trains a new run there",
                    highlight=False,
                    markup=False,
                )
            return metric_summary(previous.metrics)
        # build() creates a new local store once everything else is valid, under its lock
        run = build(cfg, run_id=previous.state.run_id if previous else None)
        trainer = run.trainer
        # Resume and preemption need a checkpoint folder of ablab's (callbacks.model_checkpoint).
        dirpath = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
        checkpoint_dir = Path(dirpath) if dirpath else job_dir / "checkpoints"
        last = checkpoint_dir / LAST_CHECKPOINT if dirpath else None
        if rank_zero:
            if not cfg.resume and tracked and (old := JobState.load(job_dir)):
                end_if_lost(old.run_id, uri)  # we hold its lock: a RUNNING run is dead
                set_aside(job_dir, old, checkpoint_dir)
            own = previous.state.run_id if previous else None
            untracked = not tracked and cfg.resume  # logger=null continues its own checkpoints
            if notice := clear_checkpoints(
                job_dir, checkpoint_dir, own, config_fingerprint, untracked=untracked
            ):
                if previous is not None:  # restarting it from scratch would splice two trainings
                    raise ConfigError(
                        f"{notice}; MLflow run {own} cannot be continued without a checkpoint of "
                        "its own: pass resume=false to start a new run"
                    )
                print(f"ablab: {notice}", file=sys.stderr)
            if previous is not None and end_if_lost(previous.state.run_id, uri):
                print(f"ablab: MLflow run {previous.state.run_id} was left RUNNING by a process "
                      "that is gone; continuing it", file=sys.stderr)  # fmt: skip
        interval = cfg.trainer.system_metrics_interval
        with tracked_run(
            run.logger, trainer, system_metrics_interval=interval, checkpoint=last
        ) as outcome:
            trainer.callbacks.append(CheckpointOwner(outcome, config_fingerprint))
            if trainer.is_global_zero and tracked:  # one run per job: the other ranks only train
                client = run.logger.experiment
                if previous is None:
                    log_run_config(run, cfg)
                    ids = (run.logger.run_id, run.logger.experiment_id)
                    JobState(*ids, uri, config_fingerprint).save(job_dir)
                else:  # the run goes on: back to RUNNING, and no step is logged twice
                    client.update_run(run.logger.run_id, status="RUNNING")
                    client.set_tag(run.logger.run_id, "attempt", str(previous.attempts + 1))
                    run.logger.skip_recorded(recorded_steps(client, run.logger.run_id))
            resuming = previous is not None or (not tracked and cfg.resume)
            resume_from = str(last) if resuming and last and last.exists() else None
            trainer.fit(run.task, datamodule=run.datamodule, ckpt_path=resume_from)
            best_value = monitor_best(run)
            checkpointing = trainer.checkpoint_callback
            best = checkpointing.best_model_path if checkpointing else ""
            # verbose=False: Lightning's table repeats every metric under each test loader;
            # report() prints them once
            results = trainer.test(
                run.task, datamodule=run.datamodule, ckpt_path=best or None, verbose=False
            )
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if best_value is not None:
        metrics[run.monitor_best.name] = best_value
    if trainer.is_global_zero:
        tested = run.tested.tags.get("tested_weights")
        report(metrics, run.logger, uri, outcome.status, best, tested)
    return metrics


def monitor_best(run: Run) -> float | None:
    """The best validation value of the task's monitored metric after ``fit``: the callback's
    (restored from the checkpoint when fit had nothing left to do), else what a ``ddp_spawn``
    worker sent back in ``callback_metrics``; None when validation never ran."""
    if run.monitor_best.score is not None:
        return run.monitor_best.score
    value = run.trainer.callback_metrics.get(run.monitor_best.name)
    return None if value is None else float(value)
