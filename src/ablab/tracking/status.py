"""How an MLflow run ends: final status and the tags that say why (FINISHED, FAILED, KILLED).

Only MLflow calls; the run lifecycle that decides the outcome is :mod:`ablab.training.lifecycle`.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

EXPERIMENT_KIND = "mlflow.experimentKind"
#: Tag naming the global rank other than 0 whose exception or signal ended the run.
ENDED_BY_RANK = "ended_by_rank"
#: Tags that explain how a run ended.
END_TAGS = ("failure", "error", "killed_by", ENDED_BY_RANK)
#: Tag set when a preemption signal stopped the run after saving ``last.ckpt``.
PREEMPTED = "preempted"


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


def set_final_status(client: MlflowClient, outcome: Any, rank: int, shared: bool = False) -> None:
    """Tag how the run ended and terminate it.

    With ``shared`` (several ranks) the first rank to explain a failure or kill wins: the other
    ranks only fail after it has exited, on the collective it broke, and must not overwrite it.
    """
    if shared and {"failure", "killed_by"} & client.get_run(outcome.run_id).data.tags.keys():
        return
    if outcome.status == "FINISHED":  # e.g. a report that took the run for dead while it ran
        clear_end_tags(client, outcome.run_id)
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
