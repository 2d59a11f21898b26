"""Sequential studies (issue 16, item 1): ``ablab study --until-decided`` adds seeds in rounds
under one alpha-spending design; the design keeps the chance of deciding a true null at or
below its α, a claim is decided at the first look that decides it, and the report shows the
rounds."""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from scipy import stats as scipy_stats

from ablab.analysis import stats
from ablab.analysis.collect import Design, find_study_runs, judge, judge_sequentially
from ablab.analysis.render import rounds_table, to_json, to_markdown
from ablab.study import Study, load_study
from conftest import tracking_uri

NULL_STUDY = """
claim: "0. A fabricated claim."
question: Does the sequential design keep its error rate?
baseline: {name: base, overrides: {model.width: 1}}
variants:
  other: {model.width: 2}
seeds: [0, 1, 2]
sizes: {quick: {}}
quantities:
  - {metric: val/acc, stat: final}
  - {metric: val/loss, stat: final}
expect:
  - {variant: other, quantity: final val/acc, direction: higher}
"""


def study_from(text: str, root: Path, name: str = "seq") -> Study:
    folder = root / name
    folder.mkdir()
    (folder / "study.yaml").write_text(text)
    return load_study(folder)


def values_of(
    base: np.ndarray, other: np.ndarray, quantity: str = "final val/acc"
) -> dict[str, dict[str, dict[int, float]]]:
    return {
        "base": {quantity: dict(enumerate(base.tolist()))},
        "other": {quantity: dict(enumerate(other.tolist()))},
    }


# -- the design ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "looks"),
    [((3, 10), [3, 6, 10]), ((3, 3), [3]), ((3, 12, 3), [3, 6, 9, 12]), ((5, 20), [5, 10, 15, 20]),
     ((3, 4), [3, 4]), ((2, 9, 2), [2, 4, 6, 9])],
)  # fmt: skip
def test_looks_step_by_the_first_rounds_seeds_and_end_at_the_maximum(args, looks) -> None:
    assert stats.plan_looks(*args) == looks


@pytest.mark.parametrize("args", [(1, 10), (3, 2), (3, 10, 0)])
def test_looks_refuse_a_design_without_a_first_test(args) -> None:
    with pytest.raises(ValueError, match="looks: first"):
        stats.plan_looks(*args)


def test_pocock_and_obrien_fleming_spend_alpha_as_lan_and_demets_define_them() -> None:
    looks, alpha = [3, 6, 10], 0.05
    t = np.array(looks) / 10
    pocock = alpha * np.log(1 + (math.e - 1) * t)
    z = scipy_stats.norm.ppf(1 - alpha / 2)
    obf = 2 - 2 * scipy_stats.norm.cdf(z / np.sqrt(t))
    for name, cumulative in (("pocock", pocock), ("obrien_fleming", obf)):
        levels = stats.look_levels(looks, alpha, name)
        assert np.cumsum(levels) == pytest.approx(cumulative, rel=1e-12)
        assert sum(levels) == pytest.approx(alpha, rel=1e-12) and min(levels) > 0
    # Pocock spends early, O'Brien–Fleming keeps nearly all of α for the end
    assert (
        stats.look_levels(looks, alpha, "pocock")[0]
        > 50 * stats.look_levels(looks, alpha, "obrien_fleming")[0]
    )
    with pytest.raises(ValueError, match="valid: pocock, obrien_fleming"):
        stats.look_levels(looks, alpha, "haybittle")
    with pytest.raises(ValueError, match="increasing"):
        stats.look_levels([6, 3], alpha)


def test_the_design_round_trips_through_the_parent_runs_tags() -> None:
    design = Design((3, 6, 10), 0.05, "pocock")
    assert Design.from_tags(design.tags()) == design
    assert Design.from_tags({"study": "x"}) is None
    text = design.text()
    assert "Lan & DeMets 1983" in text and "Pocock-type" in text and "3, 6, 10" in text


# -- its error rate, simulated ---------------------------------------------------------------


