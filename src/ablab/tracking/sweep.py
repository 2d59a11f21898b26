"""Multirun sweeps as MLflow parent and child runs.

A Hydra callback, run by the process that launches the sweep:

- ``on_multirun_start`` checks the sweeper's settings, opens the tracking store
  (:func:`~ablab.tracking.store.ensure_store`: created and migrated once, under a lock), then
  creates the sweep's **parent run**, or continues the one named in ``<sweep dir>/sweep.json``
  when the same command runs again (the sweep folder is named after the command, see
  ``conf/hydra/default.yaml``). The parent is named after the study or sweep and its factors
  (``parent_run_name``) and gets a saved view in MLflow's UI (:mod:`ablab.tracking.dashboard`).
  Anything that fails here stops the sweep before any job, with one line and exit status 2:
  Hydra turns a callback's ``Exception`` into a warning and carries on, but lets ``SystemExit``
  through.
- every job's MLflow run is a **child**: ``mlflow.parentRunId`` plus ``factor.<key>`` tags with
  this job's value of each swept key, ``sweep_job`` and ``seed`` (``child_tags``), and each job
  writes ``job_status.json`` into its own folder (``record_job``).
- the sweep ends once, whichever way: ``on_multirun_end`` after the last job, or, when a signal
  or an exception stops the sweep part-way, an ``atexit`` hook (Hydra calls no callback then).
  Either way the jobs are counted into metrics and tags on the parent, ``rerun_failed.sh`` gets
  one command per unfinished job, and the parent ends FINISHED (every job finished), FAILED, or
  KILLED with ``killed_by=<signal>`` — never RUNNING.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ablab.errors import ConfigError
from ablab.locks import FolderLock

#: Environment variable that carries the parent run id to the jobs.
PARENT_ENV = "ABLAB_PARENT_RUN_ID"
#: The sweep folder, as the launching process resolved it: a job's config resolves
#: ``hydra.sweep.dir`` again from its own overrides, so it takes the folder from here.
SWEEP_DIR_ENV = "ABLAB_SWEEP_DIR"
SWEEP_FILE = "sweep.json"
#: Set by ``ablab study`` for its sweep: the command the user typed, which a report shows (the
#: sweep's own ``python -m ablab.train -m ...`` is what that command runs).
USER_COMMAND_ENV = "ABLAB_USER_COMMAND"
JOB_FILE = "job_status.json"
RERUN_FILE = "rerun_failed.sh"
#: The lock file the launching process holds in the sweep folder while the sweep runs.
SWEEP_LOCK = "sweep.lock"
#: Signals that stop a sweep; the process then exits with 128 + the signal's number.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Tags that say how an earlier attempt of a continued parent ended.
PARENT_END_TAGS = ("killed_by", "jobs_failed")
#: A sequential study's design (``ablab study --until-decided``), fixed before its first look:
#: a continued parent keeps it, or the error rate it promises no longer holds.
DESIGN_TAGS = ("sequential.looks", "sequential.alpha", "sequential.spending")
#: Prefix of the verdict tags ``ablab report`` writes on a parent: its data were looked at.
VERDICT_TAG_PREFIX = "verdict/"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a multirun sweeps over (``a=1,2``, ``range(…)``, ``choice(…)``…)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def sweep_info(sweep_dir: str | Path) -> dict[str, Any] | None:
    """The sweep's ``sweep.json`` (parent run id, factors, store), or ``None`` outside a sweep."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the old file or the new one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)


def sweep_job() -> tuple[str, str] | None:
    """``(sweep dir, job number)`` of the job this process runs, else ``None``.

    In a multirun, from Hydra's job context; in a single run whose folder is a sweep job's
    (``hydra.run.dir=<sweep dir>/<job>``, as ``rerun_failed.sh`` runs it), from that folder.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return str(hydra_cfg.sweep.dir), str(hydra_cfg.job.num)
    job_dir = Path(str(hydra_cfg.runtime.output_dir))
    if job_dir.name.isdigit() and (job_dir.parent / SWEEP_FILE).is_file():
        return str(job_dir.parent), job_dir.name
    return None


def child_tags() -> dict[str, str]:
    """Tags that make this job's run a child of its sweep's parent, from Hydra's job context."""
    from hydra.core.hydra_config import HydraConfig

    job = sweep_job()
    if job is None:
        return {}
    sweep_dir, num = job
    info = sweep_info(sweep_dir) or {}
    parent = info.get("parent_run_id") or os.environ.get(PARENT_ENV)
    tags = {"sweep_dir": sweep_dir, "sweep_job": num}
    if parent:
        tags["mlflow.parentRunId"] = parent
    values = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1]
              for o in HydraConfig.get().overrides.task if "=" in o}  # fmt: skip
    for key in info.get("factors", []):
        tags[f"factor.{key.lstrip('+~')}"] = values.get(key.lstrip("+~"), "")
    return tags


