"""A job folder: which MLflow run it belongs to, who is running it, and whose checkpoints it holds.

A job folder (a single run's override-named folder, or a sweep job's folder) holds
``job.json`` — the MLflow run id, experiment, store and config fingerprint of the job — next to
its ``checkpoints/last.ckpt``, and ``job.lock`` (:class:`ablab.locks.FolderLock`), which the
process running the job holds for as long as it runs. Running the job again (the same command, a SLURM requeue,
the sweep's ``rerun_failed.sh``) then

- reports a FINISHED run instead of training it again;
- refuses, in one line, when the config differs from the params the run logged (MLflow would
  fail later on "changing param values", after work was done);
- otherwise continues the same run from ``last.ckpt`` (or from the start, when the job died
  before its first checkpoint), logging only steps the run has not recorded yet.

A checkpoint names the run and config fingerprint it was written for (:class:`CheckpointOwner`);
one that belongs to anything else (a stale folder, a ``job.json`` lost or replaced) is set aside
into ``previous/``, never loaded. A run left RUNNING whose folder's lock nobody holds was
killed without a chance to say so (:func:`process_gone`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pytorch_lightning.callbacks import Callback

from ablab.errors import ConfigError
from ablab.tasks.base import TESTED

JOB_FILE = "job.json"
#: The checkpoint entry that names the run and config a checkpoint belongs to.
OWNER_KEY = "ablab_job"
#: At most this many differing params are named in the refusal.
SHOWN_DIFFS = 4
#: Params measured by the run rather than set by the config (prefixes); ``runtime.*`` are facts
#: of the machine it ran on (``runtime.torch_threads``); ``data.*`` ones are what a data module
#: measured on its splits (``DataModule.run_params``).
MEASURED = ("complexity.", "data.train_class_counts", "data.mean_predictor_mse", "runtime.")
#: Config keys added since runs were first logged, with the value older runs had without them:
#: a run that lacks one is the same config when the key still holds that value. ``${key}``: the
#: value of another param (the data split followed ``seed`` before ``seeds.split`` existed).
ADDED_KEYS = {
    "task.monitor": "val/acc",
    "task.mode": "max",
    "trainer.threads": "None",
    "seeds.split": "${seed}",
    "tuning": "None",
    "data.train_eval": "False",
    "data.train_eval_limit": "None",
    "data.noise": "None",
    "data.noise_level": "0.0",
    "data.images.noise": "None",
    "data.images.noise_level": "0.0",
}
#: Added keys that are left out of the fingerprint while they hold that value, so checkpoints
#: written before the key existed stay their run's (keys added later than fingerprints).
UNFINGERPRINTED_DEFAULTS = (
    "trainer.threads",
    "seeds.split",
    "tuning",
    "data.train_eval",
    "data.train_eval_limit",
    "data.noise",
    "data.noise_level",
    "data.images.noise",
    "data.images.noise_level",
)


def added_default(key: str, params: Mapping[str, str]) -> str | None:
    """The value a run logged before ``key`` existed had for it (:data:`ADDED_KEYS`), read from
    ``params`` where it followed another param."""
    value = ADDED_KEYS[key]
    return params.get(value[2:-1]) if value.startswith("${") else value


@dataclass
class JobState:
    """What a job folder remembers about its MLflow run."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    #: :func:`fingerprint` of the config the run was started with (absent in older folders)
    fingerprint: str | None = None

    def save(self, job_dir: Path) -> None:
        """Write ``job.json`` atomically: a kill mid-write leaves the old file or the new one."""
        job_dir.mkdir(parents=True, exist_ok=True)
        partial = job_dir / f".{JOB_FILE}.{os.getpid()}"
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(partial, job_dir / JOB_FILE)

    @classmethod
    def load(cls, job_dir: Path) -> JobState | None:
        path = job_dir / JOB_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def fingerprint(params: dict[str, str]) -> str:
    """A short hash of what the job computes: its flattened config, measured params left out."""
    kept = {k: v for k, v in params.items() if not k.startswith(MEASURED)
            and not (k in UNFINGERPRINTED_DEFAULTS and v == added_default(k, params))}  # fmt: skip
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


class CheckpointOwner(Callback):
    """Write the run id and config fingerprint into every checkpoint (``checkpoint["ablab_job"]``),
    so a checkpoint is only ever resumed by the run it was written for."""

    def __init__(self, run: Any, fingerprint: str) -> None:
        #: anything with a ``run_id`` (the run outcome: rank 0 knows it, other ranks learn it)
        self.run, self.fingerprint = run, fingerprint

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[OWNER_KEY] = {"run_id": self.run.run_id, "fingerprint": self.fingerprint}


def checkpoint_owner(path: Path) -> dict[str, Any] | None:
    """The ``{"run_id", "fingerprint"}`` a checkpoint was written for; None for a checkpoint
    without one (foreign or older) or one that cannot be read."""
    try:  # memory-mapped: only the small entry is read, whatever the size of the weights
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated, corrupt or not a checkpoint: not ours
        return None
    owner = checkpoint.get(OWNER_KEY) if isinstance(checkpoint, dict) else None
    return owner if isinstance(owner, dict) else None


