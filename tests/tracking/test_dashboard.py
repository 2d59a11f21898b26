"""The MLflow UI a user opens (``make ui`` = ``ablab ui``): the model-training runs view of the
newest experiment, the sweep's parent named after its factors, a column per factor; checked in
a real headless Chromium on a real 2x2 sweep."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow import MlflowClient

from ablab.tracking.dashboard import (
    VIEW_TAG_PREFIX,
    newest_view,
    run_path,
    runs_url,
    save_view,
    sweep_view_state,
)
from ablab.tracking.sweep import SweepPlan, parent_run_name
from conftest import run_module, tracking_uri
from services import free_port, stop_process_group, wait_healthy

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

FAST = ["trainer=smoke", "callbacks.batch_preview=null", "callbacks.model_checkpoint=null",
        "logger.log_model=false", "callbacks.progress_bar=null"]  # fmt: skip


def test_parent_is_named_after_the_study_or_sweep_and_its_factors() -> None:
    study = SweepPlan(["variant", "seed"], {"study": "bn_vs_nobn", "study_size": "quick"})
    assert parent_run_name(study) == "bn_vs_nobn (quick): variant × seed"
    assert parent_run_name(SweepPlan(["model.norm", "seed", "+x"])) == (
        "sweep: model.norm × seed × x"
    )
    assert parent_run_name(SweepPlan([])) == "sweep: no factors"


def test_the_url_asks_for_the_model_training_runs_view() -> None:
    assert runs_url("http://127.0.0.1:5000/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    )
    assert runs_url("http://h:1", "3", "abc").endswith(
        "/runs?workflowType=machine_learning&viewStateShareKey=abc"
    )
    assert run_path("3", "r1") == "#/experiments/3/runs/r1?workflowType=machine_learning"


def test_a_sweep_view_shows_its_runs_flat_with_a_column_per_factor() -> None:
    state = sweep_view_state(["model.norm", "+seed"], "/runs/sweep")
    assert state["selectedColumns"][:2] == ["tags.`factor.model.norm`", "tags.`factor.seed`"]
    assert state["columnOrder"][3:] == state["selectedColumns"]  # after name, date, duration
    # sorted by a factor, not by start time: MLflow then lists child runs as rows of their own
    assert state["orderByKey"] == "tags.`factor.model.norm`"
    assert state["searchFilter"] == "tags.`sweep_dir` = '/runs/sweep'"
    assert "searchFilter" not in sweep_view_state(["seed"], "/runs/it's")


def test_newest_view_follows_the_run_started_last(root: Path) -> None:
    client = MlflowClient(tracking_uri(root))
    assert newest_view(client) is None
    old = client.create_experiment("old", artifact_location=str(root / "a"))
    client.create_run(old)
    new = client.create_experiment("new", artifact_location=str(root / "b"))
    parent = client.create_run(new, tags={"sweep": "parent"}).info.run_id
    save_view(client, new, parent, "sweep: seed", sweep_view_state(["seed"], "/s"))
    assert VIEW_TAG_PREFIX + parent in client.get_experiment(new).tags
    assert newest_view(client) == (new, parent)
    client.create_run(new, tags={"mlflow.parentRunId": parent})
    assert newest_view(client) == (new, parent)  # a child opens its sweep's view
    client.create_run(old)  # a single run started last: its experiment, no view
    assert newest_view(client) == (old, None)


def grid_cell(page: Page, run_id: str, column: str) -> Locator:
    """The runs table's cell of one run and column: MLflow's AG Grid marks rows with the run id
    and cells with the column id a view selects (``tags.`factor.seed```)."""
    return page.locator(f'[row-id="{run_id}"] [col-id="{column}"]')


@pytest.fixture
def ui_url(root: Path) -> Iterator[str]:
    """``ablab ui`` (what ``make ui`` runs) on a free loopback port: the URL it prints, once the
    server answers ``/health``; its process group is stopped afterwards."""
    port, log = free_port(), root / "ui.log"
    ablab = Path(sys.executable).with_name("ablab")
    command = [str(ablab), "ui", "--backend-store-uri", tracking_uri(root), "--port", str(port),
               "--workers", "1"]  # fmt: skip
    env = {**os.environ, "ABLAB_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        line = proc.stdout.readline().decode()  # printed before the server starts
        assert "http://" in line, (line, log.read_text())
        wait_healthy(f"http://127.0.0.1:{port}", proc, log, timeout=600)
        url = line[line.index("http://") :].strip()
        assert url.startswith(f"http://127.0.0.1:{port}/#/"), url
        yield url
    finally:
        stop_process_group(proc)
        proc.stdout.close()


@pytest.mark.slow
def test_ui_opens_the_sweep_with_its_children_and_factor_columns(
    root: Path, chromium, request: pytest.FixtureRequest
) -> None:
    from playwright.sync_api import expect

    proc = run_module(["ablab.train", "-m", *FAST, "model.norm=bn,none", "seed=0,1"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.run_name == "sweep: model.norm × seed" and len(children) == 4

    url = request.getfixturevalue("ui_url")
    base = url.split("/#")[0]
    assert url == runs_url(base, parent.info.experiment_id, parent.info.run_id)
    page = chromium.new_page(viewport={"width": 1920, "height": 1000})
    try:
        page.goto(url)
        cell = functools.partial(grid_cell, page)
        name = "attributes.`Run Name`"
        expect(cell(parent.info.run_id, name)).to_contain_text("sweep: model.norm × seed")
        for child in children:
            run_id, tags = child.info.run_id, child.data.tags
            expect(cell(run_id, name)).to_contain_text(child.info.run_name)
            for factor in ("factor.model.norm", "factor.seed"):
                expect(cell(run_id, f"tags.`{factor}`")).to_have_text(tags[factor])
            # Python's repr and JavaScript's toString both give the shortest round trip
            expect(cell(run_id, "metrics.`test/acc`")).to_have_text(
                repr(child.data.metrics["test/acc"])
            )
        # the factors come first, before the metrics
        first = children[0].info.run_id
        factor_x = cell(first, "tags.`factor.model.norm`").bounding_box()["x"]
        assert factor_x < cell(first, "metrics.`test/acc`").bounding_box()["x"]
        # the model-training runs page (the GenAI one, the UI's default, has no Runs heading),
        # in the sweep's saved view
        expect(page.get_by_role("heading", name="Runs", level=2)).to_be_visible()
        runs_tab = page.get_by_role("link", name="Runs", exact=True)
        expect(runs_tab).to_have_attribute("href", re.compile("workflowType=machine_learning"))
        expect(page.get_by_role("button", name="sweep: model.norm × seed")).to_be_visible()
        shot = root / "mlflow-ui.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    if folder := os.environ.get("ABLAB_SCREENSHOT_DIR"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / "mlflow-ui.png")