@pytest.mark.slow
def test_on_null_data_the_sequential_design_decides_at_most_alpha_of_the_time(root) -> None:
    """1000 null studies (both arms from one normal distribution), looks after 3, 6 and 10
    seeds: the design decides a claim (either way) in at most α = 0.05 of them. Testing at 0.05
    at every look instead decides far more often: the design is what keeps the rate."""
    study = study_from(NULL_STUDY, root)
    design = Design(tuple(stats.plan_looks(3, 10)), 0.05, "pocock")
    rng = np.random.default_rng(2026)
    draws, decided, naive = 1000, 0, 0
    # statsmodels' Holm calls gc.collect() every time: ~0.3 s over this process's heap (MLflow,
    # torch), 15 minutes over the simulation; frozen objects are not scanned again.
    gc.freeze()
    try:
        for _ in range(draws):
            base, other = rng.normal(0.9, 0.02, 10), rng.normal(0.9, 0.02, 10)
            _, [verdict], rounds = judge_sequentially(
                study, values_of(base, other), range(10), [], design
            )
            assert len(rounds) == 3
            decided += verdict.outcome != "inconclusive"
            naive += any(
                scipy_stats.ttest_rel(other[:n], base[:n]).pvalue < 0.05 for n in design.looks
            )
    finally:
        gc.unfreeze()
    rate, naive_rate = decided / draws, naive / draws
    assert rate <= 0.05, rate
    assert naive_rate > 0.07 and naive_rate > rate + 0.03, (naive_rate, rate)


# -- decisions by look -----------------------------------------------------------------------

TWO_CLAIMS = """
claim: "0. A fabricated claim."
question: Is each claim decided at its first deciding look?
baseline: {name: base, overrides: {model.width: 1}}
variants:
  other: {model.width: 2}
seeds: [0, 1, 2]
sizes: {quick: {}}
quantities:
  - {metric: val/acc, stat: final}
  - {metric: val/loss, stat: final}
expect:
  - {variant: other, quantity: final val/acc, direction: higher}
  - {variant: other, quantity: final val/loss, direction: lower}
"""


def test_a_strong_effect_is_decided_at_the_first_look_and_a_null_runs_every_look(root) -> None:
    study = study_from(TWO_CLAIMS, root)
    rng = np.random.default_rng(0)
    base_acc, base_loss = rng.normal(0.8, 0.01, 10), rng.normal(0.5, 0.05, 10)
    values = values_of(base_acc, base_acc + 0.1 + rng.normal(0, 0.002, 10))
    values["base"]["final val/loss"] = dict(enumerate(base_loss.tolist()))
    values["other"]["final val/loss"] = dict(enumerate(rng.normal(0.5, 0.05, 10).tolist()))
    design = Design((3, 6, 10), 0.05, "pocock")
    comparisons, (acc, loss), rounds = judge_sequentially(study, values, range(10), [], design)
    levels = design.levels()
    assert [(r.look, r.n, r.seeds, r.alpha) for r in rounds] == [
        (1, 3, [0, 1, 2], levels[0]), (2, 6, list(range(6)), levels[1]),
        (3, 10, list(range(10)), levels[2]),
    ]  # fmt: skip
    assert [r.decided for r in rounds] == [1, 1, 1]
    assert acc.outcome == "holds" and acc.round == 1
    assert acc.reason.startswith(f"decided at round 1 of 3 (n = 3 seeds, α = {levels[0]:.3g}): ")
    assert loss.outcome == "inconclusive" and loss.round == 3
    assert loss.reason.startswith("undecided after round 3 of 3 (n = 10 seeds")
    # a stated claim spends no α: its round says only how many seeds had run
    stated = study_from(
        TWO_CLAIMS.replace("{metric: val/loss, stat: final}",
                           "{metric: val/loss, stat: final, deterministic: true}"), root, "s"
    )  # fmt: skip
    values["other"]["final val/loss"] = {
        s: v - 0.2 for s, v in values["base"]["final val/loss"].items()
    }
    _, (_, fixed_loss), _ = judge_sequentially(stated, values, range(10), [], design)
    assert fixed_loss.reason.startswith("decided at round 1 of 3 (3 seeds run): lower, as claimed")
    # each claim's comparison is the one that gave its verdict, at 1 − that look's α
    by_quantity = {c.quantity: c for c in comparisons}
    assert by_quantity["final val/acc"].seeds == [0, 1, 2]
    assert by_quantity["final val/loss"].seeds == list(range(10))
    fixed, _ = judge(study, values, range(3), [], levels[0], 1 - levels[0])
    assert by_quantity["final val/acc"].ci_low == fixed[0].ci_low
    # the look's level is what the test is held to: at 3 seeds and α = 0.05 a t of 4.9 holds,
    # at the first look's α ≈ 0.021 it does not
    weak = values_of(base_acc, base_acc + 0.01 + np.array([0.0, 0.0035, -0.0035] + [0.0] * 7))
    [plain] = judge(study_from(NULL_STUDY, root, "null"), weak, range(3), [])[1]
    assert plain.outcome == "holds"
    _, [held], _ = judge_sequentially(
        study_from(NULL_STUDY, root, "null2"), weak, range(3), [], design
    )
    assert held.outcome == "inconclusive" and held.round == 1


