"""Reports on studies with unfinished children (issue 13, item 6): a run that did not finish is
never a final value; a RUNNING run whose process is gone is ended KILLED; the report names every
run it left out and the verdicts that rest on fewer seeds because of them."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ablab.analysis.collect import collect, find_study_runs
from ablab.analysis.render import left_out_line, write_report
from conftest import tracking_uri

STUDY = """
claim: "0. A fabricated claim: variant 'better' ends higher."
question: Are unfinished runs left out?
baseline: {name: base, overrides: {model.width: 1}}
variants:
  better: {model.width: 2}
seeds: [0, 1, 2, 3]
sizes: {quick: {}}
quantities:
  - {metric: val/acc, stat: final}
  - {metric: train/loss, stat: diverged}
expect:
  - {variant: better, quantity: final val/acc, direction: higher}
"""
#: What a killed run logged before it died: far below anything a finished run reaches.
CUT_SHORT = 0.1


class Study:
    """A study's parent run in a real sqlite store, and a way to add children to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        folder = root / "lost"
        folder.mkdir()
        (folder / "study.yaml").write_text(STUDY)
        self.client = MlflowClient(tracking_uri(root))
        self.experiment = self.client.create_experiment("lost", artifact_location=str(root / "a"))
        tags = {"sweep": "parent", "study": "lost", "study_file": str(folder / "study.yaml")}
        self.parent = self.client.create_run(
            self.experiment, tags={**tags, "study_size": "quick"}
        ).info.run_id
        self.clock = 1_000_000

    def child(
        self, variant: str, seed: int, status: str = "FINISHED", acc: float | None = None, **tags
    ) -> str:
        """One child run, started after every earlier one; ``acc`` defaults to a value that
        makes ``better`` higher than ``base`` by 0.05 with a little per-seed spread."""
        self.clock += 1000
        run = self.client.create_run(
            self.experiment,
            start_time=self.clock,
            tags={"mlflow.parentRunId": self.parent, **tags},
        ).info.run_id
        if acc is None:
            acc = 0.85 + 0.05 * (variant == "better") + 0.01 * seed * (1 + (variant == "better"))
        self.client.log_batch(
            run,
            metrics=[Metric("val/acc", acc, 0, 10)],
            params=[Param("variant", variant), Param("seed", str(seed))],
        )
        if status != "RUNNING":
            self.client.set_terminated(run, status)
        return run

    def full(self, skip: set[tuple[str, int]] = frozenset()) -> None:
        """A FINISHED child for every variant and seed but ``skip``."""
        for variant in ("base", "better"):
            for seed in range(4):
                if (variant, seed) not in skip:
                    self.child(variant, seed)

    def job_dir(self, name: str) -> Path:
        """A job folder with a ``job.lock`` that nobody holds (the process that held it died)."""
        folder = self.root / "jobs" / name
        folder.mkdir(parents=True)
        (folder / "job.lock").touch()
        return folder

    def report(self):
        return collect(self.client, find_study_runs(self.client, self.parent))


def used(report, variant: str) -> dict[int, str]:
    return next(v for v in report.variants if v.name == variant).run_ids


def test_a_running_child_whose_process_is_gone_is_ended_killed_and_left_out(root: Path) -> None:
    study = Study(root)
    study.full(skip={("base", 3)})
    lost = study.child(
        "base", 3, "RUNNING", acc=CUT_SHORT, hydra_output_dir=str(study.job_dir("base-3"))
    )
    report = study.report()
    # the store now says what happened to it
    run = study.client.get_run(lost)
    assert run.info.status == "KILLED" and run.data.tags["killed_by"] == "process_gone"
    # never a final value: base has three seeds, the comparison pairs three
    assert sorted(used(report, "base")) == [0, 1, 2]
    assert lost not in used(report, "base").values()
    base = next(v for v in report.variants if v.name == "base").summaries["final val/acc"]
    assert base.n == 3 and CUT_SHORT not in base.values
    comparison = next(c for c in report.comparisons if c.quantity == "final val/acc")
    assert comparison.seeds == [0, 1, 2]
    [entry] = report.left_out
    assert (entry.variant, entry.seed, entry.run_id) == ("base", 3, lost)
    assert (entry.status, entry.reason, entry.used_instead) == (
        "KILLED",
        "killed (process gone)",
        "",
    )
    # the verdict says it rests on fewer seeds than the study ran, and why
    [verdict] = report.verdicts
    assert verdict.seeds_left_out == [3]
    assert "3 of 4 seeds" in verdict.reason and "left out" in verdict.reason
    # ... and so do the pages and the line `ablab report` prints
    paths = write_report(report, root / "out")
    markdown = paths["markdown"].read_text()
    assert "## Runs left out" in markdown
    assert f"| base | 3 | {lost} | KILLED | killed (process gone) | — |" in markdown
    html = paths["html"].read_text()
    assert 'class="left-out"' in html and lost in html and "killed (process gone)" in html
    line = left_out_line(report)
    assert line is not None and "1 run" in line and "base seed 3" in line
    assert "killed (process gone)" in line
    # a second report finds it KILLED already and says the same
    again = study.report().left_out
    assert [(e.run_id, e.reason) for e in again] == [(lost, "killed (process gone)")]


