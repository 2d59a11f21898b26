"""Report honesty (issue 17, item 3, first part): a deterministic quantity is stated, not tested
(no p-value, out of Holm's family), and a run that never reached a threshold is marked censored
in the tables and the verdict, with how many runs of each side reached it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from tests.analysis.test_render import make_report

from ablab.analysis import stats
from ablab.analysis.collect import censored, censoring_note, judge
from ablab.analysis.render import report_tables, to_markdown
from ablab.analysis.results import STATED_TEST, Summary
from ablab.study import Study, load_study

CLAIM = "0. A fabricated claim."


@pytest.mark.parametrize(
    ("other", "expected", "margin", "outcome"),
    [(1200.0, "lower", None, "holds"), (1200.0, "higher", None, "does not hold"),
     (1234.0, "lower", None, "does not hold"), (1230.0, "lower", 10.0, "does not hold"),
     (1230.0, "same", 10.0, "holds"), (1200.0, "same", 10.0, "does not hold")],
)  # fmt: skip
def test_a_deterministic_quantity_is_stated_with_no_p_value(other, expected, margin, outcome):
    """Each side the same on every seed (a parameter count): the difference is a number, its
    verdict read off it; no p, no d_z, no interval wider than the point."""
    base = dict.fromkeys(range(3), 1234.0)
    other_values = dict.fromkeys(range(3), other)
    c = stats.paired("small", "complexity.params", base, other_values, deterministic=True)
    assert c.test == STATED_TEST and "deterministic" in c.test_reason
    assert math.isnan(c.p_value) and math.isnan(c.t_p) and math.isnan(c.effect_size)
    assert c.ci_low == c.ci_high == c.diff_mean == other - 1234.0
    assert math.isnan(stats.holm([c])[0].p_holm)  # no member of the family
    v = stats.verdict(CLAIM, c, expected, margin=margin)
    assert v.outcome == outcome and "stated, not tested" in v.reason and "p =" not in v.reason


def test_a_declared_quantity_whose_difference_is_the_same_on_every_seed_is_stated() -> None:
    """The same random draws rescaled (Xavier against He at initialisation, in log10): the
    values vary with the seed, their difference does not; declared, it is stated."""
    base = {0: -1.2, 1: -0.7, 2: -1.9}
    other = {s: v - 3.362 for s, v in base.items()}
    c = stats.paired("xavier", "log10 act_std", base, other, deterministic=True)
    assert c.test == STATED_TEST and "the difference is the same on every seed" in c.test_reason
    assert math.isnan(c.p_value) and c.diff_mean == pytest.approx(-3.362)
    undeclared = stats.paired("xavier", "log10 act_std", base, other)
    assert undeclared.test != STATED_TEST
    # as a run logs them: float32 stds, rescaled by a fixed factor, then log10 in float32 (the
    # rounding spreads the difference by ~1e-7, far beyond float64's ulps)
    stds = np.random.default_rng(0).uniform(0.1, 3.0, 5).astype(np.float32)
    scaled = (stds * np.float32(4.3e-4)).astype(np.float32)
    base32 = {s: float(np.log10(v)) for s, v in enumerate(stds)}
    other32 = {s: float(np.log10(v)) for s, v in enumerate(scaled)}
    assert np.ptp([other32[s] - base32[s] for s in base32]) > 0  # not identical in float64
    c = stats.paired("xavier", "log10 act_std", base32, other32, deterministic=True)
    assert c.test == STATED_TEST and c.diff_mean == pytest.approx(np.log10(4.3e-4), abs=1e-5)


def test_a_quantity_that_varies_on_one_side_is_still_tested() -> None:
    base = dict.fromkeys(range(3), 1.0)
    c = stats.paired("v", "q", base, {0: 1.1, 1: 1.2, 2: 1.15}, deterministic=True)
    assert c.test == "paired t-test" and 0 < c.p_value < 1


def test_constant_values_of_an_undeclared_quantity_are_measured_not_stated() -> None:
    """Accuracy at its ceiling on both sides, or a threshold every run missed: constant, yet
    measurements; never guessed deterministic (two seeds stay too few, as before)."""
    ceiling = stats.paired("v", "final val/acc", {0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0})
    assert ceiling.test != STATED_TEST
    assert stats.verdict(CLAIM, ceiling, "higher").outcome == "inconclusive"
    missed = stats.paired(
        "v", "steps", dict.fromkeys(range(3), 241.0), dict.fromkeys(range(3), 241.0)
    )
    assert missed.test != STATED_TEST
    assert stats.verdict(CLAIM, missed, "lower").outcome == "inconclusive"
    assert load_study("conv_efficiency").quantities[0].stated_not_tested  # stat: param


STUDY = """
claim: "0. A fabricated claim."
question: Is a deterministic claim kept out of Holm's family?
baseline: {name: base, overrides: {model.width: 1}}
variants:
  small: {model.width: 2}
