"""``ablab report`` on fabricated MLflow runs: known differences give known verdicts, identical
distributions give no significant difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ablab.analysis.collect import collect, find_study_runs, publish
from ablab.errors import ConfigError
from ablab.study import load_study
from conftest import tracking_uri

STUDY = """
claim: "0. A fabricated claim: variant 'better' learns faster and ends higher."
question: Do the fabricated variants differ the way they were made to?
baseline: {name: base, overrides: {model.width: 1}}
variants:
  better: {model.width: 2}
  same: {model.width: 3}
  worse: {model.width: 4}
  blowup: {model.width: 5}
seeds: [0, 1, 2, 3, 4]
sizes: {quick: {}}
quantities:
  - {metric: val/acc, stat: final}
  - {metric: val/acc, stat: steps_to, threshold: 0.8}
  - {metric: train/loss, stat: diverged}
expect:
  - {variant: better, quantity: final val/acc, direction: higher}
  - {variant: better, quantity: steps to val/acc >= 0.8, direction: lower}
  - {variant: same, quantity: final val/acc, direction: higher}
  - {variant: worse, quantity: final val/acc, direction: higher}
  - {variant: blowup, quantity: diverged, direction: higher}
  - {variant: blowup, quantity: final val/acc, direction: lower}
  - {variant: better, quantity: final val/acc, direction: higher, against: worse}
