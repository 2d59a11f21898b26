"""What the MLflow UI opens on: the model-training runs view, a sweep's factors as columns.

MLflow 3.17's UI (``mlflow/server/js/build``) picks its GenAI or its model-training views by a
``workflowType``, ``genai`` or ``machine_learning``: the URL's ``?workflowType=`` first, else the
browser's localStorage ``mlflow.workflowType``, else ``genai``. The experiment tag
``mlflow.experimentKind`` is not read for that (the feature flag that derives the kind from the
workflow type is hard-coded on), so a fresh browser opens every experiment on its Traces tab, and
the link itself has to ask for the runs.

The runs table's columns, sort order and filter come from a *saved view*: an experiment tag
``mlflow.sharedViewState.<id>`` holding ``{"name", "createdAt", "updatedAt", "state"}`` (``state``
the page's state as a JSON string), opened by ``?viewStateShareKey=<id>`` and listed in the
page's "Views" menu. A view cannot expand a parent run (the UI drops ``runsExpanded`` from it),
and MLflow nests child runs under a collapsed parent only while the table is sorted by start
time, so a sweep's view sorts by its first factor: the parent and every child are rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import ViewType

#: The UI's URL parameter and value for the model-training views (runs, models, charts).
WORKFLOW_PARAM = "workflowType"
MACHINE_LEARNING = "machine_learning"
#: Experiment tag prefix of a saved view, and the URL parameter that opens one.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_PARAM = "viewStateShareKey"
#: The runs table's own columns that a view shows first (their AG Grid column ids).
FIXED_COLUMNS = ("attributes.`Run Name`", "runDateAndNestInfo", "duration")
#: Metrics a sweep's view shows beside its factors (a column no run has is not shown).
HEADLINE_METRICS = ("test/acc", "val/acc")


def column(kind: str, key: str) -> str:
    """The runs table's id of a column: ``tags.`factor.seed```, ``metrics.`test/acc```."""
    return f"{kind}.`{key}`"


def sweep_view_state(factors: Sequence[str], sweep_dir: str) -> dict[str, Any]:
    """The runs page's state for one sweep: its runs only (``sweep_dir`` tag), a column per
    factor (``factor.<key>`` tags) and headline metric, sorted by the first factor."""
    keys = [f"factor.{f.lstrip('+~')}" for f in factors]
    selected = [
        *(column("tags", k) for k in keys),
        *(column("metrics", m) for m in HEADLINE_METRICS),
    ]
    state: dict[str, Any] = {
        "selectedColumns": selected,
        # The factors right after the run's name and times; the UI applies widths only to the
        # columns an order names, so the order names every shown column.
        "columnOrder": [*FIXED_COLUMNS, *selected],
        # wide enough for the header (the table's default cuts ``factor.model.norm`` short)
        "columnWidths": {column("tags", k): max(100, 8 * len(k) + 40) for k in keys},
        "orderByKey": column("tags", keys[0]) if keys else column("tags", "mlflow.runName"),
        "orderByAsc": True,
    }
    if "'" not in sweep_dir:  # MLflow's filter grammar has no escape for a quote in a string
        state["searchFilter"] = f"tags.`sweep_dir` = '{sweep_dir}'"
    return state


def save_view(
    client: MlflowClient, experiment_id: str, view_id: str, name: str, state: dict[str, Any]
) -> None:
    """Write ``state`` as the experiment's saved view ``view_id`` named ``name`` (replacing one of
    the same id), in the envelope the UI's "Views" menu reads."""
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + view_id, json.dumps(envelope))


def runs_url(base_url: str, experiment_id: str, view_id: str | None = None) -> str:
    """The UI's URL of an experiment's model-training runs table, in a saved view if given."""
    query = f"{WORKFLOW_PARAM}={MACHINE_LEARNING}"
    if view_id:
        query += f"&{VIEW_PARAM}={view_id}"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_path(experiment_id: str, run_id: str) -> str:
    """The UI's path of one run's page, in the model-training views (``#/experiments/…``)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{WORKFLOW_PARAM}={MACHINE_LEARNING}"


def newest_view(client: MlflowClient) -> tuple[str, str | None] | None:
    """``(experiment id, saved view id or None)`` of the run started last in the store, or
    ``None`` when it holds no run. The view is its sweep's, when that run is a sweep's parent
    or child and the parent saved one (its id is the parent's run id)."""
    experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    ids = [e.experiment_id for e in experiments]
    if not ids:
        return None
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    experiment_id = run.info.experiment_id
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent is None and run.data.tags.get("sweep") == "parent":
        parent = run.info.run_id
    tags = client.get_experiment(experiment_id).tags
    return experiment_id, parent if parent and VIEW_TAG_PREFIX + parent in tags else None
