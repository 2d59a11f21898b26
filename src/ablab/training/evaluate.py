"""``ablab eval ckpt_path=<checkpoint file or MLflow run id> [key=value ...] [new_run=true]``:
test a checkpoint with the config it was trained with, and log the test metrics.

1. **Find** the checkpoint and the run it belongs to: a file names its run
   (:class:`ablab.training.job.CheckpointOwner`); a run id names its job folder
   (``hydra_output_dir`` tag), whose best checkpoint (else ``last.ckpt``) is tested.
2. **Config**: the resolved config the run logged (``config/config.yaml``), so the network, data
   split and task are exactly the ones trained; ``key=value`` arguments change single values
   (``data.root=...``, ``trainer.accelerator=gpu``). A checkpoint that names no run (trained
   with ``logger=null``, or not by ablab) is tested with the config composed from the arguments.
3. **Test** and log ``test/*`` (and the same weights' validation scores, ``tested_val/*``) into
   that run, tagged ``evaluated_checkpoint`` and ``tested_weights`` (which weights those are, as
   ``ablab train`` tags them: ``best val/acc checkpoint (epoch 7)``); the run keeps the
   status it had (Lightning would mark it FINISHED, and a KILLED or FAILED run must not become
   one a report counts). A run still RUNNING is refused. ``new_run=true`` logs into a new run
   instead, tagged ``evaluates=<run id>`` and ``ablab.kind=eval``.

Everything is built and checked before anything is logged: bad input is one line, no run.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from ablab.config import composed, resolved
from ablab.errors import ConfigError
from ablab.tracking import flatten_params
from ablab.training.job import JOB_FILE, OWNER_KEY, JobState
from ablab.training.lifecycle import check_tracking_uri, tracked_run
from ablab.training.run import LAST_CHECKPOINT, build, complexity_params, is_tracked, report

#: Arguments of ``ablab eval`` itself; every other ``key=value`` changes the run's config.
OWN_KEYS = ("ckpt_path", "new_run")
# A one-file download needs no progress bar on stderr, where the one-line errors go.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
EVAL_TAGS = {"ablab.kind": "eval"}


@dataclass
class Source:
    """The checkpoint to test and the MLflow run (and store) it was trained in, if any."""

    checkpoint: Path
    run_id: str | None = None
    tracking_uri: str | None = None


def evaluate(arguments: list[str]) -> dict[str, float]:
    """Run ``ablab eval`` with its ``key=value`` arguments; return the test metrics."""
    own, overrides = split_arguments(arguments)
    if "ckpt_path" not in own:
        raise ConfigError("ablab eval needs ckpt_path=<checkpoint file or MLflow run id>")
    new_run = parse_bool("new_run", own.get("new_run", "false"))
    # The store this command points at (where a run id is looked up); the checkpoint's own
    # config decides everything else.
    where = [o for o in overrides if o.lstrip("+~").startswith(("logger", "paths."))]
    with composed(where) as current:
        uri = (resolved(current).get("logger") or {}).get("tracking_uri")
    source = find_source(own["ckpt_path"], uri)
    if source.run_id is not None:
        client = MlflowClient(source.tracking_uri)
        run = client.get_run(source.run_id)
        if run.info.status == "RUNNING" and not new_run:
            raise ConfigError(
                f"MLflow run {source.run_id} is RUNNING; evaluate into a new run with "
                "new_run=true, or wait for it to end"
            )
        config = with_values(logged_config(client, source.run_id), overrides)
    else:  # a checkpoint of no run: the config the arguments compose
        with composed(overrides) as current:
            config = resolved(current)
    cfg = OmegaConf.create(config)
    if is_tracked(cfg):
        check_tracking_uri(str(cfg.logger.tracking_uri))
        cfg.logger.log_model = False  # the checkpoint is already where it was
        if new_run or source.run_id is None:
            evaluates = {"evaluates": source.run_id} if source.run_id else {}
            cfg.logger.tags = {**cfg.logger.tags, **EVAL_TAGS, **evaluates}
    cfg.callbacks.model_checkpoint = None  # testing writes no checkpoint
    into_source = source.run_id is not None and not new_run and is_tracked(cfg)
    built = build(cfg, run_id=source.run_id if into_source else None)
    logger, trainer = built.logger, built.trainer
    if logger is None:
        results = trainer.test(
            built.task, datamodule=built.datamodule, ckpt_path=str(source.checkpoint), verbose=False
        )
        status = "FINISHED"
    elif into_source:
        results, status = test_into(built, source)
    else:
        with tracked_run(logger, trainer) as outcome:
            client = logger.experiment
            params = flatten_params(config) | complexity_params(built.complexity)
            entries = [Param(k, str(v)) for k, v in params.items()]
            for start in range(0, len(entries), 100):
                client.log_batch(logger.run_id, params=entries[start : start + 100])
            client.log_text(logger.run_id, yaml.safe_dump(config, sort_keys=False),
                            "config/config.yaml")  # fmt: skip
            client.set_tag(logger.run_id, "ckpt_path", str(source.checkpoint))
            results = trainer.test(
                built.task,
                datamodule=built.datamodule,
                ckpt_path=str(source.checkpoint),
                verbose=False,
            )
        status = outcome.status
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    report(metrics, logger, str(cfg.logger.tracking_uri) if logger else None, status,
           str(source.checkpoint), built.tested.tags.get("tested_weights"))  # fmt: skip
    return metrics


def test_into(built: Any, source: Source) -> tuple[list[dict[str, float]], str]:
    """Test into the checkpoint's own run and give the run back its status and end time."""
    client = MlflowClient(source.tracking_uri)
    before = client.get_run(source.run_id).info
    client.set_tag(source.run_id, "evaluated_checkpoint", str(source.checkpoint))
    try:
        results = built.trainer.test(
            built.task, datamodule=built.datamodule, ckpt_path=str(source.checkpoint), verbose=False
        )
    finally:  # Lightning ends the run FINISHED after testing, whatever it was
        client.set_terminated(source.run_id, before.status, end_time=before.end_time)
    return results, before.status