curves: [val/acc]
profiles: [act_std, act_std@init]
"""
#: Final accuracy each fabricated variant is made to reach, and how fast (per-step gain).
TRUTH = {
    "base": (0.85, 0.05),
    "better": (0.90, 0.10),
    "same": (0.85, 0.05),
    "worse": (0.80, 0.05),
    "blowup": (0.80, 0.05),  # every seed stopped by the non-finite loss guard
}
STEPS = list(range(0, 100, 10))


def fabricate(root: Path, noise: float = 0.005) -> tuple[MlflowClient, str]:
    """A study parent run with one child per variant and seed, as a study sweep would log them."""
    folder = root / "fabricated"
    folder.mkdir()
    (folder / "study.yaml").write_text(STUDY)
    client = MlflowClient(tracking_uri(root))
    experiment = client.create_experiment("fabricated", artifact_location=str(root / "art"))
    parent = client.create_run(
        experiment,
        tags={"sweep": "parent", "study": "fabricated", "study_file": str(folder / "study.yaml")},
    )
    rng = np.random.default_rng(0)
    for variant, (final, rate) in TRUTH.items():
        for seed in range(5):
            run = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
            # a saturating curve toward `final`, plus per-seed noise
            curve = [final * (1 - np.exp(-rate * s)) + rng.normal(0, noise) for s in STEPS]
            client.log_batch(
                run.info.run_id,
                metrics=[Metric("val/acc", v, 0, s) for s, v in zip(STEPS, curve, strict=True)],
                params=[Param("variant", variant), Param("seed", str(seed))],
            )
            # the diagnostics callback's per-layer summary: activation std shrinking with depth
            shrink = 0.5 if variant == "worse" else 0.9
            layers = {f"layer{i}": shrink**i for i in range(4)}
            reverse = dict(zip(layers, reversed(layers.values()), strict=True))
            snapshots = {"init": {"act_std": layers}, "end": {"act_std": reverse}}
            client.log_dict(run.info.run_id, snapshots, "diagnostics/layers.json")
            if variant == "blowup":  # as the non-finite loss guard would end it
                client.set_tag(run.info.run_id, "failure", "nonfinite_loss")
            client.set_terminated(run.info.run_id, "FAILED" if variant == "blowup" else "FINISHED")
    client.set_terminated(parent.info.run_id)
    return client, parent.info.run_id


def verdicts_of(report) -> dict[tuple[str, str], str]:
    """Outcome by (variant, quantity) of the claims against the baseline."""
    return {(v.variant, v.quantity): v.outcome for v in report.verdicts if not v.against}


def test_known_differences_give_known_verdicts(root: Path) -> None:
    client, parent = fabricate(root)
    report = collect(client, find_study_runs(client, parent))
    verdicts = verdicts_of(report)
    assert verdicts[("better", "final val/acc")] == "holds"
    assert verdicts[("better", "steps to val/acc >= 0.8")] == "holds"
    assert verdicts[("worse", "final val/acc")] == "does not hold"  # significantly lower
    assert verdicts[("same", "final val/acc")] == "inconclusive"  # no significant difference
    assert verdicts[("blowup", "diverged")] == "holds"  # every seed diverged, no baseline did
    # where a diverged run ended is undefined: no final value, so no verdict on it
    assert verdicts[("blowup", "final val/acc")] == "inconclusive"
    against = [v for v in report.verdicts if v.against == "worse"]
    assert [(v.variant, v.outcome) for v in against] == [("better", "holds")]
    assert report.seeds == [0, 1, 2, 3, 4] and report.baseline == "base"
    summary = {v.name: v.summaries["final val/acc"] for v in report.variants}
    assert summary["better"].mean == pytest.approx(0.90, abs=0.01)
    assert summary["base"].ci_low < 0.85 < summary["base"].ci_high
    holm = [c for c in report.comparisons if c.quantity == "final val/acc"]
    # the claims are a corrected family (a diverged variant's comparison has no p at all)
    assert all(c.p_holm >= c.p_value for c in holm if not np.isnan(c.p_value))
    band = report.curves["val/acc"]["better"]
    assert band.steps == STEPS and band.n_seeds == 5
    profile = report.diagnostics["act_std by layer (at initialisation)"]
    assert profile["worse"].steps == [0, 1, 2, 3]
    assert profile["worse"].mean == pytest.approx([1, 0.5, 0.25, 0.125])
    end = report.diagnostics["act_std by layer (end of training)"]
    assert end["worse"].mean == pytest.approx([0.125, 0.25, 0.5, 1])


def test_identical_distributions_are_not_significant(root: Path) -> None:
    client, parent = fabricate(root, noise=0.02)
    report = collect(client, find_study_runs(client, parent))
    same = next(c for c in report.comparisons if c.variant == "same" and "final" in c.quantity)
    assert same.ci_low < 0 < same.ci_high
    assert verdicts_of(report)[("same", "final val/acc")] == "inconclusive"


def test_a_study_is_found_by_name_and_its_latest_parent(root: Path) -> None:
    client, parent = fabricate(root)
    runs = find_study_runs(client, str(root / "fabricated"))
    assert runs.parent.info.run_id == parent and len(runs.children) == 25


def test_unknown_studies_and_sizes_are_one_line_errors(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown study 'nope'; valid: .*bn_vs_nobn"):
        load_study("nope")
    with pytest.raises(ConfigError, match=r"has no size 'huge'; valid: quick, full"):
        load_study("bn_vs_nobn").jobs("huge")


def test_study_jobs_carry_variant_seed_and_overrides() -> None:
    study = load_study("bn_vs_nobn")
    jobs = study.jobs("quick")
    assert len(jobs) == len(study.variants) * len(study.seeds_for("quick"))
    job = next(j for j in jobs if j.variant == "no_bn" and j.seed == 1)
    assert {"model.norm=none", "study=bn_vs_nobn", "variant=no_bn", "seed=1"} <= set(job.overrides)
    assert study.factors()[:2] == ["variant", "seed"]


TINY = """
claim: "0. A tiny end-to-end study: ReLU LeNet trains better than sigmoid LeNet in two steps."
question: Does the whole path (study sweep, MLflow, report) work?
common: {trainer: smoke, callbacks.batch_preview: null, logger.log_model: false}
baseline: {name: relu, overrides: {model.act: relu}}
variants:
  sigmoid: {model.act: sigmoid}
seeds: [0, 1]
sizes: {quick: {}}
quantities:
  - {metric: val/acc, stat: final}
expect:
  - {variant: sigmoid, quantity: final val/acc, direction: lower}