seeds: [0, 1, 2, 3]
sizes: {quick: {}}
quantities:
  - {metric: complexity.params, stat: param}
  - {metric: val/acc, stat: final}
expect:
  - {variant: small, quantity: complexity.params, direction: lower}
  - {variant: small, quantity: final val/acc, direction: lower}
"""


def test_a_stated_claim_does_not_take_a_place_in_holms_family(tmp_path: Path) -> None:
    folder = tmp_path / "det"
    folder.mkdir()
    (folder / "study.yaml").write_text(STUDY)
    study = load_study(folder)
    values = {
        "base": {"complexity.params": dict.fromkeys(range(4), 5000.0),
                 "final val/acc": {0: 0.9, 1: 0.91, 2: 0.92, 3: 0.9}},
        "small": {"complexity.params": dict.fromkeys(range(4), 1200.0),
                  "final val/acc": {0: 0.88, 1: 0.9, 2: 0.9, 3: 0.89}},
    }  # fmt: skip
    comparisons, (params, accuracy) = judge(study, values, range(4), [])
    assert params.outcome == "holds" and "stated, not tested" in params.reason
    c = next(c for c in comparisons if c.quantity == "final val/acc")
    assert c.p_holm == c.p_value  # a family of one: the stated claim is not counted
    # each verdict carries the p that decided it: none for the stated one
    assert math.isnan(params.p) and accuracy.p == c.p_holm
    # an equivalence claim carries its TOST's p (after Holm), not the difference test's
    same = load_study(
        write(
            tmp_path / "same",
            STUDY.replace(
                "final val/acc, direction: lower}", "final val/acc, direction: same, margin: 0.05}"
            ),
        )
    )
    _, (_, equivalent) = judge(same, values, range(4), [])
    assert (
        equivalent.outcome == "holds"
        and equivalent.p
        == pytest.approx(
            stats.tost(c, 0.05)[0]  # a family of one
        )
        and equivalent.p != c.p_value
    )
    rows = report_tables(make_report(comparisons=comparisons)).comparisons.rows
    assert [r[6] for r in rows] == ["stated", "t"]
    assert rows[0][4] == rows[0][5] == "—"  # no p, no p Holm


def write(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "study.yaml").write_text(text)
    return folder


CENSORED = """
claim: "1. BatchNorm speeds convergence."
question: Does BN reach 90% in fewer steps?
baseline: {name: bn, overrides: {model.norm: bn}}
variants:
  no_bn: {model.norm: none}
sizes: {quick: {}}
quantities:
  - {metric: val/acc, stat: final}
  - {metric: val/acc, stat: best}
  - {metric: val/acc, stat: steps_to, threshold: 0.9}
expect:
  - {variant: no_bn, quantity: steps to val/acc >= 0.9, direction: higher}
