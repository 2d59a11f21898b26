"""The MLflow run's final status says how the run ended: FINISHED, FAILED (why) or KILLED (by what).

Lightning marks a run FAILED on Ctrl-C and FINISHED after every ``fit``/``test``; the status set
here, after everything else, is the one that stays.
"""

from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from pytorch_lightning.loggers import MLFlowLogger

EXPERIMENT_KIND = "mlflow.experimentKind"


@dataclass
class RunOutcome:
    """How a tracked block ended; ``failure`` is ``oom``, ``nonfinite_loss`` or ``exception``."""

    run_id: str
    status: str = "RUNNING"
    failure: str | None = None
    error: str | None = None
    killed_by: str | None = None


def failure_kind(exc: BaseException) -> str:
    """Classify an exception for the ``failure`` tag."""
    if isinstance(exc, torch.OutOfMemoryError):
        return "oom"
    return getattr(exc, "failure_kind", "exception")


@contextmanager
def tracked_run(logger: MLFlowLogger) -> Iterator[RunOutcome]:
    """Create the logger's run, and on exit set its final status and failure tags.

    SIGINT and SIGTERM raise ``KeyboardInterrupt`` inside the block (Lightning then shuts down
    cleanly, saving what it had) and end the run KILLED with a ``killed_by`` tag.
    """
    client, outcome = logger.experiment, RunOutcome(run_id=logger.run_id)
    experiment = client.get_experiment(logger.experiment_id)
    if EXPERIMENT_KIND not in experiment.tags:
        # MLflow 3's UI opens untagged experiments in its GenAI view; these are training runs.
        client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND, "custom_model_development"
        )
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
            client.log_text(outcome.run_id, traceback.format_exc(), "error/traceback.txt")
        raise
    finally:
        late: list[str] = []
        if in_main:  # a signal now must not cut the status update short: note it, act after
            for sig in previous:
                signal.signal(sig, lambda signum, frame: late.append(signal.Signals(signum).name))
        try:
            if late and outcome.status == "FINISHED":
                outcome.status, outcome.killed_by = "KILLED", late[0]
            tags = {
                "failure": outcome.failure,
                "error": outcome.error,
                "killed_by": outcome.killed_by,
            }
            for key, value in tags.items():
                if value is not None:
                    client.set_tag(outcome.run_id, key, value)
            client.set_terminated(outcome.run_id, outcome.status)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if late:
            signal.raise_signal(signal.Signals[late[0]])