curves: [val/acc]
"""


@pytest.mark.slow
def test_a_study_killed_midway_is_reported_then_finished_by_its_command(root: Path) -> None:
    """The whole path under a fault: ``ablab study`` killed with kill -9 in its third job;
    ``ablab report`` leaves the killed child and the job never started out and says so; the same
    command again finishes the study under the same parent and reports every claim."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from conftest import REPO, run_module
    from injected import SAFETY_TIMEOUT_S, pause_at, wait_paused

    folder = root / "tiny"
    folder.mkdir()
    (folder / "study.yaml").write_text(TINY)
    # jobs: relu seed 0, relu seed 1, sigmoid seed 0 (paused at step 1, then killed), sigmoid 1
    command = [sys.executable, "-m", "ablab.cli", "study", str(folder), pause_at(1, root, job=2)]
    env = {**os.environ, "ABLAB_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])  # the pause
    env.pop("MLFLOW_TRACKING_URI", None)
    log = root / "study.log"
    with open(log, "w") as out:
        study = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
    wait_paused(root, study, log)
    # the same study launched again while it runs: refused in one line, nothing touched
    again = run_module(["ablab.cli", "study", str(folder), pause_at(1, root, job=2)], root,
                       timeout=SAFETY_TIMEOUT_S)  # fmt: skip
    assert again.returncode == 2 and "is in use by pid" in again.stderr, again.stderr[-2000:]
    os.killpg(study.pid, signal.SIGKILL)  # the study command and its sweep, no chance to react
    study.wait(timeout=SAFETY_TIMEOUT_S)
    client = MlflowClient(tracking_uri(root))
    # read straight from the store (find_study_runs would end the dead run itself)
    experiments = [e.experiment_id for e in client.search_experiments()]
    children = client.search_runs(experiments, "tags.`mlflow.parentRunId` != ''")
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED", "RUNNING"]
    (killed,) = [r for r in children if r.info.status == "RUNNING"]
    assert (killed.data.params["variant"], killed.data.params["seed"]) == ("sigmoid", "0")

    proc = run_module(["ablab.cli", "report", str(folder)], root, timeout=SAFETY_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "left out 2 runs (no final value): sigmoid seed 0 killed (process gone); sigmoid seed 1 no run (never started)"
        in proc.stdout
    ), proc.stdout
    lost = client.get_run(killed.info.run_id)
    assert lost.info.status == "KILLED" and lost.data.tags["killed_by"] == "process_gone"
    parent = client.get_run(lost.data.tags["mlflow.parentRunId"])  # its launcher died too
    assert parent.info.status == "KILLED" and parent.data.tags["killed_by"] == "process_gone"
    results = (folder / "RESULTS.md").read_text()
    assert f"| sigmoid | 0 | {killed.info.run_id} | KILLED | killed (process gone) |" in results
    assert "no run (never started)" in results

    # the same command: finished jobs reported, the killed one continued, the last one run
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                               timeout=SAFETY_TIMEOUT_S)  # fmt: skip
    output = log.read_text()
    assert code == 0, output[-3000:]
    # two seeds are too few for a verdict, whatever the numbers: the tool says so
    assert "inconclusive (too few seeds: n=2 < 3" in output
    # the command the user typed, portable: no interpreter path of this machine; the
    # machine by its hardware and libraries, not its name
    results = (folder / "RESULTS.md").read_text()
    assert f"\nablab study {folder} --size quick " in results
    assert "/bin/python" not in results and socket.gethostname() not in results
    machine = next(line for line in results.splitlines() if line.startswith("- **Machine:**"))
    assert " cores, " in machine and " torch thread(s) per run; GPU: " in machine
    assert "torch 2." in machine and "Lightning " in machine and "git " in machine
    runs = find_study_runs(client, str(folder))
    assert runs.parent.info.run_id == parent.info.run_id
    assert len(runs.children) == 4 and {r.info.status for r in runs.children} == {"FINISHED"}
    resumed = client.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["attempt"] == "2"
    assert "killed_by" not in resumed.data.tags
    assert {r.data.params["variant"] for r in runs.children} == {"relu", "sigmoid"}
    assert {r.data.tags["factor.variant"] for r in runs.children} == {"relu", "sigmoid"}
    results = (folder / "RESULTS.md").read_text()
    assert "| sigmoid | final val/acc | lower than relu | inconclusive |" in results
    assert "left out" not in results.lower()
    html = (folder / "RESULTS.html").read_text()
    assert 'class="verdicts"' in html and "data:image/png;base64," in html
    parent = client.get_run(runs.parent.info.run_id)
    assert parent.info.status == "FINISHED" and "killed_by" not in parent.data.tags
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/RESULTS.md", "report/RESULTS.html"} <= artifacts
    assert "summary/relu/final_val/acc/mean" in parent.data.metrics
    assert parent.data.tags["verdict/sigmoid/final_val/acc"] == "inconclusive"


