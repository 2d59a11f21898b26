"""Multirun sweeps as MLflow parent and child runs.

A Hydra callback, run by the process that launches the sweep:

- ``on_multirun_start`` initialises the tracking store once (parallel first use of a new sqlite
  store corrupts it), creates the sweep's **parent run** and records its id, the sweep's factors
  (the swept override keys) and the command in ``<sweep dir>/sweep.json``;
- every job's MLflow run is a **child**: ``mlflow.parentRunId`` plus ``factor.<key>`` tags with
  this job's value of each swept key, ``sweep_job`` and ``seed`` (``child_tags``), and each job
  writes ``job_status.json`` into its own folder (``record_job``);
- ``on_multirun_end`` counts the jobs (finished / failed / killed / never started) into metrics
  and tags on the parent, ends it FINISHED only when every job finished, writes
  ``rerun_failed.sh`` with one command per unfinished job, and exits with status 1 when any job
  did not finish.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

#: Environment variable that carries the parent run id to the jobs (and to reruns).
PARENT_ENV = "ABLAB_PARENT_RUN_ID"
SWEEP_DIR_ENV, JOB_ENV = "ABLAB_SWEEP_DIR", "ABLAB_SWEEP_JOB"
SWEEP_FILE = "sweep.json"
JOB_FILE = "job_status.json"


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a multirun sweeps over (``a=1,2``, ``range(…)``, ``choice(…)``…)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def sweep_info(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The sweep's ``sweep.json`` (parent run id, factors), or ``None`` outside a sweep."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def child_tags() -> dict[str, str]:
    """Tags that make this job's run a child of its sweep's parent, from Hydra's job context."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sweep_dir, job = str(hydra_cfg.sweep.dir), str(hydra_cfg.job.num)
    elif os.environ.get(SWEEP_DIR_ENV):  # one job of a sweep, rerun by rerun_failed.sh
        sweep_dir, job = os.environ[SWEEP_DIR_ENV], os.environ.get(JOB_ENV, "")
    else:
        return {}
    info = sweep_info(sweep_dir) or {}
    parent = os.environ.get(PARENT_ENV) or info.get("parent_run_id")
    tags = {"sweep_dir": sweep_dir, "sweep_job": job}
    if parent:
        tags["mlflow.parentRunId"] = parent
    values = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1]
              for o in hydra_cfg.overrides.task if "=" in o}  # fmt: skip
    for key in info.get("factors", []):
        tags[f"factor.{key.lstrip('+~')}"] = values.get(key.lstrip("+~"), "")
    return tags