def record_job(status: str, run_id: str | None = None, error: str | None = None) -> None:
    """Write this job's ``job_status.json`` (status FINISHED | FAILED | KILLED | ERROR).

    Called while handling the exception that ended the job, a KILLED record also names the
    signal (``killed_by``), which the sweep's parent then reports.
    """
    from hydra.core.hydra_config import HydraConfig

    job = sweep_job()
    if job is None:
        return
    hydra_cfg = HydraConfig.get()
    record = {
        "status": status,
        "run_id": run_id,
        "error": error,
        "job": int(job[1]),
        "overrides": list(hydra_cfg.overrides.task),
    }
    if status == "KILLED" and (name := _signal_name(sys.exc_info()[1])):
        record["killed_by"] = name
    path = Path(hydra_cfg.runtime.output_dir) / JOB_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, record)


def _signal_name(exc: BaseException | None) -> str | None:
    """The signal a job's ``Preempted`` / ``KeyboardInterrupt("SIGTERM")`` names, if any."""
    name = getattr(exc, "signal_name", None) or (exc.args[0] if exc and exc.args else None)
    return name if isinstance(name, str) and name in signal.Signals.__members__ else None


@dataclass
class SweepPlan:
    """What a sweep runs, known before any job starts."""

    #: swept keys, including those a sweeper defines itself (optuna's space, a study's variants)
    factors: list[str]
    #: tags for the parent run (a study sweep: ``study``, ``study_size``, ``study_file``)
    tags: dict[str, str] = field(default_factory=dict)
    #: every job's overrides, by job number; ``None`` when the sweeper decides as it goes (optuna)
    jobs: list[list[str]] | None = None