def test_log_scale_quantities_compare_orders_of_magnitude(root: Path) -> None:
    from ablab.analysis.collect import quantity_value
    from ablab.study import Quantity

    client = MlflowClient(tracking_uri(root))
    run = client.create_run(client.create_experiment("log", artifact_location=str(root / "a")))
    client.log_metric(run.info.run_id, "diag/act_std/last", 1e-3, step=0)
    client.log_metric(run.info.run_id, "diag/act_std/last", 5.0, step=10)
    run = client.get_run(run.info.run_id)
    first = Quantity("diag/act_std/last", "first", scale="log")
    assert first.name == "log10 first diag/act_std/last"
    assert quantity_value(client, run, first) == pytest.approx(-3.0)
    assert quantity_value(client, run, Quantity("diag/act_std/last", "final")) == 5.0
    client.log_metric(run.info.run_id, "train/acc", 0.99, step=10)
    run = client.get_run(run.info.run_id)
    gap = Quantity("train/acc", "final", minus="diag/act_std/last")
    assert gap.name == "final train/acc - diag/act_std/last"
    assert quantity_value(client, run, gap) == pytest.approx(0.99 - 5.0)
    # a ratio of two metrics of the run, in log10: the signal's change over the layers
    client.log_metric(run.info.run_id, "diag/act_std/first", 1e-1, step=0)
    run = client.get_run(run.info.run_id)
    ratio = Quantity("diag/act_std/last", "first", over="diag/act_std/first", scale="log")
    assert ratio.name == "log10 first diag/act_std/last / diag/act_std/first"
    assert quantity_value(client, run, ratio) == pytest.approx(-2.0)


def test_param_and_pattern_quantities(root: Path) -> None:
    """A run parameter (complexity measured when the run was built) and one number from every
    metric a glob matches (the dead fraction of each activation layer)."""
    from ablab.analysis.collect import quantity_value
    from ablab.study import Quantity

    client = MlflowClient(tracking_uri(root))
    run = client.create_run(client.create_experiment("q", artifact_location=str(root / "a")))
    run_id = run.info.run_id
    client.log_param(run_id, "complexity.params", "269434")
    for layer, values in {"a.act": (0.0, 0.25), "b.act": (0.5, 0.75), "c.conv": (9.0, 9.0)}.items():
        for step, value in zip((0, 10), values, strict=True):
            client.log_metric(run_id, f"diag/dead/{layer}", value, step=step)
    run = client.get_run(run_id)
    params = Quantity("complexity.params", "param")
    assert params.name == "complexity.params" and quantity_value(client, run, params) == 269434
    assert np.isnan(quantity_value(client, run, Quantity("complexity.macs", "param")))
    dead = Quantity("diag/dead/*.act", "final")
    assert dead.name == "final mean diag/dead/*.act"
    assert quantity_value(client, run, dead) == pytest.approx(0.5)
    assert quantity_value(client, run, Quantity("diag/dead/*.act", "first", reduce="max")) == 0.5
    assert np.isnan(quantity_value(client, run, Quantity("diag/none/*", "final")))
    # MLflow refuses tag keys that end in "/" (the verdict tag of a glob quantity)
    from ablab.analysis.collect import metric_key

    assert metric_key("verdict", "leaky", dead.name) == "verdict/leaky/final_mean_diag/dead/_.act"
    assert metric_key("verdict", "x", "final mean diag/dead/*") == "verdict/x/final_mean_diag/dead"