def record_job(status: str, run_id: str | None = None, error: str | None = None) -> None:
    """Write this job's ``job_status.json`` (status FINISHED | FAILED | KILLED | ERROR)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    record = {
        "status": status,
        "run_id": run_id,
        "error": error,
        "job": hydra_cfg.job.num,
        "overrides": list(hydra_cfg.overrides.task),
    }
    path = Path(hydra_cfg.runtime.output_dir) / JOB_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))


class SweepTracker(Callback):
    """Parent run, store initialisation and the final job count of a multirun."""

    def __init__(self) -> None:
        self.client: Any = None
        self.parent_run_id: str | None = None
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow import MlflowClient

        from ablab.tracking.mlflow import run_context_tags

        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = list(config.hydra.overrides.task)
        # The first client call creates and migrates a new local store: here, once, before any job.
        # (Not through Lightning's logger: its `experiment` property would start a stray run.)
        if str(config.logger.tracking_uri).startswith("sqlite:///"):
            db = Path(str(config.logger.tracking_uri).removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(config.logger.tracking_uri)
        experiment = self.client.get_experiment_by_name(config.experiment_name)
        if experiment is None:
            experiment_id = self.client.create_experiment(
                config.experiment_name, artifact_location=config.logger.artifact_location
            )
        else:
            experiment_id = experiment.experiment_id
        command = " ".join(
            shlex.quote(a) for a in [sys.executable, "-m", "ablab.train", *sys.argv[1:]]
        )
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep-{self.sweep_dir.name}",
            tags={
                **run_context_tags(),
                "sweep_dir": str(self.sweep_dir),
                "sweep": "parent",
                "experiment": config.experiment_name,
            },
        )
        self.parent_run_id = run.info.run_id
        factors = swept_keys(overrides)
        # Sweeper-defined factors (optuna's search space, a study's variants) are factors too.
        extra, sweeper_tags = sweeper_factors(config.hydra.sweeper)
        factors += [k for k in extra if k not in factors]
        for key, value in sweeper_tags.items():
            self.client.set_tag(self.parent_run_id, key, value)
        self.client.log_text(self.parent_run_id, command, "sweep/command.txt")
        self.client.log_param(self.parent_run_id, "factors", ",".join(factors) or "none")
        info = {"parent_run_id": self.parent_run_id, "factors": factors, "command": command,
                "tracking_uri": config.logger.tracking_uri}  # fmt: skip
        (self.sweep_dir / SWEEP_FILE).write_text(json.dumps(info, indent=1))
        os.environ[PARENT_ENV] = self.parent_run_id  # inherited by local and SLURM jobs

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.client is None or self.sweep_dir is None:
            return
        records = [json.loads(p.read_text()) for p in sorted(self.sweep_dir.glob(f"*/{JOB_FILE}"))]
        counts = {
            s: sum(r["status"] == s for r in records)
            for s in ("FINISHED", "FAILED", "KILLED", "ERROR")
        }
        launched = len(list(p for p in self.sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()))
        counts["MISSING"] = max(0, launched - len(records))  # e.g. killed -9: no record written
        for status, n in counts.items():
            self.client.log_metric(self.parent_run_id, f"jobs_{status.lower()}", n)
        self.client.log_metric(self.parent_run_id, "jobs_total", launched)
        unfinished = [r for r in records if r["status"] != "FINISHED"]
        self.write_rerun_script(unfinished)
        failed = len(unfinished) + counts["MISSING"]
        self.client.set_tag(self.parent_run_id, "jobs_failed", str(failed))
        self.client.set_terminated(self.parent_run_id, "FAILED" if failed else "FINISHED")
        os.environ.pop(PARENT_ENV, None)
        if failed:
            print(
                f"ablab: {failed} of {launched} sweep jobs did not finish; rerun them with: "
                f"bash {self.sweep_dir / 'rerun_failed.sh'}",
                file=sys.stderr,
            )
            raise SystemExit(1)

    def write_rerun_script(self, unfinished: list[dict[str, Any]]) -> None:
        """One command per unfinished job, each a run under the same parent."""
        lines = [
            "#!/bin/sh",
            f"# Unfinished jobs of {self.sweep_dir}; each reruns as a child of the same parent.",
            f"export {PARENT_ENV}={self.parent_run_id} {SWEEP_DIR_ENV}={shlex.quote(str(self.sweep_dir))}",
            "status=0",
        ]
        for record in unfinished:
            args = " ".join(shlex.quote(o) for o in record["overrides"])
            python = shlex.quote(sys.executable)
            lines.append(f"{JOB_ENV}={record['job']} {python} -m ablab.train {args} || status=1")
        lines.append("exit $status")
        (self.sweep_dir / "rerun_failed.sh").write_text("\n".join(lines) + "\n")


def sweeper_factors(sweeper: DictConfig) -> tuple[list[str], dict[str, str]]:
    """Factors a sweeper defines beyond the command line (optuna's search space, a study's
    variant keys) and tags for the parent run (``study``, ``study_size``)."""
    if str(sweeper.get("_target_", "")).endswith("StudySweeper"):
        from ablab.study import load_study

        study = load_study(sweeper.study)
        tags = {"study": study.name, "study_size": str(sweeper.size),
                "study_file": str(study.folder / "study.yaml")}  # fmt: skip
        return study.factors(), tags
    return list(sweeper.get("params") or {}), {}