def clear_checkpoints(
    job_dir: Path,
    checkpoint_dir: Path,
    run_id: str | None,
    fingerprint: str | None,
    untracked: bool = False,
) -> str | None:
    """Make ``checkpoint_dir`` hold only checkpoints of run ``run_id`` with ``fingerprint``
    (with ``untracked``, of no run: a ``logger=null`` job continuing its own checkpoints).

    Leftover ``*.partial`` files (a save cut short by a kill) are deleted. When ``last.ckpt`` or
    any other checkpoint belongs to another run or config (or names none), the whole folder is
    moved to ``previous/<its run id or 'unknown-<time>'>/`` and a line saying so is returned.
    With ``run_id`` None (a new run) every checkpoint is foreign. The caller holds the job lock.
    """
    if not checkpoint_dir.is_dir():
        return None
    for partial in checkpoint_dir.glob(".*.partial"):
        partial.unlink(missing_ok=True)
    checkpoints = sorted(checkpoint_dir.glob("*.ckpt"))
    if not checkpoints:
        return None
    owners = [checkpoint_owner(p) for p in checkpoints]
    mine = {"run_id": run_id, "fingerprint": fingerprint}
    if (run_id is not None or untracked) and all(o is not None and o == mine for o in owners):
        return None
    foreign = next((o["run_id"] for o in owners if o and o.get("run_id")), None)
    target = job_dir / "previous" / (foreign or f"unknown-{time.strftime('%Y%m%d-%H%M%S')}")
    target.mkdir(parents=True, exist_ok=True)
    moved = target / checkpoint_dir.name
    if moved.exists():  # set aside before: keep both
        moved = target / f"{checkpoint_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.move(str(checkpoint_dir), moved)
    whose = f"run {foreign}" if foreign else "no ablab run"
    return (
        f"{checkpoint_dir} held checkpoints of {whose}, not of this run and config: moved to "
        f"{moved}, not resumed from"
    )


@dataclass
class Attempt:
    """The previous attempt of a job, as found in its folder and in MLflow."""

    state: JobState
    status: str
    metrics: dict[str, float]
    attempts: int


def previous_attempt(job_dir: Path, tracking_uri: str, params: dict[str, str]) -> Attempt | None:
    """The run this job folder already started, checked against the current config's params.

    Raises ConfigError when the run is gone from the store, lives in another store, or logged
    params that differ from ``params`` (the flattened resolved config of this attempt).
    """
    state = JobState.load(job_dir)
    if state is None:
        return None
    hint = f"pass resume=false to start a new run in {job_dir}"
    if state.tracking_uri != tracking_uri:
        raise ConfigError(
            f"{job_dir} belongs to MLflow run {state.run_id} in {state.tracking_uri}, not in "
            f"{tracking_uri}; point logger.tracking_uri there to continue it, or {hint}"
        )
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(state.run_id)
    except MlflowException as err:
        raise ConfigError(
            f"{job_dir} belongs to MLflow run {state.run_id}, which {tracking_uri} does not have "
            f"({err.error_code}); {hint}"
        ) from err
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow run {state.run_id} of {job_dir} was deleted; {hint}")
    old = run.data.params
    logged = {**{k: added_default(k, old) for k in ADDED_KEYS if k in params}, **old}
    changed = sorted(
        k
        for k in params.keys() | logged.keys()
        if not k.startswith(MEASURED) and logged.get(k) != params.get(k)
    )
    if changed:
        shown = ", ".join(
            f"{k}: {logged.get(k, '<unset>')} -> {params.get(k, '<unset>')}"
            for k in changed[:SHOWN_DIFFS]
        )
        more = f" and {len(changed) - SHOWN_DIFFS} more" if len(changed) > SHOWN_DIFFS else ""
        raise ConfigError(
            f"cannot resume MLflow run {state.run_id} of {job_dir}: the config changed "
            f"({shown}{more}); restore it, or {hint}"
        )
    attempts = int(run.data.tags.get("attempt", "1"))
    return Attempt(state, run.info.status, dict(run.data.metrics), attempts)


def recorded_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step of every metric the run has, except MLflow's own ``system/*`` metrics."""
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    return {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def set_aside(job_dir: Path, state: JobState, checkpoint_dir: Path) -> Path:
    """Move a previous run's ``job.json`` and checkpoints to ``previous/<run id>/`` (resume=false).

    Nothing is deleted: the folder is free for a new run, the old files stay next to it.
    """
    target = job_dir / "previous" / state.run_id
    target.mkdir(parents=True, exist_ok=True)
    if checkpoint_dir.exists():
        shutil.move(str(checkpoint_dir), target / checkpoint_dir.name)
    os.replace(job_dir / JOB_FILE, target / JOB_FILE)
    return target


def metric_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """What ``train`` returns for a finished run it skips, as it returned them when it ran: its
    test metrics (``test/*``, and the tested weights' ``tested_val/*``...) and best scores
    (``val/acc_best``, which a sweeper may optimise)."""
    return {k: float(v) for k, v in metrics.items()
            if k.startswith(("test/", TESTED)) or k.endswith("_best")}  # fmt: skip