WITHIN = """
claim: "0. Fused nets give the same outputs and run faster (fabricated)."
question: Within-run differences against zero, equivalence claims and the notes' numbers.
baseline: {name: net, overrides: {model.width: 1}}
variants:
  wide: {model.width: 2}
seeds: [0, 1, 2, 3]
sizes: {quick: {}}
quantities:
  - {metric: bench/fused/ms, stat: final, minus: bench/ms}
  - {metric: test/acc, stat: final}
expect:
  - {variant: net, quantity: final bench/fused/ms - bench/ms, direction: lower, against: 0}
  - {variant: wide, quantity: final test/acc, direction: same, margin: 0.01}
  - {variant: wide, quantity: final bench/fused/ms - bench/ms, direction: same, margin: 0.1, against: 0}
checks:
  - name: 3x3 conv 16->32 at 28x28
    formula: (3*3*16 + 1)*32
    module: {_target_: torch.nn.Conv2d, in_channels: 16, out_channels: 32, kernel_size: 3, padding: 1}
    input: [16, 28, 28]
    notes: {params: 4640, macs: 3612672}
  - name: 1x1 conv 16->32 at 28x28
    module: {_target_: torch.nn.Conv2d, in_channels: 16, out_channels: 32, kernel_size: 1}
    input: [16, 28, 28]
    notes: {params: 544, macs: 999}
  - name: 1x1 / 3x3
    ratio: [1x1 conv 16->32 at 28x28, 3x3 conv 16->32 at 28x28]
    notes: {params: 0.12}
"""