def split_arguments(arguments: list[str]) -> tuple[dict[str, str], list[str]]:
    """(ablab eval's own ``key=value`` arguments, the config overrides)."""
    own: dict[str, str] = {}
    rest = []
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if sep and key in OWN_KEYS:
            own[key] = value
        else:
            rest.append(argument)
    return own, rest


def parse_bool(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ConfigError(f"{key}={value}: expected true or false")
    return value.lower() == "true"


def find_source(ckpt: str, uri: str | None) -> Source:
    """The checkpoint file and its run: from the file's owner entry, or from a run id."""
    path = Path(ckpt).expanduser()
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConfigError(f"ckpt_path={ckpt} is not a readable checkpoint: {err}") from None
        owner = state.get(OWNER_KEY) or {}
        job = JobState.load(path.resolve().parent.parent)  # <job>/checkpoints/<file>
        store = job.tracking_uri if job and job.run_id == owner.get("run_id") else uri
        if owner.get("run_id") and store is None:
            raise ConfigError(f"{ckpt} belongs to MLflow run {owner['run_id']}; pass "
                              "logger.tracking_uri=<its store>")  # fmt: skip
        return Source(path.resolve(), owner.get("run_id"), store)
    if path.suffix == ".ckpt" or "/" in ckpt:
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")
    if uri is None:
        raise ConfigError(f"ckpt_path={ckpt} is a run id, but logger=null names no store")
    try:
        run = MlflowClient(uri).get_run(ckpt)
    except MlflowException:
        raise ConfigError(
            f"ckpt_path={ckpt} is neither a checkpoint file nor a run in {uri}"
        ) from None
    folder = Path(run.data.tags.get("hydra_output_dir", ""))
    checkpoint = best_checkpoint(folder / "checkpoints") if folder.name else None
    if checkpoint is None:
        raise ConfigError(f"MLflow run {ckpt} has no checkpoint in {folder / 'checkpoints'}")
    job = JobState.load(folder)
    if job is None or job.run_id != ckpt:
        raise ConfigError(f"{folder} no longer holds MLflow run {ckpt} ({JOB_FILE} names another)")
    return Source(checkpoint, ckpt, uri)


def best_checkpoint(folder: Path) -> Path | None:
    """The best checkpoint the checkpoint callback recorded in ``last.ckpt``, else last.ckpt."""
    last = folder / LAST_CHECKPOINT
    if not last.is_file():
        return None
    state = torch.load(last, map_location="cpu", weights_only=True)
    for key, value in state.get("callbacks", {}).items():
        best = value.get("best_model_path") if "ModelCheckpoint" in key else None
        if best and Path(best).is_file():
            return Path(best)
    return last


def logged_config(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The resolved config the run logged when it started."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "config/config.yaml", tmp)
        except MlflowException as err:
            raise ConfigError(f"MLflow run {run_id} has no config/config.yaml: {err}") from None
        return yaml.safe_load(Path(path).read_text())


def with_values(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``config`` with ``key=value`` overrides of single values (not group choices, which would
    change what was trained)."""
    cfg: DictConfig = OmegaConf.create(config)
    for override in overrides:
        key, sep, value = override.partition("=")
        current = OmegaConf.select(cfg, key.lstrip("+"), default=None)
        if not sep or isinstance(current, DictConfig) or key.startswith("~"):
            raise ConfigError(
                f"{override}: ablab eval takes key=value changes to the run's logged config "
                "(e.g. data.root=/data, trainer.accelerator=gpu), not group choices"
            )
        OmegaConf.update(cfg, key.lstrip("+"), yaml.safe_load(value) if value else None,
                         force_add=key.startswith("+"))  # fmt: skip
    return OmegaConf.to_container(cfg)
