"""Per-arm tuning (issue 17, item 1): a study declares what each arm may tune; ablab runs the
grid on tuning seeds, picks each arm's best point on a validation metric only, then compares the
arms each at its own best point, all under one parent run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ablab.analysis.collect import (
    choose_points,
    choose_runs,
    collect,
    find_study_runs,
    tuning_scores,
)
from ablab.analysis.render import to_json, to_markdown, write_report
from ablab.errors import ConfigError
from ablab.study import Tune, load_study
from conftest import tracking_uri

STUDY = """
claim: "0. A fabricated claim."
question: Is each arm compared at its own best learning rate?
common: {trainer: smoke, trainer.max_epochs: 1, callbacks.batch_preview: null,
         callbacks.model_checkpoint: null, logger.log_model: false}
baseline: {name: relu, overrides: {model.act: relu}}
variants:
  tanh: {model.act: tanh}
seeds: [0, 1, 2]
sizes: {quick: {}}
tune:
  grid: {optimizer.lr: [0.001, 0.01, 0.1]}
  metric: val/acc
  seeds: [100, 101]
quantities:
  - {metric: val/acc, stat: final}
expect:
  - {variant: tanh, quantity: final val/acc, direction: lower}
"""

#: val/acc of each arm at each lr: relu is best at 0.1, tanh at 0.01; test/acc says the opposite
#: (a choice made on it would pick 0.001 for both)
VAL = {"relu": {0.001: 0.5, 0.01: 0.7, 0.1: 0.9}, "tanh": {0.001: 0.6, 0.01: 0.8, 0.1: 0.4}}
TEST = {"relu": {0.001: 0.99, 0.01: 0.1, 0.1: 0.1}, "tanh": {0.001: 0.99, 0.01: 0.1, 0.1: 0.1}}


def write_study(root: Path, text: str = STUDY, name: str = "tuned") -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "study.yaml").write_text(text)
    return folder


def fabricate(root: Path) -> tuple[MlflowClient, str, Path]:
    """A study parent with finished tuning children (two seeds per point, a little spread) and
    comparison children at 0.1 for relu and 0.01 for tanh."""
    folder = write_study(root)
    client = MlflowClient(tracking_uri(root))
    experiment = client.create_experiment("tuned", artifact_location=str(root / "a"))
    tags = {"sweep": "parent", "study": "tuned", "study_file": str(folder / "study.yaml"),
            "study_size": "quick", "tuned.relu": "optimizer.lr=0.1",
            "tuned.tanh": "optimizer.lr=0.01"}  # fmt: skip
    parent = client.create_run(experiment, tags=tags).info.run_id

    def child(variant: str, seed: int, val: float, test: float, tuning: str | None) -> None:
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        params = [Param("variant", variant), Param("seed", str(seed))]
        params += [Param("tuning", tuning)] if tuning else []
        client.log_batch(run, metrics=[Metric("val/acc", val, 0, 5), Metric("test/acc", test, 0, 5)],
                         params=params)  # fmt: skip
        client.set_terminated(run, "FINISHED")

    for variant, by_lr in VAL.items():
        for lr, val in by_lr.items():
            for k, seed in enumerate((100, 101)):
                child(variant, seed, val + 0.01 * k, TEST[variant][lr], f"optimizer.lr={lr}")
    for seed in range(3):
        child("relu", seed, 0.9 + 0.01 * seed, 0.5, None)
        child("tanh", seed, 0.8 + 0.01 * seed, 0.5, None)
    return client, parent, folder


def test_the_tuning_stage_picks_each_arms_best_point_on_validation_only(root: Path) -> None:
    client, parent, _ = fabricate(root)
    runs = find_study_runs(client, parent)
    scores = tuning_scores(client, runs.study, runs.children)
    assert sorted(scores["relu"]["optimizer.lr=0.1"]) == pytest.approx([0.9, 0.91])
    assert choose_points(runs.study, scores) == {
        "relu": {"optimizer.lr": 0.1},
        "tanh": {"optimizer.lr": 0.01},
    }
    # the tuning runs are not the comparison's: three seeds per arm, the tuning seeds left out
    by_variant, left_out = choose_runs(runs.children)
    assert {v: sorted(seeds) for v, seeds in by_variant.items()} == {
        "relu": [0, 1, 2],
        "tanh": [0, 1, 2],
    }
    assert not left_out


def test_an_arm_minimising_its_metric_and_an_arm_without_tuning_runs(root: Path) -> None:
    study = load_study(
        write_study(root, STUDY.replace("seeds: [100, 101]", "seeds: [100, 101]\n  mode: min"))
    )
    scores = {"relu": {"optimizer.lr=0.001": [0.2], "optimizer.lr=0.01": [0.1, 0.3],
                       "optimizer.lr=0.1": [float("nan")]},
              "tanh": {"optimizer.lr=0.001": []}}  # fmt: skip
    with pytest.raises(ConfigError, match="tanh of study tuned has no finished tuning run"):
        choose_points(study, scores)
    scores["tanh"] = {"optimizer.lr=0.1": [0.5]}
    # a NaN score never wins; ties go to the first point in grid order
    assert choose_points(study, scores) == {
        "relu": {"optimizer.lr": 0.001},
        "tanh": {"optimizer.lr": 0.1},
    }


@pytest.mark.parametrize(
    ("tune", "message"),
    [("{grid: {optimizer.lr: [0.1]}, metric: test/acc}", "not a validation metric"),
     ("{grid: {optimizer.lr: 0.1}}", "tune.grid needs"),
     ("{grid: {optimizer.lr: [0.1]}, stat: steps_to}", "tune.stat 'steps_to'; valid: best, final"),
     ("{grid: {optimizer.lr: [0.1]}, budget: 3}", "unknown tune key(s) ['budget']")],
)  # fmt: skip
def test_a_tuning_declaration_is_checked(root: Path, tune: str, message: str) -> None:
    text = STUDY.split("tune:")[0] + f"tune: {tune}\n" + STUDY.split("seeds: [100, 101]\n")[1]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study(write_study(root, text))


def test_tuning_jobs_come_first_and_the_comparison_runs_at_each_arms_point(root: Path) -> None:
    study = load_study(write_study(root))
    tuning = study.tune_jobs("quick")
    assert len(tuning) == 2 * 3 * 2  # arms x points x tuning seeds
    assert "tuning='optimizer.lr=0.01'" in tuning[2].overrides
    assert {j.seed for j in tuning} == {100, 101}
    chosen = {"relu": {"optimizer.lr": 0.1}, "tanh": {"optimizer.lr": 0.01}}
    compared = study.jobs("quick", tuned=chosen)
    assert all("optimizer.lr=0.1" in j.overrides for j in compared if j.variant == "relu")
    assert all("optimizer.lr=0.01" in j.overrides for j in compared if j.variant == "tanh")
    assert not any(o.startswith("tuning=") for j in compared for o in j.overrides)
    assert Tune.label({"optimizer.lr": 0.01, "optimizer.weight_decay": 0.0}) == (
        "optimizer.lr=0.01,optimizer.weight_decay=0.0"
    )
    assert {"tuning", "optimizer.lr"} <= set(study.factors())


def test_the_report_shows_each_arms_scores_over_the_grid_and_its_choice(root: Path) -> None:
    client, parent, _ = fabricate(root)
    report = collect(client, find_study_runs(client, parent))
    assert report.tuned == {"relu": "optimizer.lr=0.1", "tanh": "optimizer.lr=0.01"}
    assert report.tuning["tanh"]["optimizer.lr=0.01"] == pytest.approx(0.805)
    markdown = to_markdown(report, {})
    assert "## Tuning" in markdown and "the test set is never read to choose" in markdown
    assert "| tanh | 0.605 | 0.805 ✓ | 0.405 | optimizer.lr=0.01 |" in markdown
    # relu's best is the grid's top: the best may lie beyond it, and the row says so
    assert "| 0.905 ✓ | optimizer.lr=0.1 (the grid's end) |" in markdown
    # the Variants table shows what the comparison ran: the tuned point, marked, never the
    # declared value it replaced (a study may declare a starting lr for every arm)
    assert "| relu (baseline) | model.act=relu optimizer.lr=0.1 (tuned) |" in markdown
    assert "| tanh | model.act=tanh optimizer.lr=0.01 (tuned) |" in markdown
    data = to_json(report)
    assert data["tuned"] == report.tuned
    json.dumps(data, allow_nan=False)
    # the plot of the grid, under the table in both pages
    paths = write_report(report, root / "out")
    assert (root / "out" / "RESULTS_files" / "tuning.png").is_file()
    assert "](RESULTS_files/tuning.png)" in paths["markdown"].read_text()
    assert 'id="fig-tuning"' in paths["html"].read_text()


@pytest.mark.slow
def test_a_study_that_tunes_runs_both_stages_under_one_parent(root: Path) -> None:
    from conftest import run_module
    from injected import SAFETY_TIMEOUT_S

    text = STUDY.replace("[0.001, 0.01, 0.1]", "[0.0001, 0.05]").replace(
        "seeds: [100, 101]", "seeds: [100]"
    )
    folder = write_study(root, text, "tunedrun")
    proc = run_module(["ablab.cli", "study", str(folder)], root, timeout=SAFETY_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ablab: tuning optimizer.lr per variant" in proc.stderr
    client = MlflowClient(tracking_uri(root))
    runs = find_study_runs(client, str(folder))
    assert len(runs.children) == 2 * 2 + 2 * 3  # the grid, then the comparison
    tags = runs.parent.data.tags
    chosen = {v: tags[f"tuned.{v}"] for v in ("relu", "tanh")}
    assert all(c in ("optimizer.lr=0.0001", "optimizer.lr=0.05") for c in chosen.values())
    for run in runs.children:
        if run.data.params.get("tuning") in (None, "None"):  # a comparison run: its arm's point
            assert (
                f"optimizer.lr={run.data.params['optimizer.lr']}"
                == chosen[run.data.params["variant"]]
            )
    # the choice is the validation winner of the tuning runs, as the report shows it
    report = collect(client, runs)
    for variant, label in chosen.items():
        scores = report.tuning[variant]
        assert label == max(scores, key=lambda k: scores[k])
    results = (folder / "RESULTS.md").read_text()
    assert "## Tuning" in results and "✓" in results


def test_a_diverged_tuning_run_makes_its_point_lose(root: Path) -> None:
    """relu at lr 0.001 reached 0.99 on one tuning seed, then diverged: that point never wins."""
    client, parent, _ = fabricate(root)
    runs = find_study_runs(client, parent)
    experiment = runs.parent.info.experiment_id
    run = client.create_run(experiment, tags={"mlflow.parentRunId": parent,
                                              "failure": "nonfinite_loss"}).info.run_id  # fmt: skip
    client.log_batch(run, metrics=[Metric("val/acc", 0.99, 0, 3)],
                     params=[Param("variant", "relu"), Param("seed", "102"),
                             Param("tuning", "optimizer.lr=0.1")])  # fmt: skip
    client.set_terminated(run, "FAILED")
    runs = find_study_runs(client, parent)
    scores = tuning_scores(client, runs.study, runs.children)
    assert len(scores["relu"]["optimizer.lr=0.1"]) == 3
    assert choose_points(runs.study, scores)["relu"] == {"optimizer.lr": 0.01}


def test_tuning_seeds_stay_apart_from_the_comparisons(root: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("tune.seeds [1] are also comparison seeds")):
        load_study(write_study(root, STUDY.replace("seeds: [100, 101]", "seeds: [1, 100]")))
    study = load_study(write_study(root, STUDY.replace("seeds: [100, 101]", "seeds: [3, 4]"), "x"))
    assert study.seeds_for("quick", 3) == [0, 1, 2, 5, 6, 7]  # added seeds skip 3 and 4


WIDTH = (
    STUDY.replace(
        "grid: {optimizer.lr: [0.001, 0.01, 0.1]}", "grid: {optimizer.lr: [0.001, 0.01, 0.1, 1.0]}"
    ).replace(
        "  - {metric: val/acc, stat: final}\n",
        "  - {metric: val/acc, stat: final}\n"
        "  - {metric: optimizer.lr, stat: tuning_width, within: 0.05}\n",
    )
    + "  - {variant: tanh, quantity: width of optimizer.lr within 0.05 of best, direction: higher}\n"
)


def test_a_sensitivity_claim_reads_the_width_of_the_grid_range_near_each_arms_best(
    root: Path,
) -> None:
    """The width is the contiguous range of rates around the best within x of it, per tuning
    seed; a diverged point ends it; the claim is stated from the grid, never tested."""
    study = load_study(write_study(root, WIDTH))
    (q,) = [q for q in study.quantities if q.from_tuning]
    nan = float("nan")
    table = {
        # seed 100: best 0.9 at 0.01; 0.1 (0.88) and 1.0 (0.86) within 0.05: 2 decades;
        # seed 101: the diverged 0.1 ends the range, though 1.0 (0.89) is within: 0 decades
        "relu": {"optimizer.lr=0.001": {100: 0.5, 101: 0.5}, "optimizer.lr=0.01": {100: 0.9, 101: 0.9},
                 "optimizer.lr=0.1": {100: 0.88, 101: nan}, "optimizer.lr=1.0": {100: 0.86, 101: 0.89}},
        # best 0.8 at 0.1 alone on seed 100; on 101 no finite score at all
        "tanh": {"optimizer.lr=0.001": {100: 0.6, 101: nan}, "optimizer.lr=0.01": {100: 0.7, 101: nan},
                 "optimizer.lr=0.1": {100: 0.8, 101: nan}, "optimizer.lr=1.0": {100: 0.1, 101: nan}},
    }  # fmt: skip
    from ablab.analysis.collect import tuning_widths

    widths, edges = tuning_widths(study, q, table)
    assert widths["relu"] == {100: pytest.approx(2.0), 101: pytest.approx(0.0)}
    assert edges["relu"] == {100: 1.0}  # seed 100's range reached the grid's top: a lower bound
    # a point no finished run scored (killed, not yet run) is missing, not failed: no width
    table["relu"]["optimizer.lr=1.0"] = {100: 0.86}
    table["relu"]["optimizer.lr=0.001"][102] = 0.89
    table["relu"]["optimizer.lr=0.01"][102] = 0.9
    widths, _ = tuning_widths(study, q, table)
    assert math.isnan(widths["relu"][102]) and math.isnan(widths["relu"][101])
    assert widths["tanh"][100] == pytest.approx(0.0)
    assert widths["tanh"][101] != widths["tanh"][101]  # NaN: nothing finite on that seed

    # through the report, on fabricated runs: relu 0.5/0.7/0.9/0.88 over the grid -> 0.1..1.0
    # (1 decade), tanh 0.6/0.8/0.4/0.1 -> 0.01 alone (0 decades)
    (root / "runs").mkdir()
    client, parent, folder = fabricate(root / "runs")
    (folder / "study.yaml").write_text(WIDTH)
    experiment = client.get_run(parent).info.experiment_id
    for variant, val in (("relu", 0.88), ("tanh", 0.1)):
        for k, seed in enumerate((100, 101)):
            run = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
            client.log_batch(run, metrics=[Metric("val/acc", val + 0.01 * k, 0, 5)],
                             params=[Param("variant", variant), Param("seed", str(seed)),
                                     Param("tuning", "optimizer.lr=1.0")])  # fmt: skip
            client.set_terminated(run, "FINISHED")
    report = collect(client, find_study_runs(client, parent))
    name = "width of optimizer.lr within 0.05 of best"
    by_variant = {v.name: v.summaries[name] for v in report.variants}
    assert by_variant["relu"].mean == pytest.approx(1.0)
    assert by_variant["tanh"].mean == pytest.approx(0.0)
    (verdict,) = [v for v in report.verdicts if v.quantity == name]
    assert verdict.outcome == "does not hold"  # tanh's range is narrower, not wider
    assert "read off the tuning grid on 2 tuning seed(s)" in verdict.reason
    (comparison,) = [c for c in report.comparisons if c.quantity == name]
    assert comparison.p_value != comparison.p_value and comparison.p_holm != comparison.p_holm
    assert comparison.test == "stated (tuning grid)"


def test_a_width_needs_a_grid_key_of_positive_numbers_and_a_within(root: Path) -> None:
    bad = {
        "no tune": (STUDY.split("tune:")[0] + "quantities:\n"
                    "  - {metric: optimizer.lr, stat: tuning_width, within: 0.1}\nexpect: []\n",
                    "declares no tune"),
        "key": (WIDTH.replace("metric: optimizer.lr, stat: tuning_width", "metric: model.act, "
                              "stat: tuning_width").replace("width of optimizer.lr", "width of model.act"),
                "not a tune.grid key; valid: optimizer.lr"),
        "within": (WIDTH.replace("within: 0.05}\n", "within: 0}\n", 1), "needs within > 0"),
        "elsewhere": (WIDTH.replace("{metric: val/acc, stat: final}", "{metric: val/acc, stat: final, within: 1}"),
                      "'within' belongs to stat tuning_width"),
    }  # fmt: skip
    for i, (text, message) in enumerate(bad.values()):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_study(write_study(root, text, name=f"bad{i}"))


def test_only_the_arms_tune_variants_names_tune(root: Path) -> None:
    """An arm that fixes the tuned setting itself (BN and no BN both at lr 0.5) runs as declared."""
    text = STUDY.replace("overrides: {model.act: relu}}", "overrides: {model.act: relu, optimizer.lr: 0.05}}").replace("  tanh: {model.act: tanh}\n",
                         "  tanh: {model.act: tanh}\n  relu_lr0.5: {optimizer.lr: 0.5}\n").replace(
        "  seeds: [100, 101]\n", "  seeds: [100, 101]\n  variants: [relu, tanh]\n")  # fmt: skip
    study = load_study(write_study(root, text))
    assert study.tuned_variants == ["relu", "tanh"]
    assert {j.variant for j in study.tune_jobs("quick")} == {"relu", "tanh"}
    scores = {"relu": {"optimizer.lr=0.1": [0.9]}, "tanh": {"optimizer.lr=0.01": [0.8]}}
    tuned = choose_points(study, scores)
    assert tuned == {"relu": {"optimizer.lr": 0.1}, "tanh": {"optimizer.lr": 0.01}}
    fixed = [j for j in study.jobs("quick", tuned=tuned) if j.variant == "relu_lr0.5"]
    assert fixed and all("optimizer.lr=0.5" in j.overrides for j in fixed)
    with pytest.raises(ConfigError, match=r"tune.variants names \['gelu'\]; valid: relu"):
        load_study(write_study(root, text.replace("[relu, tanh]", "[relu, gelu]"), name="bad"))


def test_a_grid_reading_is_decided_only_when_every_tuning_seed_agrees() -> None:
    """No uncertainty is claimed from a grid: one tuning seed, seeds that disagree, or a range
    cut off by the grid's end (the width a lower bound) leave the claim inconclusive."""
    from ablab.analysis import stats

    def read(base, other, censored=((), ())):
        c = stats.grid_reading("adam", "width", base, other, censored=censored)
        return c, stats.verdict("5. claim", c, "higher")

    c, v = read({100: 0.0, 101: 0.0}, {100: 1.0, 101: 0.5})
    assert (c.grid_signs, v.outcome) == ("++", "holds") and "stated, not tested" in v.reason
    assert math.isnan(c.p_value) and v.p != v.p
    assert read({100: 1.0, 101: 0.0}, {100: 0.5, 101: 1.0})[1].outcome == "inconclusive"
    assert "disagree" in read({100: 1.0, 101: 0.0}, {100: 0.5, 101: 1.0})[1].reason
    assert read({100: 0.0}, {100: 1.0})[1].outcome == "inconclusive"  # one seed
    assert read({100: 1.0, 101: 1.0}, {100: 0.0, 101: 0.5})[1].outcome == "does not hold"
    # the baseline's range reached the grid's end: its true width may exceed the other's
    c, v = read({100: 0.5, 101: 0.5}, {100: 1.0, 101: 1.0}, censored=({101}, ()))
    assert c.grid_signs == "+?" and v.outcome == "inconclusive" and "grid's end" in v.reason
    # the other side censored does not matter for "higher": it is wider still
    assert read({100: 0.5, 101: 0.5}, {100: 1.0, 101: 1.0}, ((), {100, 101}))[1].outcome == "holds"
    # a seed without a width is named, not silently dropped
    c, v = read({100: 0.0, 101: float("nan")}, {100: 1.0, 101: 1.0})
    assert "tuning seed(s) 101 without a complete grid" in c.test_reason
    assert v.outcome == "inconclusive"