def test_a_running_child_that_holds_its_lock_is_left_out_and_not_ended(root: Path) -> None:
    study = Study(root)
    study.full(skip={("better", 1)})
    folder = study.job_dir("better-1")
    with open(folder / "job.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the job's process, still training
        alive = study.child("better", 1, "RUNNING", acc=CUT_SHORT, hydra_output_dir=str(folder))
        report = study.report()
    run = study.client.get_run(alive)
    assert run.info.status == "RUNNING" and "killed_by" not in run.data.tags
    assert sorted(used(report, "better")) == [0, 2, 3]
    [entry] = report.left_out
    assert (entry.run_id, entry.status, entry.reason) == (alive, "RUNNING", "still running")
    # a RUNNING child without a lock file to ask (another machine's folder) is not ended either
    (root / "b").mkdir()
    study2 = Study(root / "b")
    study2.full(skip={("better", 1)})
    unknown = study2.child("better", 1, "RUNNING", hydra_output_dir=str(root / "nowhere"))
    report = study2.report()
    assert study2.client.get_run(unknown).info.status == "RUNNING"
    assert [(e.run_id, e.reason) for e in report.left_out] == [(unknown, "still running")]


@pytest.mark.parametrize("order", ["killed first", "finished first"])
def test_a_finished_run_wins_over_a_killed_run_of_the_same_seed(root: Path, order: str) -> None:
    study = Study(root)
    study.full(skip={("better", 2)})
    runs = {}
    for status in ("KILLED", "FINISHED") if order == "killed first" else ("FINISHED", "KILLED"):
        acc = CUT_SHORT if status == "KILLED" else None
        runs[status] = study.child("better", 2, status, acc=acc, killed_by="SIGTERM")
    report = study.report()
    assert used(report, "better")[2] == runs["FINISHED"]
    summary = next(v for v in report.variants if v.name == "better").summaries["final val/acc"]
    assert summary.n == 4 and CUT_SHORT not in summary.values
    [entry] = report.left_out
    assert (entry.run_id, entry.reason) == (runs["KILLED"], "killed (SIGTERM)")
    assert entry.used_instead == runs["FINISHED"]
    # the seed was not lost: the verdict rests on every seed
    assert report.verdicts[0].seeds_left_out == []
    assert "left out" not in report.verdicts[0].reason


def test_a_diverged_run_is_used_and_other_failures_are_left_out(root: Path) -> None:
    study = Study(root)
    study.full(skip={("better", 0), ("better", 1)})
    diverged = study.child("better", 0, "FAILED", failure="nonfinite_loss")
    crashed = study.child("better", 1, "FAILED", failure="oom", error="CUDA out of memory")
    report = study.report()
    assert used(report, "better")[0] == diverged
    diverged_q = next(v for v in report.variants if v.name == "better").summaries["diverged"]
    assert diverged_q.values == [1.0, 0.0, 0.0]  # seeds 0, 2, 3: the diverged run counts
    [entry] = report.left_out
    assert (entry.run_id, entry.status) == (crashed, "FAILED")
    assert entry.reason == "failed (oom: CUDA out of memory)"


def test_seeds_the_sweep_never_started_are_listed(root: Path) -> None:
    study = Study(root)
    study.full(skip={("better", 3)})  # the sweep was killed before its last job
    report = study.report()
    [entry] = report.left_out
    assert (entry.variant, entry.seed, entry.run_id, entry.status) == ("better", 3, "", "")
    assert entry.reason == "no run (never started)"
    assert report.verdicts[0].seeds_left_out == [3]


def test_a_study_where_every_run_finished_leaves_nothing_out(root: Path) -> None:
    study = Study(root)
    study.full()
    report = study.report()
    assert report.left_out == [] and left_out_line(report) is None
    assert report.verdicts[0].seeds_left_out == [] and report.verdicts[0].outcome == "holds"
