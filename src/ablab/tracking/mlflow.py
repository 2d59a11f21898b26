"""Lightning's ``MLFlowLogger`` with an explicit store, run context tags, lossless params and
metrics written in batches."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_fabric.utilities.logger import _add_prefix
from mlflow.entities import Metric
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from ablab.tracking.context import run_context_tags
from ablab.tracking.sweep import child_tags

#: Keys that differ on every run (paths, output dirs); they go to tags, never to params.
VOLATILE_KEYS = ("paths.", "trainer.default_root_dir", "logger.")


def mlflow_logger(
    *,
    experiment_name: str,
    tracking_uri: str,
    run_name: str | None = None,
    artifact_location: str | None = None,
    log_model: bool | str = True,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    flush_every_s: float = 15.0,
) -> ResumableMLFlowLogger:
    """An ``MLFlowLogger`` whose run also carries git commit, host and user tags.

    ``tracking_uri`` is always explicit: Lightning's fallback ``./mlruns`` file store is refused by
    MLflow 3. ``artifact_location`` only applies when this call creates the experiment.
    ``run_id`` continues an existing run (a resumed job) instead of creating one.
    ``flush_every_s``: the longest a logged value waits in memory (see
    :class:`ResumableMLFlowLogger`).
    """
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # Inside a multirun the run is a child of the sweep's parent run, tagged with its factors.
    all_tags = {
        **run_context_tags(),
        **child_tags(),
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    return ResumableMLFlowLogger(
        run_id=run_id,
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags=all_tags,
        artifact_location=artifact_location,
        log_model=log_model,
        flush_every_s=flush_every_s,
    )


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` that writes metrics in batches and, in a resumed run, logs
    each metric step only once.

    Batches: every ``log_metrics`` call is stamped with its time and step and held in memory;
    :meth:`flush` writes everything held in one ``log_batch`` per 1,000 values. One store write
    costs about as much as a LeNet training step on a local sqlite store (SQLAlchemy's ORM work
    and a latest-value query), and Lightning writes after every logging call. ablab writes once
    per epoch and at the end of each stage (:class:`ablab.training.callbacks.FlushMetrics`, which
    also puts what is held into every checkpoint), and whenever the oldest held value is
    ``flush_every_s`` seconds old, so the UI follows a long epoch.

    A kill (even SIGKILL) loses nothing a resumed job does not log again: values held at a
    checkpoint are in it, and the steps after it are trained again.

    Resume: a job resumed from ``last.ckpt`` replays the steps between that checkpoint and the
    moment it died; the run already has those steps, so their replayed values are dropped
    (:meth:`skip_recorded`), and every ``(metric, step)`` pair appears exactly once.
    """

    def __init__(self, *, flush_every_s: float = 15.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorded: dict[str, int] = {}
        self.flush_every_s = flush_every_s
        self.pending: list[Metric] = []
        self.pending_since: float | None = None
        self.flush_on_log = False

    def skip_recorded(self, recorded: Mapping[str, int]) -> None:
        """Drop values at or before ``recorded[key]`` (each metric's last step in the run)."""
        self.recorded = dict(recorded)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Hold the values (names cleaned as Lightning's ``MLFlowLogger`` cleans them, strings
        dropped); write them once the oldest is ``flush_every_s`` old."""
        if self.recorded and step is not None:
            metrics = {k: v for k, v in metrics.items() if step > self.recorded.get(k, -1)}
        now = time.time()
        stamp = int(now * 1000)
        for key, value in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, str):
                continue
            key = re.sub("[^a-zA-Z0-9_/. -]+", "", key)
            self.pending.append(
                Metric(key=key, value=float(value), timestamp=stamp, step=step or 0)
            )
        if self.pending and self.pending_since is None:
            self.pending_since = now
        if self.pending_since is not None and (
            self.flush_on_log or now - self.pending_since >= self.flush_every_s
        ):
            self.flush()

    def flush_after_next_log(self) -> None:
        """Write what is held at the end of the next :meth:`log_metrics` call: Lightning logs a
        training epoch's end-of-epoch values after every ``on_train_epoch_end`` hook, so a hook
        that wants them written can only ask for it."""
        self.flush_on_log = True

    @rank_zero_only
    def flush(self) -> None:
        """Write every held value to the store (one ``log_batch`` per 1,000)."""
        pending, self.pending, self.pending_since = self.pending, [], None
        self.flush_on_log = False
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            chunk = pending[start : start + MAX_METRICS_PER_BATCH]
            self.experiment.log_batch(run_id=self.run_id, metrics=chunk, **self._log_batch_kwargs)

    def held(self) -> list[list[Any]]:
        """What is held and not yet written, as ``[key, value, timestamp, step]`` rows."""
        return [[m.key, m.value, m.timestamp, m.step] for m in self.pending]

    @rank_zero_only
    def hold(self, rows: list[list[Any]]) -> None:
        """Hold rows from :meth:`held` again (a resumed job: its checkpoint's), except those at
        or before a step the run already has (:meth:`skip_recorded`)."""
        for key, value, timestamp, step in rows:
            if step > self.recorded.get(key, -1):
                self.pending.append(Metric(key=key, value=value, timestamp=timestamp, step=step))
        if self.pending and self.pending_since is None:
            self.pending_since = time.time()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self.pending:
            self.flush()
        super().finalize(status)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a resolved config to ``a.b.c -> str(value)`` params, leaving out volatile keys.

    MLflow caps a param value at 6000 characters; a longer value is split losslessly into
    ``key``, ``key.part1``, ``key.part2``, … rather than cut.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if any(name == v.rstrip(".") or name.startswith(v) for v in VOLATILE_KEYS):
            continue
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
            continue
        text = str(value)
        chunks = [
            text[i : i + MAX_PARAM_VAL_LENGTH] for i in range(0, len(text), MAX_PARAM_VAL_LENGTH)
        ]
        flat[name] = chunks[0] if chunks else ""
        for i, chunk in enumerate(chunks[1:], start=1):
            flat[f"{name}.part{i}"] = chunk
    return flat