def plan_sweep(config: DictConfig) -> SweepPlan:
    """The sweep's factors, parent tags and jobs; raise ConfigError on a bad sweeper setting.

    A sweeper class may describe its own sweep with a static ``plan(sweeper_config, overrides)``
    returning ``{"factors", "tags", "jobs"}`` (the study sweeper does), so tracking needs no
    knowledge of what a study is.
    """
    from hydra.utils import get_class

    sweeper = config.hydra.sweeper
    overrides = list(config.hydra.overrides.task)
    try:
        OmegaConf.to_container(sweeper, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = f"hydra.sweeper.{err.key}" if err.key else str(err.full_key)
        raise ConfigError(f"{key} is not set; add {key}=... to the command") from None
    target = str(sweeper.get("_target_", ""))
    plan = getattr(get_class(target), "plan", None) if target else None
    if callable(plan):
        return SweepPlan(**plan(sweeper, overrides))
    factors = swept_keys(overrides)
    factors += [k for k in sweeper.get("params") or {} if k not in factors]
    jobs = None
    if target == BASIC_SWEEPER and not sweeper.get("params"):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        parsed = OverridesParser.create().parse_overrides(overrides)
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return SweepPlan(factors, {}, jobs)


def parent_run_name(plan: SweepPlan) -> str:
    """The parent run's name: what was swept over which factors, e.g. ``bn_vs_nobn (quick):
    variant × seed`` for a study and ``sweep: model.norm × seed`` for a plain sweep."""
    factors = " × ".join(f.lstrip("+~") for f in plan.factors) or "no factors"
    study, size = plan.tags.get("study"), plan.tags.get("study_size")
    head = (f"{study} ({size})" if size else study) if study else "sweep"
    return f"{head}: {factors}"


def hydra_value(value: str) -> str:
    """``value`` as a quoted Hydra override value: commas, ``=`` and spaces stay literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def stop_sweep(err: BaseException) -> None:
    """Exit with status 2 and the reason on one line (a traceback too when ABLAB_DEBUG is set)."""
    if os.environ.get("ABLAB_DEBUG"):
        import traceback

        traceback.print_exception(err)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = lines[0] if lines else type(err).__name__
    print(f"ablab: error: the sweep cannot start: {reason}", file=sys.stderr)
    raise SystemExit(2)


class SweepTracker(Callback):
    """The parent run of a multirun: created (or continued) before any job, ended exactly once."""

    def __init__(self) -> None:
        self.client: Any = None
        self.parent_run_id: str | None = None
        self.sweep_dir: Path | None = None
        self.plan: SweepPlan | None = None
        self.uri: str | None = None
        self.root_dir: str | None = None
        self.attempt = 1
        #: names of the stop signals this process received while the sweep ran
        self.received: list[str] = []
        self.handlers: dict[int, Any] = {}
        self.lock: FolderLock | None = None

    # -- start ---------------------------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.start(config)
        except Exception as err:  # Hydra would turn it into a warning and go on
            if self.parent_run_id is not None:  # made, but the sweep cannot use it: not RUNNING
                with contextlib.suppress(Exception):
                    self.client.set_tag(self.parent_run_id, "error", str(err)[:500])
                    self.client.set_terminated(self.parent_run_id, "FAILED")
            self.release()
            stop_sweep(err)
        os.environ[PARENT_ENV] = str(self.parent_run_id)  # inherited by local and SLURM jobs
        os.environ[SWEEP_DIR_ENV] = str(self.sweep_dir)
        atexit.register(self.end_interrupted)
        if threading.current_thread() is threading.main_thread():
            self.handlers = {s: signal.signal(s, self.on_signal) for s in STOP_SIGNALS}

    def start(self, config: DictConfig) -> None:
        """Check the sweeper, open the store, then create or continue the parent run and write
        ``sweep.json``; the sweep folder is made only once the parent exists."""
        from mlflow import MlflowClient

        from ablab.tracking.context import run_context_tags
        from ablab.tracking.dashboard import save_view, sweep_view_state
        from ablab.tracking.store import ensure_store

        self.plan = plan_sweep(config)
        self.uri = str(config.logger.tracking_uri)
        self.root_dir = str(config.paths.root_dir)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        ensure_store(self.uri)
        self.client = MlflowClient(self.uri)
        # Held until the parent has ended: a second launcher of the same sweep is refused, and a
        # RUNNING parent whose sweep lock is free was left by a launcher that died (kill -9).
        self.lock = FolderLock(sweep_dir, SWEEP_LOCK).__enter__()
        previous = sweep_info(sweep_dir)
        command = shlex.join([sys.executable, "-m", "ablab.train", *sys.argv[1:]])
        if previous is not None:
            self.parent_run_id = self.continue_parent(previous, sweep_dir)
        else:
            experiment_id = self.experiment_id(config)
            tags = {**run_context_tags(), **self.plan.tags, "sweep_dir": str(sweep_dir),
                    "sweep": "parent", "experiment": config.experiment_name}  # fmt: skip
            name = parent_run_name(self.plan)
            run = self.client.create_run(experiment_id, run_name=name, tags=tags)
            self.parent_run_id = run.info.run_id
            # The UI's saved view of this sweep (its runs, a column per factor), named like the
            # parent and keyed by its id: what `ablab ui` opens.
            save_view(self.client, experiment_id, self.parent_run_id, name,
                      sweep_view_state(self.plan.factors, str(sweep_dir)))  # fmt: skip
            self.client.log_param(
                self.parent_run_id, "factors", ",".join(self.plan.factors) or "none"
            )
        self.client.log_text(self.parent_run_id, command, f"sweep/command-{self.attempt}.txt")
        if user_command := os.environ.get(USER_COMMAND_ENV):  # `ablab study ...`, as typed
            self.client.set_tag(self.parent_run_id, "user_command", user_command)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.sweep_dir = sweep_dir
        info = {"parent_run_id": self.parent_run_id, "factors": self.plan.factors,
                "command": command, "tracking_uri": self.uri, "root_dir": self.root_dir,
                "attempt": self.attempt, "jobs": self.plan.jobs}  # fmt: skip
        _write_json(sweep_dir / SWEEP_FILE, info)

    def experiment_id(self, config: DictConfig) -> str:
        """The experiment's id, creating it; a sweep that created it a moment earlier wins."""
        from mlflow.exceptions import MlflowException

        name = str(config.experiment_name)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=config.logger.artifact_location
            )
        except MlflowException as err:
            if (experiment := self.client.get_experiment_by_name(name)) is None:
                raise err from None
            return experiment.experiment_id

    def continue_parent(self, previous: dict[str, Any], sweep_dir: Path) -> str:
        """The parent of an earlier attempt of this sweep, set RUNNING again (``attempt`` + 1)."""
        from mlflow.exceptions import MlflowException

        parent, uri = previous["parent_run_id"], previous.get("tracking_uri")
        hint = f"move {sweep_dir} away to start the sweep anew"
        if uri != self.uri:
            raise ConfigError(f"{sweep_dir} belongs to parent run {parent} in {uri}, not in "
                              f"{self.uri}; pass logger.tracking_uri={uri} to continue it, or "
                              f"{hint}")  # fmt: skip
        try:
            run = self.client.get_run(parent)
        except MlflowException as err:
            raise ConfigError(f"{sweep_dir} belongs to parent run {parent}, which {self.uri} "
                              f"does not have ({err.error_code}); {hint}") from None  # fmt: skip
        if run.info.lifecycle_stage == "deleted":
            raise ConfigError(f"parent run {parent} of {sweep_dir} was deleted; {hint}")
        tags = run.data.tags
        before = {k: tags[k] for k in DESIGN_TAGS if k in tags}
        now = {k: self.plan.tags[k] for k in DESIGN_TAGS if k in self.plan.tags}
        looked = any(k.startswith(VERDICT_TAG_PREFIX) for k in tags)
        if before != now and (before or looked):
            was = ", ".join(f"{k}={v}" for k, v in before.items()) or "a fixed number of seeds"
            raise ConfigError(
                f"parent run {parent} of {sweep_dir} was tested under {was}; continuing it "
                "under another design would spend α again on seeds already tested: run the "
                f"same command as before, or {hint}"
            )
        self.attempt = int(run.data.tags.get("attempt", "1")) + 1
        for key in PARENT_END_TAGS:
            if key in run.data.tags:
                self.client.delete_tag(parent, key)
        self.client.update_run(parent, status="RUNNING")
        self.client.set_tag(parent, "attempt", str(self.attempt))
        # The plan of this attempt describes the sweep now (a study that added seeds).
        for key, value in self.plan.tags.items():
            self.client.set_tag(parent, key, value)
        print(f"ablab: continuing sweep {sweep_dir} (parent run {parent}, attempt "
              f"{self.attempt}): finished jobs are reported, unfinished ones resumed",
              file=sys.stderr)  # fmt: skip
        return parent

    # -- stop ----------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: object) -> None:
        """SIGTERM/SIGINT outside a job's training: stop the sweep (``SystemExit(128 + n)``).

        A job that trains in this process (the basic launcher) has its own handlers while it
        trains; after saving its checkpoint it chains to this one with ``frame=None`` and then
        exits 128 + n itself, so here the signal is only noted. Jobs in worker processes
        (joblib) get the signal forwarded, so that they save and end their runs KILLED too.
        """
        self.received.append(signal.Signals(signum).name)
        if frame is None:
            return
        import psutil

        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                child.send_signal(signum)
        raise SystemExit(128 + signum)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        if self.received:  # a launcher that returned after its workers were stopped
            self.end_interrupted()
            raise SystemExit(128 + signal.Signals[self.received[0]].value)
        failed, total = self.end(interrupted=False)
        if failed:
            print(f"ablab: {failed} of {total} sweep jobs did not finish; rerun them with: "
                  f"bash {self.sweep_dir / RERUN_FILE} (or run the same command again)",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(1)

    def end_interrupted(self) -> None:
        """``atexit``: the sweep stopped part-way (a signal, a launcher's exception)."""
        if self.parent_run_id is None:
            return
        killed_by = self.killed_by()
        failed, total = self.end(interrupted=True)
        print(f"ablab: sweep stopped{' by ' + killed_by if killed_by else ''}: "
              f"{failed} of {total} jobs did not finish; run the same command again to continue "
              f"it, or bash {self.sweep_dir / RERUN_FILE}", file=sys.stderr)  # fmt: skip

    def killed_by(self) -> str | None:
        """The signal that stopped the sweep: received here, or by a job that trained."""
        if self.received:
            return self.received[0]
        records = self.records().values()
        return next((r["killed_by"] for r in records if r.get("killed_by")), None)

    def records(self) -> dict[int, dict[str, Any]]:
        """Each started job's ``job_status.json``, by job number."""
        found = {}
        for path in self.sweep_dir.glob(f"*/{JOB_FILE}"):
            if path.parent.name.isdigit():
                found[int(path.parent.name)] = json.loads(path.read_text())
        return found

    def end(self, *, interrupted: bool) -> tuple[int, int]:
        """Count the jobs into the parent, write ``rerun_failed.sh`` and end the parent (once).

        Returns ``(unfinished, total)``. Every job is counted once, by its folder: a continued
        sweep's jobs overwrite their own ``job_status.json``.
        """
        atexit.unregister(self.end_interrupted)
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.handlers = {}
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(SWEEP_DIR_ENV, None)
        records = self.records()
        started = {int(p.name) for p in self.sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()}
        planned = self.plan.jobs if self.plan and self.plan.jobs is not None else []
        total = max([len(planned), *(n + 1 for n in started)])
        counts = dict.fromkeys(
            ("FINISHED", "FAILED", "KILLED", "ERROR", "MISSING", "NOT_STARTED"), 0
        )
        unfinished: list[tuple[int, list[str]]] = []
        for num in range(total):
            record = records.get(num)
            if record is not None:
                status = record["status"] if record["status"] in counts else "FAILED"
            else:  # started without a record (killed -9, or stopped before it trained)
                status = "MISSING" if num in started else "NOT_STARTED"
            counts[status] += 1
            if status != "FINISHED":
                overrides = self.job_overrides(num, record, planned)
                if overrides is not None:
                    unfinished.append((num, overrides))
        for status, n in counts.items():
            self.client.log_metric(
                self.parent_run_id, f"jobs_{status.lower()}", n, step=self.attempt
            )
        self.client.log_metric(self.parent_run_id, "jobs_total", total, step=self.attempt)
        failed = total - counts["FINISHED"]
        self.write_rerun_script(unfinished)
        self.client.set_tag(self.parent_run_id, "jobs_failed", str(failed))
        killed_by = self.killed_by() if interrupted else None
        if killed_by:
            self.client.set_tag(self.parent_run_id, "killed_by", killed_by)
            status = "KILLED"
        else:
            status = "FAILED" if failed or interrupted else "FINISHED"
        self.client.set_terminated(self.parent_run_id, status)
        self.parent_run_id = None
        self.release()
        return failed, total

    def release(self) -> None:
        """Let go of the sweep folder's lock (the parent has ended)."""
        if self.lock is not None:
            self.lock.__exit__()
            self.lock = None

    def job_overrides(
        self, num: int, record: dict[str, Any] | None, planned: list[list[str]]
    ) -> list[str] | None:
        """A job's overrides: from its record, else the plan, else Hydra's copy in its folder."""
        if record is not None:
            return list(record["overrides"])
        if num < len(planned):
            return list(planned[num])
        saved = self.sweep_dir / str(num) / ".hydra" / "overrides.yaml"
        if saved.is_file():
            import yaml

            return list(yaml.safe_load(saved.read_text()) or [])
        return None

    def write_rerun_script(self, unfinished: list[tuple[int, list[str]]]) -> None:
        """One command per unfinished job, each continuing the job in its own folder (its
        ``job.json`` and ``last.ckpt``) as a child of the same parent, in the same store."""
        pinned = [f"logger.tracking_uri={hydra_value(self.uri)}",
                  f"paths.root_dir={hydra_value(self.root_dir)}"]  # fmt: skip
        lines = [
            "#!/bin/sh",
            f"# Unfinished jobs of {self.sweep_dir} (parent run {self.parent_run_id} in {self.uri}).",
            "# Each continues its own folder and child run; running the sweep's command again",
            "# continues every unfinished job too.",
            "status=0",
        ]
        for num, overrides in unfinished:
            kept = [
                o
                for o in overrides
                if not o.startswith(("logger.tracking_uri=", "paths.root_dir="))
            ]
            args = [sys.executable, "-m", "ablab.train", *kept, *pinned,
                    f"hydra.run.dir={hydra_value(str(self.sweep_dir / str(num)))}"]  # fmt: skip
            lines.append(f"{shlex.join(args)} || status=1")
        lines.append("exit $status")
        (self.sweep_dir / RERUN_FILE).write_text("\n".join(lines) + "\n")