def test_the_report_shows_the_design_and_a_row_per_round(root) -> None:
    from tests.analysis.test_render import make_report

    study = study_from(TWO_CLAIMS, root)
    rng = np.random.default_rng(1)
    base = rng.normal(0.8, 0.01, 10)
    values = values_of(base, base + 0.1 + rng.normal(0, 0.002, 10))
    values["base"]["final val/loss"] = dict(enumerate(rng.normal(0.5, 0.05, 10).tolist()))
    values["other"]["final val/loss"] = dict(enumerate(rng.normal(0.5, 0.05, 10).tolist()))
    design = Design((3, 6, 10), 0.05, "pocock")
    comparisons, verdicts, rounds = judge_sequentially(study, values, range(6), [], design)
    assert len(rounds) == 2  # the third look needs 10 seeds: not reached yet
    report = make_report(comparisons=comparisons, verdicts=verdicts, rounds=rounds,
                         design=design.text(), planned_looks=list(design.looks))  # fmt: skip
    table = rounds_table(report)
    assert table.columns[:3] == ("round", "seeds", "α at this look")
    assert table.rows[0][3] == "holds (decided)" and table.rows[1][3] == "decided at round 1"
    assert table.rows[1][4] == "inconclusive" and table.rows[1][-1] == "1 of 2"
    assert table.note == "2 of 3 planned looks run (at 3, 6, 10 seeds)."
    markdown = to_markdown(report, {})
    assert "## Sequential design" in markdown and "Lan & DeMets 1983" in markdown
    assert "| 2 | 6 |" in markdown
    data = to_json(report)
    assert data["looks"] == [3, 6, 10] and [r["round"] for r in data["rounds"]] == [1, 2]
    assert [v["round"] for v in data["verdicts"]] == [1, 2]
    json.dumps(data)  # plain data


# -- jobs and the command --------------------------------------------------------------------


def test_added_seeds_only_append_jobs_so_every_job_keeps_its_folder() -> None:
    study = load_study("bn_vs_nobn")
    own = study.jobs("quick")
    more = study.jobs("quick", extra_seeds=3)
    assert more[: len(own)] == own
    seeds = study.seeds_for("quick")
    assert study.seeds_for("quick", 3) == [*seeds, *range(max(seeds) + 1, max(seeds) + 4)]
    added = more[len(own) :]
    assert [(j.seed, j.variant) for j in added] == [
        (s, v) for s in range(max(seeds) + 1, max(seeds) + 4) for v in study.variants
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--max-seeds", "6"], "--max-seeds needs --until-decided"),
     (["--spending", "obrien_fleming", "--alpha", "0.01"], "--spending, --alpha needs --until-decided"),
     (["--until-decided"], "needs --max-seeds N"),
     (["--until-decided", "--max-seeds", "2"], "--max-seeds 2 is below the size's"),
     (["--until-decided", "--max-seeds", "6", "--spending", "x"], "valid: pocock, obrien_fleming"),
     (["--until-decided", "--max-seeds", "6", "--no-report"], "drop --no-report")],
)  # fmt: skip
def test_sequential_options_are_checked_before_anything_runs(root, args, message) -> None:
    from conftest import run_module

    proc = run_module(["ablab.cli", "study", "bn_vs_nobn", *args], root)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not (root / "mlflow.db").exists() and not (root / "outputs").exists()