"""


def censored_study(tmp_path: Path) -> Study:
    folder = tmp_path / "censored"
    folder.mkdir()
    (folder / "study.yaml").write_text(CENSORED)
    return load_study(folder)


def test_censored_runs_are_those_past_the_studys_last_step(tmp_path: Path) -> None:
    quantity = censored_study(tmp_path).quantities[2]
    assert quantity.stat == "steps_to"
    assert censored(quantity, {0: 120.0, 2: 241.0, 1: 241.0}, horizon=240) == [1, 2]
    assert censored(quantity, {0: 120.0}, horizon=None) == []


def test_a_censored_threshold_is_marked_in_the_tables_and_the_verdict(tmp_path: Path) -> None:
    study = censored_study(tmp_path)
    name = "steps to val/acc >= 0.9"
    values = {"bn": {name: {0: 60.0, 1: 72.0, 2: 60.0}},
              "no_bn": {name: {0: 180.0, 1: 241.0, 2: 241.0}}}  # fmt: skip
    c = stats.paired("no_bn", name, values["bn"][name], values["no_bn"][name])
    v = stats.verdict(study.claim, c, "higher")
    noted = censoring_note(v, study, values, {"val/acc": 240}, [c])
    assert noted.reason.endswith(
        "runs that reached the threshold: no_bn 1 of 3, bn 3 of 3; the others are censored at "
        "240 steps (counted as 240 + 1, not measured)."
    )
    # every run reached it: nothing to add
    reached = {"bn": values["bn"], "no_bn": {name: {0: 180.0, 1: 200.0, 2: 190.0}}}
    assert censoring_note(v, study, reached, {"val/acc": 240}, [c]) is v

    def summary(vals: list[float], cut: list[int]) -> Summary:
        s = stats.summarize(vals)
        s.censored = cut
        return s

    report = make_report()
    variant = report.variants[-1]
    variant.summaries = {name: summary([180.0, 241.0, 241.0], [1, 2])}
    report.variants = [variant]
    markdown = to_markdown(report, {})
    assert "180, >240, >240" in markdown
    assert "censored: counted as N + 1, not measured" in markdown
    assert f"{variant.name} 1 of 3 reached it" in markdown
    assert np.isfinite(variant.summaries[name].mean)  # the table still shows the (bounded) mean


def test_an_inconclusive_result_against_the_claim_is_named_as_such() -> None:
    """tanh above ReLU on 3 of 3 seeds, the claim says lower: inconclusive (3 seeds, Holm) but
    named as going the opposite way, never as a weak confirmation."""
    relu = {0: 0.80, 1: 0.82, 2: 0.79}
    tanh = {0: 0.84, 1: 0.83, 2: 0.86}
    c = stats.holm([stats.paired("tanh", "final val/acc", relu, tanh)] * 3)[0]
    v = stats.verdict(CLAIM, c, "lower")
    assert v.outcome == "inconclusive"
    assert v.reason.startswith("opposite to the claim (higher on 3 of 3 seeds), not significant: ")
    # the same data under the claim "higher" lean its way: no such words
    assert "opposite" not in stats.verdict(CLAIM, c, "higher").reason


def test_a_studys_scale_names_its_data_models_and_budget(tmp_path: Path) -> None:
    folder = tmp_path / "sized"
    folder.mkdir()
    (folder / "study.yaml").write_text(
        CENSORED.replace("sizes: {quick: {}}", "sizes: {quick: {overrides: "
                         "{data: digits, trainer: cpu, trainer.max_epochs: 8}}}")
        .replace("no_bn: {model.norm: none}", "no_bn: {model.norm: none}\n  deep: {model: plain56}")
        .replace("overrides: {model.norm: bn}", "overrides: {model.norm: bn, model: lenet5}")
    )  # fmt: skip
    # the model is what a variant changes: every one is named
    assert load_study(folder).scale("quick") == "data=digits, model=lenet5/plain56, 8 epochs"
    # a size may say it in its own words; a trainer group without epochs gives its own
    folder = tmp_path / "scaled"
    folder.mkdir()
    (folder / "study.yaml").write_text(
        STUDY.replace(
            "sizes: {quick: {}}",
            "sizes: {quick: {scale: 'digits, 2 steps'}, smoke: {overrides: {trainer: smoke}}}",
        )
        + 'pilots: ["lr 0.1: diverged on 2 of 3 seeds"]\n'
    )
    study = load_study(folder)
    assert study.scale("quick") == "digits, 2 steps"
    assert study.scale("smoke") == "data=digits, model=lenet5, 1 epochs"
    assert study.pilots == ["lr 0.1: diverged on 2 of 3 seeds"]
    # overrides the study's command added to every job (recorded by the sweeper) are named
    from omegaconf import OmegaConf

    from ablab.analysis.collect import scale_text
    from hydra_plugins.ablab_study import StudySweeper

    config = OmegaConf.create({"study": str(folder), "size": "quick"})
    plan = StudySweeper.plan(config, ["trainer.max_epochs=1"])
    assert plan["tags"]["study_overrides"] == "trainer.max_epochs=1"
    assert scale_text(study, plan["tags"]) == (
        "digits, 2 steps; with trainer.max_epochs=1 on the command line"
    )
    assert "study_overrides" not in StudySweeper.plan(config, [])["tags"]


def test_not_equivalent_needs_the_whole_interval_beyond_the_margin() -> None:
    """A significant difference of 0.6 margins whose interval only reaches past the margin is
    not shown to differ by more than it: inconclusive, not 'does not hold'."""
    rng = np.random.default_rng(5)
    base = dict(enumerate(rng.normal(0.9, 0.01, 10).tolist()))
    noise = rng.normal(0, 1, 10)
    noise = (noise - noise.mean()) / noise.std(ddof=1)
    reaching = {s: base[s] + 0.006 + 0.008 * noise[s] for s in base}
    c = stats.paired("v", "q", base, reaching)
    assert c.ci_low > 0 and c.ci_low < 0.01 < c.ci_high  # significant, reaches past ±0.01
    assert stats.verdict(CLAIM, c, "same", margin=0.01).outcome == "inconclusive"
    beyond = {s: base[s] + 0.02 + 0.005 * noise[s] for s in base}
    c = stats.paired("v", "q", base, beyond)
    assert c.ci_low > 0.01
    v = stats.verdict(CLAIM, c, "same", margin=0.01)
    assert v.outcome == "does not hold" and "differs by more than the margin 0.01" in v.reason
