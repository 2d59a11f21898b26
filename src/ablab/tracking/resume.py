"""Continue a job's MLflow run: the job folder remembers its run id, a rerun picks it up.

A job folder (a single run's override-named folder, or a sweep job's folder) holds
``job.json`` — the MLflow run id, experiment and store the job logs to — next to its
``checkpoints/last.ckpt``. Running the job again (the same command, a SLURM requeue, the
sweep's ``rerun_failed.sh``) then

- reports a FINISHED run instead of training it again;
- refuses, in one line, when the config differs from the params the run logged (MLflow would
  fail later on "changing param values", after work was done);
- otherwise continues the same run from ``last.ckpt`` (or from the start, when the job died
  before its first checkpoint), logging only steps the run has not recorded yet.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ablab.errors import ConfigError

JOB_FILE = "job.json"
#: At most this many differing params are named in the refusal.
SHOWN_DIFFS = 4
#: Params measured by the run rather than set by the config (prefixes).
MEASURED = ("complexity.", "data.train_class_counts")


@dataclass
class JobState:
    """What a job folder remembers about its MLflow run."""

    run_id: str
    experiment_id: str
    tracking_uri: str

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
    logged = run.data.params
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
    """What ``train`` returns for a finished run it skips: its test metrics and best scores
    (``val/acc_best``, which a sweeper may optimise)."""
    return {k: float(v) for k, v in metrics.items() if k.startswith("test/") or k.endswith("_best")}