SEQUENTIAL_TINY = """
claim: "0. A tiny sequential study: one claim decided at once, one never."
question: Does --until-decided add seeds under one parent and report the rounds?
common: {trainer: smoke, trainer.max_epochs: 1, callbacks.batch_preview: null,
         callbacks.model_checkpoint: null, logger.log_model: false}
baseline: {name: relu, overrides: {model.act: relu}}
variants:
  sigmoid: {model.act: sigmoid}
seeds: [0, 1, 2]
sizes: {quick: {}}
quantities:
  - {metric: complexity.params, stat: param}
  - {metric: train/loss, stat: diverged}
expect:
  - {variant: sigmoid, quantity: complexity.params, direction: same, margin: 1}
  - {variant: sigmoid, quantity: diverged, direction: higher}
"""


@pytest.mark.slow
def test_until_decided_adds_a_round_of_seeds_to_the_same_parent(root) -> None:
    """Same parameter count (equivalent at the first look, exactly) and no divergence on either
    side (never decided): the study runs both looks, 3 then 4 seeds, under one parent."""
    from conftest import run_module
    from injected import SAFETY_TIMEOUT_S

    folder = root / "tinyseq"
    folder.mkdir()
    (folder / "study.yaml").write_text(SEQUENTIAL_TINY)
    args = ["ablab.cli", "study", str(folder), "--until-decided", "--max-seeds", "4"]
    proc = run_module(args, root, timeout=SAFETY_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "round 1 of 2 (3 seeds): 1 of 2 claims decided" in proc.stderr
    assert "round 2 of 2 (4 seeds): 1 of 2 claims decided" in proc.stderr
    client = MlflowClient(tracking_uri(root))
    runs = find_study_runs(client, str(folder))
    assert len(runs.children) == 8 and {r.info.status for r in runs.children} == {"FINISHED"}
    assert sorted(int(r.data.params["seed"]) for r in runs.children) == [0, 0, 1, 1, 2, 2, 3, 3]
    tags = runs.parent.data.tags
    assert tags["study_seeds"] == "0,1,2,3" and tags["sequential.looks"] == "3,4"
    assert tags["sequential.spending"] == "pocock" and tags["sequential.rounds_run"] == "2"
    assert "1 of 2 claims decided" in tags["round.1"] and "n = 4 seeds" in tags["round.2"]
    assert tags["attempt"] == "2"  # the second round continued the same parent
    assert "--until-decided --max-seeds 4" in tags["user_command"]
    results = (folder / "RESULTS.md").read_text()
    assert "## Sequential design" in results
    assert "equal within ±1, as claimed" in results and "stated, not tested" in results
    assert "decided at round 1 of 2" in results
    assert "undecided after round 2 of 2 (n = 4 seeds" in results
    data = json.loads((folder / "RESULTS.json").read_text())
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert [v["round"] for v in data["verdicts"]] == [1, 2]
    # the design is fixed once seeds were tested under it: neither another design nor the
    # fixed-size command may continue this parent (either would spend α again)
    for other in (["--until-decided", "--max-seeds", "6"], []):
        again = run_module(["ablab.cli", "study", str(folder), *other], root,
                           timeout=SAFETY_TIMEOUT_S)  # fmt: skip
        assert again.returncode == 2, again.stderr[-2000:]
        assert "was tested under sequential.looks=3,4" in again.stderr
    assert len(find_study_runs(client, str(folder)).children) == 8  # nothing ran


EQUIVALENCE_AND_MORE = """
claim: "0. A fabricated claim."
question: Is an equivalence claim corrected with the others?
baseline: {name: base, overrides: {model.width: 1}}
variants:
  other: {model.width: 2}
seeds: [0, 1, 2, 3, 4]
sizes: {quick: {}}
quantities:
  - {metric: val/acc, stat: final}
  - {metric: val/loss, stat: final}
expect:
  - {variant: other, quantity: final val/acc, direction: same, margin: 0.018}
  - {variant: other, quantity: final val/loss, direction: lower}
"""


def test_an_equivalence_claim_enters_holms_family_with_its_tost_p(root) -> None:
    """TOST p = 0.032 (both one-sided tests reject at 0.05): equivalent on its own, but not as
    one of two claims, where Holm doubles the smallest p (0.064)."""
    diffs = np.array([0.0, 0.02, -0.02, 0.01, -0.01])
    base = np.full(5, 0.9)
    values = values_of(base, base + diffs)
    values["base"]["final val/loss"] = dict(enumerate([0.3, 0.31, 0.29, 0.3, 0.32]))
    values["other"]["final val/loss"] = dict(enumerate([0.31, 0.3, 0.3, 0.29, 0.32]))
    alone = EQUIVALENCE_AND_MORE.split("  - {variant: other, quantity: final val/loss")[0]
    [single] = judge(study_from(alone, root, "alone"), values, range(5), [])[1]
    assert single.outcome == "holds" and "p_holm = 0.0318" in single.reason  # m = 1: p itself
    study = study_from(EQUIVALENCE_AND_MORE, root)
    comparisons, [same, _] = judge(study, values, range(5), [])
    assert same.outcome == "inconclusive" and "p_holm = 0.0636" in same.reason, same.reason
    # the family has two members: the loss claim's p is corrected for the equivalence claim too
    loss = next(c for c in comparisons if c.quantity == "final val/loss")
    acc = next(c for c in comparisons if c.quantity == "final val/acc")
    tost_p = stats.tost(acc, 0.018)[0]
    assert tost_p == pytest.approx(0.0318, abs=5e-5) and loss.p_value > tost_p
    assert loss.p_holm == pytest.approx(max(2 * tost_p, loss.p_value))
    # the equivalence claim's difference test is not in the family: its p_holm stays empty
    assert math.isnan(acc.p_holm)


def test_two_equivalence_claims_on_one_comparison_keep_their_own_margin(root) -> None:
    text = EQUIVALENCE_AND_MORE.replace(
        "  - {variant: other, quantity: final val/loss, direction: lower}",
        "  - {variant: other, quantity: final val/acc, direction: same, margin: 0.05}",
    )
    diffs = np.array([0.0, 0.02, -0.02, 0.01, -0.01])
    base = np.full(5, 0.9)
    _, (tight, loose) = judge(study_from(text, root), values_of(base, base + diffs), range(5), [])
    # the ±0.018 claim is judged on its own TOST (p 0.032, the larger of the two: Holm leaves
    # it as it is), not on the ±0.05 claim's (p 2e-4, doubled)
    assert "TOST ±0.018" in tight.reason and "p_holm = 0.0318" in tight.reason
    assert "TOST ±0.05" in loose.reason and "p_holm = 0.0318" not in loose.reason
    assert tight.outcome == loose.outcome == "holds"


def test_a_cap_whose_last_look_the_permutation_test_cannot_reach_is_warned_before_running(
    capsys,
) -> None:
    """plain_vs_residual ran looks 3 and 6 (α 0.031, 0.019) with 2 claims: at 6 seeds the
    permutation test's smallest p, 2/2^6 · 2 = 0.0625, cannot reach 0.019, so a claim with
    non-normal differences could never be decided. Said before anything runs."""
    from ablab.analysis.stats import look_levels
    from ablab.cli import warn_permutation_floor

    warn_permutation_floor([3, 6], look_levels([3, 6]), claims=2)
    err = capsys.readouterr().err
    assert "cannot reach it; such a claim cannot be decided" in err and "needs 8 seeds" in err
    for looks in ([3, 6, 10], [3, 5]):  # reachable at 10; below 6 seeds the t-test decides
        warn_permutation_floor(looks, look_levels(looks), claims=2)
        assert capsys.readouterr().err == ""