def test_arms_left_out_of_tuning_set_the_tuned_keys_and_grid_claims_name_tuned_arms(
    root: Path,
) -> None:
    text = STUDY.replace(
        "overrides: {model.act: relu}}", "overrides: {model.act: relu, optimizer.lr: 0.05}}"
    ).replace("  seeds: [100, 101]\n", "  seeds: [100, 101]\n  variants: [relu]\n")
    # tanh does not tune and would silently run at the baseline's lr 0.05
    with pytest.raises(ConfigError, match=r"variant 'tanh' does not tune \['optimizer.lr'\]"):
        load_study(write_study(root, text, name="inherit"))
    fixed = text.replace("tanh: {model.act: tanh}", "tanh: {model.act: tanh, optimizer.lr: 0.5}")
    assert load_study(write_study(root, fixed, name="fixed")).tuned_variants == ["relu"]
    width = (
        fixed.replace(
            "  - {metric: val/acc, stat: final}\n",
            "  - {metric: val/acc, stat: final}\n"
            "  - {metric: optimizer.lr, stat: tuning_width, within: 0.05}\n",
        )
        + "  - {variant: tanh, quantity: width of optimizer.lr within 0.05 of best, direction: higher}\n"
    )
    with pytest.raises(ConfigError, match=r"which \['tanh'\] do not run; valid arms: relu"):
        load_study(write_study(root, width, name="untuned"))
    logged = WIDTH.replace(
        "stat: tuning_width, within: 0.05}", "stat: tuning_width, within: 0.05, scale: log}"
    )
    with pytest.raises(ConfigError, match=r"takes none of \['scale: log'\]"):
        load_study(
            write_study(
                root, logged.replace("width of optimizer", "log10 width of optimizer"), name="log"
            )
        )