def test_against_zero_equivalence_and_checks(root: Path) -> None:
    folder = root / "within"
    folder.mkdir()
    (folder / "study.yaml").write_text(WITHIN)
    client = MlflowClient(tracking_uri(root))
    experiment = client.create_experiment("within", artifact_location=str(root / "art"))
    parent = client.create_run(
        experiment,
        tags={"sweep": "parent", "study": "within", "study_file": str(folder / "study.yaml")},
    )
    rng = np.random.default_rng(0)
    for variant, (speedup, acc_shift) in {"net": (3.0, 0.0), "wide": (0.0, 0.001)}.items():
        for seed in range(4):
            run = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
            ms = 10 + rng.normal(0, 0.5)
            client.log_batch(
                run.info.run_id,
                metrics=[
                    Metric("bench/ms", ms, 0, 0),
                    Metric("bench/fused/ms", ms - speedup + rng.normal(0, 0.01), 0, 0),
                    Metric("test/acc", 0.9 + 0.01 * seed + acc_shift, 0, 0),
                ],
                params=[Param("variant", variant), Param("seed", str(seed))],
            )
            client.set_terminated(run.info.run_id)  # a RUNNING child gives no value
    report = collect(client, find_study_runs(client, parent.info.run_id))
    verdicts = {(v.variant, v.quantity, v.against): v for v in report.verdicts}
    faster = verdicts[("net", "final bench/fused/ms - bench/ms", "0")]
    assert faster.outcome == "holds", faster.reason
    assert verdicts[("wide", "final test/acc", "")].outcome == "holds"  # +0.001 inside ±0.01
    same = verdicts[("wide", "final bench/fused/ms - bench/ms", "0")]
    assert same.outcome == "holds", same.reason
    one_sample = next(c for c in report.comparisons if c.variant == "net" and c.against == "0")
    assert one_sample.diff_mean == pytest.approx(-3.0, abs=0.05)
    rows = {row["check"]: row for row in next(iter(report.tables.values()))}
    assert rows["3x3 conv 16->32 at 28x28"]["params (measured)"] == "4,640"
    assert rows["3x3 conv 16->32 at 28x28"]["macs (measured)"] == "3,612,672"
    assert rows["3x3 conv 16->32 at 28x28"]["notes agree"] == "yes"
    assert rows["1x1 conv 16->32 at 28x28"]["notes agree"] == "**no**"  # MACs are 401,408
    assert rows["1x1 / 3x3"]["params (measured)"] == "0.1172"
    assert rows["1x1 / 3x3"]["notes agree"] == "yes"


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ("{variant: wide, quantity: final test/acc, direction: same}", "needs a margin"),
        ("{variant: wide, quantity: final test/acc, direction: up}", "valid: higher, lower, same"),
        ("{variant: wide, quantity: final test/acc, direction: lower, against: nope}", "valid: 0,"),
    ],
)
def test_bad_expectations_are_one_line_errors(root: Path, expect: str, message: str) -> None:
    folder = root / "bad"
    folder.mkdir()
    text = WITHIN.split("expect:")[0] + f"expect:\n  - {expect}\n"
    (folder / "study.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_study(folder)


def test_a_diverged_run_has_no_final_value_unless_the_study_states_one(root: Path) -> None:
    from ablab.analysis.collect import quantity_value
    from ablab.study import Quantity

    client = MlflowClient(tracking_uri(root))
    run = client.create_run(client.create_experiment("d", artifact_location=str(root / "a")))
    client.log_metric(run.info.run_id, "val/acc", 0.6, step=10)  # logged before the blow-up
    client.set_tag(run.info.run_id, "failure", "nonfinite_loss")
    run = client.get_run(run.info.run_id)
    assert np.isnan(quantity_value(client, run, Quantity("val/acc", "final")))
    chance = Quantity("val/acc", "final", diverged_value=0.1)
    assert quantity_value(client, run, chance) == 0.1
    assert quantity_value(client, run, Quantity("val/acc", "best")) == 0.6  # it did reach it
    assert quantity_value(client, run, Quantity("train/loss", "diverged")) == 1.0


def test_stated_values_are_marked_in_the_report(root: Path) -> None:
    from ablab.analysis.render import to_markdown

    folder = root / "stated"
    folder.mkdir()
    text = STUDY.replace(
        "  - {metric: val/acc, stat: final}\n",
        "  - {metric: val/acc, stat: final, diverged_value: 0.1}\n",
    )
    client, parent = fabricate(root)
    (root / "fabricated" / "study.yaml").write_text(text)
    report = collect(client, find_study_runs(client, parent))
    blowup = next(v for v in report.variants if v.name == "blowup").summaries["final val/acc"]
    assert blowup.values == [0.1] * 5 and blowup.stated == [0, 1, 2, 3, 4]
    better = next(v for v in report.variants if v.name == "better").summaries["final val/acc"]
    assert better.stated == []
    assert verdicts_of(report)[("blowup", "final val/acc")] == "holds"  # 0.1 vs 0.85
    markdown = to_markdown(report, {})
    assert "0.1†, 0.1†" in markdown and "† a diverged run" in markdown


DIVERGING = """
claim: "0. A huge learning rate diverges."
question: Does a study whose runs diverge as expected succeed?
common: {trainer: smoke, callbacks.batch_preview: null, logger.log_model: false,
         optimizer: sgd, model.act: relu}
baseline: {name: small, overrides: {optimizer.lr: 0.01}}
variants:
  huge: {optimizer.lr: 1.0e38}
seeds: [0, 1]
sizes: {quick: {}}
quantities:
  - {metric: val/acc, stat: final, diverged_value: 0.1}
  - {metric: train/loss, stat: diverged}
expect:
  - {variant: huge, quantity: diverged, direction: higher}
"""


@pytest.mark.slow
def test_a_study_whose_runs_diverge_as_it_expects_succeeds(root: Path) -> None:
    """The non-finite loss guard stops both `huge` runs (the sweep counts them as failed jobs),
    but the study counts divergence: every run produced its quantities, so `ablab study`
    exits 0 and says there is nothing to rerun."""
    from conftest import run_module

    folder = root / "diverging"
    folder.mkdir()
    (folder / "study.yaml").write_text(DIVERGING)
    proc = run_module(["ablab.cli", "study", str(folder)], root, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "2 of 4 sweep jobs did not finish" in out  # the sweep's own count stands
    assert "every run produced its quantities" in out and "nothing to rerun" in out
    assert "left out" not in (folder / "RESULTS.md").read_text().lower()


def test_publish_puts_the_verdict_table_in_the_parent_description(root: Path) -> None:
    client, parent = fabricate(root)
    report = collect(client, find_study_runs(client, parent))
    publish(client, report, {})
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert note.startswith("**fabricated**")
    assert "**Claim.** 0. A fabricated claim" in note
    assert "| better | final val/acc | higher than base | holds | +0.05" in note
    assert "| better vs worse | final val/acc | higher than worse | holds |" in note
