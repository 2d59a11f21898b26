"""Lightning's ``MLFlowLogger`` with an explicit store, run context tags and lossless params."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
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
) -> ResumableMLFlowLogger:
    """An ``MLFlowLogger`` whose run also carries git commit, host and user tags.

    ``tracking_uri`` is always explicit: Lightning's fallback ``./mlruns`` file store is refused by
    MLflow 3. ``artifact_location`` only applies when this call creates the experiment.
    ``run_id`` continues an existing run (a resumed job) instead of creating one.
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
    )


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` that, in a resumed run, logs each metric step only once.

    A job resumed from ``last.ckpt`` replays the steps between that checkpoint and the moment it
    died; the run already has those steps, so their replayed values are dropped
    (:meth:`skip_recorded`), and every ``(metric, step)`` pair appears exactly once.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorded: dict[str, int] = {}

    def skip_recorded(self, recorded: Mapping[str, int]) -> None:
        """Drop values at or before ``recorded[key]`` (each metric's last step in the run)."""
        self.recorded = dict(recorded)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.recorded and step is not None:
            metrics = {k: v for k, v in metrics.items() if step > self.recorded.get(k, -1)}
            if not metrics:
                return
        super().log_metrics(metrics, step)


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
