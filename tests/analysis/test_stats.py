"""Study statistics against scipy/statsmodels and against known effects: a real shift gives
*holds*, identical distributions give *inconclusive* and keep the false-holds rate at alpha."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from ablab.analysis.results import Comparison
from ablab.analysis.stats import holm, paired, seed_band, summarize, time_to_threshold, verdict

SEEDS = [0, 1, 2, 3, 4]
CLAIM = "the variant changes the metric"


def shifted(shift: float, seed: int, noise: float = 0.01, seeds: list[int] = SEEDS):
    """A baseline ~ N(0.8, 0.02) per seed and a variant = baseline + shift + N(0, noise)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.8, 0.02, len(seeds))
    other = base + shift + rng.normal(0.0, noise, len(seeds))
    return dict(zip(seeds, base, strict=True)), dict(zip(seeds, other, strict=True))


# --- summarize ---------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_summarize_matches_scipy_t_interval(confidence: float) -> None:
    x = np.random.default_rng(0).normal(0.7, 0.05, 5)
    s = summarize(x, confidence)
    low, high = stats.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert s.n == 5 and s.values == x.tolist() and s.confidence == confidence
    assert s.mean == pytest.approx(x.mean()) and s.std == pytest.approx(x.std(ddof=1))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))
    ci = stats.ttest_1samp(x, 0).confidence_interval(confidence)  # the same interval, twice
    assert (s.ci_low, s.ci_high) == pytest.approx((ci.low, ci.high))


@pytest.mark.parametrize("values", [[], [0.5]], ids=["none", "one"])
def test_summarize_too_few_values_is_nan(values: list[float]) -> None:
    s = summarize(values)
    assert s.mean == values[0] if values else math.isnan(s.mean)
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)


def test_summarize_keeps_a_diverged_run() -> None:
    s = summarize([0.8, float("nan"), 0.82])
    assert s.n == 3 and math.isnan(s.values[1])  # the diverged run is not dropped
    assert math.isnan(s.mean) and math.isnan(s.std) and math.isnan(s.ci_low)


def test_summarize_constant_values_give_a_point_interval() -> None:
    s = summarize([0.5, 0.5, 0.5])
    assert (s.std, s.ci_low, s.ci_high) == (0.0, 0.5, 0.5)


# --- paired ------------------------------------------------------------------------------


def test_paired_matches_scipy_ttest_rel() -> None:
    base, other = shifted(0.05, seed=1)
    c = paired("v", "final val/acc", base, other)
    a, b = np.array(list(base.values())), np.array(list(other.values()))
    ref = stats.ttest_rel(b, a)
    ci = ref.confidence_interval()
    assert c.seeds == SEEDS and c.test == "paired t-test" and math.isnan(c.p_holm)
    assert c.diff_mean == pytest.approx((b - a).mean())
    assert (c.ci_low, c.ci_high, c.p_value) == pytest.approx((ci.low, ci.high, ref.pvalue))
    assert c.effect_size == pytest.approx((b - a).mean() / (b - a).std(ddof=1))


def test_paired_uses_only_seeds_in_both() -> None:
    c = paired("v", "q", {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}, {1: 2.5, 2: 3.1, 3: 4.2, 7: 0.0})
    assert c.seeds == [1, 2, 3]
    assert c.diff_mean == pytest.approx(np.mean([0.5, 0.1, 0.2]))


def test_paired_fewer_than_two_pairs_is_nan() -> None:
    c = paired("v", "q", {0: 1.0, 1: 2.0}, {1: 2.5, 5: 1.0})
    assert c.seeds == [1] and c.diff_mean == pytest.approx(0.5)
    assert all(math.isnan(x) for x in (c.ci_low, c.ci_high, c.p_value, c.effect_size))


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_paired_identical_differences_are_decided_without_warnings(method: str) -> None:
    # 0.75 − 0.70 and 0.80 − 0.75 differ in the last bits: still "the same shift"
    base = {0: 0.70, 1: 0.75, 2: 0.60, 3: 0.65}
    up = {0: 0.75, 1: 0.80, 2: 0.65, 3: 0.70}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's catastrophic-cancellation / divide warnings
        shift = paired("v", "q", base, up, method=method)  # type: ignore[arg-type]
        same = paired("v", "q", base, dict(base), method=method)  # type: ignore[arg-type]
    assert shift.effect_size == math.inf
    assert shift.ci_low == shift.ci_high == pytest.approx(0.05)
    assert (same.diff_mean, same.ci_low, same.ci_high, same.effect_size) == (0, 0, 0, 0)
    if method == "t":  # t = d/0: infinite evidence for a shift, none against "no change"
        assert (shift.p_value, same.p_value) == (0.0, 1.0)
        assert verdict(CLAIM, shift, "higher").outcome == "holds"
    else:  # the exact sign-flip test: 2 of the 2**4 sign patterns are as extreme
        assert (shift.p_value, same.p_value) == (pytest.approx(2 / 2**4), 1.0)
    assert verdict(CLAIM, same, "higher").outcome == "inconclusive"


def test_paired_keeps_a_diverged_run() -> None:
    base, other = shifted(0.05, seed=2)
    other[3] = float("nan")
    c = paired("v", "q", base, other)
    assert c.seeds == SEEDS and math.isnan(c.diff_mean) and math.isnan(c.p_value)
    v = verdict(CLAIM, c, "higher")
    assert v.outcome == "inconclusive" and "diverged" in v.reason


def test_paired_bootstrap_uses_scipy_and_exact_sign_flip_p() -> None:
    base, other = shifted(0.05, seed=3, seeds=list(range(8)))
    c = paired("v", "q", base, other, method="bootstrap", rng=0)
    d = np.array(list(other.values())) - np.array(list(base.values()))
    ci = stats.bootstrap((d,), np.mean, method="BCa", rng=0).confidence_interval
    assert c.test.startswith("sign-flip") and (c.ci_low, c.ci_high) == pytest.approx(ci)
    # all 8 differences positive: only the all-plus and all-minus sign patterns are as extreme
    assert c.p_value == pytest.approx(2 / 2**8)
    assert verdict(CLAIM, c, "higher").outcome == "holds"
    # with 5 seeds the smallest attainable p is 2/2**5 = 0.0625: never significant at 0.05
    five = paired("v", "q", *shifted(0.05, seed=3), method="bootstrap")
    assert five.p_value == pytest.approx(2 / 2**5)
    assert verdict(CLAIM, five, "higher").outcome == "inconclusive"


def test_paired_rejects_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method 'perm'; valid: auto, t, bootstrap"):
        paired("v", "q", {0: 1.0}, {0: 1.0}, method="perm")  # type: ignore[arg-type]


# --- verdict -----------------------------------------------------------------------------


def test_known_shift_holds_one_way_and_not_the_other() -> None:
    c = paired("v", "final val/acc", *shifted(0.05, seed=4))
    up, down = verdict(CLAIM, c, "higher"), verdict(CLAIM, c, "lower")
    assert (up.outcome, down.outcome) == ("holds", "does not hold")
    assert "opposite direction" in down.reason and "n = 5" in up.reason
    assert (up.variant, up.quantity, up.expected) == ("v", "final val/acc", "higher")


def test_identical_distributions_are_inconclusive() -> None:
    rng = np.random.default_rng(5)
    base, other = (dict(zip(SEEDS, rng.normal(0.8, 0.02, 5), strict=True)) for _ in range(2))
    v = verdict(CLAIM, paired("v", "q", base, other), "higher")
    assert v.outcome == "inconclusive" and "spans 0" in v.reason


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_false_holds_rate_under_the_null_is_at_most_alpha(alpha: float) -> None:
    trials = 200
    outcomes = []
    for trial in range(trials):
        rng = np.random.default_rng(1000 + trial)
        base, other = (dict(zip(SEEDS, rng.normal(0.8, 0.02, 5), strict=True)) for _ in range(2))
        c = paired("v", "q", base, other, confidence=1 - alpha)  # the CI check matches alpha
        outcomes.append(verdict(CLAIM, c, "higher", alpha=alpha))
    holds = sum(v.outcome == "holds" for v in outcomes)
    significant = sum(v.outcome != "inconclusive" for v in outcomes)
    # a two-sided test at alpha is significant in a fraction alpha of null trials, half of them
    # in the expected direction; allow binomial noise up to its 99.9th percentile
    assert significant <= stats.binom.ppf(0.999, trials, alpha)
    assert holds <= stats.binom.ppf(0.999, trials, alpha / 2)


def test_too_few_seeds_is_inconclusive() -> None:
    c = paired("v", "q", *shifted(0.05, seed=6, seeds=[0, 1]))
    v = verdict(CLAIM, c, "higher")
    assert v.outcome == "inconclusive" and v.reason.startswith("too few seeds: n=2 < 3")


def test_verdict_uses_holm_adjusted_p_when_present() -> None:
    c = paired("v", "q", *shifted(0.05, seed=4))
    assert verdict(CLAIM, c, "higher").outcome == "holds"
    adjusted = Comparison(**{**c.__dict__, "p_holm": 0.2})
    v = verdict(CLAIM, adjusted, "higher")
    assert v.outcome == "inconclusive" and "p_holm = 0.2" in v.reason


def test_margin_turns_a_tight_null_into_does_not_hold() -> None:
    base, other = shifted(0.0, seed=7, noise=0.001, seeds=list(range(10)))
    c = paired("v", "q", base, other)
    assert verdict(CLAIM, c, "higher").outcome == "inconclusive"
    tight = verdict(CLAIM, c, "higher", margin=0.01)
    assert tight.outcome == "does not hold" and "margin 0.01" in tight.reason
    assert verdict(CLAIM, c, "higher", margin=1e-5).outcome == "inconclusive"


# --- holm --------------------------------------------------------------------------------


def _with_p(*ps: float) -> list[Comparison]:
    return [Comparison(f"v{i}", "q", SEEDS, 0.1, 0.0, 0.2, p, 1.0) for i, p in enumerate(ps)]


def test_holm_hand_example() -> None:
    # Holm (1979) step-down by hand: sorted 0.01, 0.03, 0.04 → 3·0.01 = 0.03, 2·0.03 = 0.06,
    # max(0.06, 1·0.04) = 0.06 (the adjusted p-values are monotone)
    family = _with_p(0.01, 0.04, 0.03)
    out = holm(family)
    assert [c.p_holm for c in out] == pytest.approx([0.03, 0.06, 0.06])
    assert all(math.isnan(c.p_holm) for c in family)  # copies: the input is untouched
    assert [c.p_value for c in out] == [0.01, 0.04, 0.03]


def test_holm_leaves_nan_out_of_the_family() -> None:
    out = holm(_with_p(0.01, float("nan"), 0.04, 0.03))
    assert math.isnan(out[1].p_holm)
    assert [out[i].p_holm for i in (0, 2, 3)] == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


# --- time to threshold -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "values", "threshold", "mode", "expected"),
    [
        ([10, 20, 30, 40], [0.5, 0.85, 0.91, 0.95], 0.9, "max", 30),
        ([10, 20, 30, 40], [0.5, 0.9, 0.8, 0.95], 0.9, "max", 20),  # reaching counts (>=)
        ([30, 10, 20], [0.95, 0.5, 0.92], 0.9, "max", 20),  # in step order, not log order
        ([10, 20, 30], [2.0, 0.4, 0.1], 0.5, "min", 20),
        ([10, 20, 30], [float("nan"), 0.95, 0.97], 0.9, "max", 20),  # NaN never reaches
    ],
)
def test_time_to_threshold(steps, values, threshold, mode, expected) -> None:
    assert time_to_threshold(steps, values, threshold, mode) == expected


def test_time_to_threshold_never_reached_is_nan_or_censored() -> None:
    steps, values = [10, 20, 30], [0.5, 0.6, float("nan")]  # stopped by the non-finite guard
    assert math.isnan(time_to_threshold(steps, values, 0.9, "max"))
    assert time_to_threshold(steps, values, 0.9, "max", horizon=100) == 101
    assert math.isnan(time_to_threshold([], [], 0.9, "max"))


def test_time_to_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="mode 'up'; valid: max, min"):
        time_to_threshold([1], [1.0], 0.5, "up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 steps but 1 values"):
        time_to_threshold([1, 2], [1.0], 0.5, "max")
    with pytest.raises(ValueError, match="horizon 5 < last logged step 10"):
        time_to_threshold([1, 10], [0.1, 0.2], 0.5, "max", horizon=5)


# --- seed band ---------------------------------------------------------------------------


def test_seed_band_aligns_on_steps_every_seed_logged() -> None:
    curves = {
        0: ([0, 10, 20, 30], [0.1, 0.5, 0.7, 0.8]),
        1: ([10, 20, 30], [0.4, 0.6, 0.9]),  # missed step 0
        2: ([0, 10, 20, 20], [0.2, 0.6, 0.1, 0.8]),  # stopped early; step 20 logged twice
    }
    band = seed_band(curves)
    assert band.steps == [10, 20] and band.n_seeds == 3
    for i, values in enumerate([[0.5, 0.4, 0.6], [0.7, 0.6, 0.8]]):  # step 20: last value wins
        s = summarize(values)
        low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
        assert band.mean[i] == pytest.approx(s.mean)
        assert (band.low[i], band.high[i]) == pytest.approx((low, high))


def test_seed_band_one_seed_and_no_seeds() -> None:
    band = seed_band({0: ([1, 2], [0.3, 0.4])})
    assert band.mean == [0.3, 0.4] and band.n_seeds == 1
    assert all(math.isnan(x) for x in band.low + band.high)
    assert seed_band({}).steps == []


def test_a_seed_ci_that_excludes_zero_is_still_inconclusive_after_holm() -> None:
    from ablab.analysis.results import Comparison

    c = Comparison("v", "final val/acc", [0, 1, 2], -0.08, -0.14, -0.02, 0.026, -3.5, p_holm=0.078)
    v = verdict("claim", c, "lower")
    assert v.outcome == "inconclusive"
    assert "not significant after Holm's correction: p_holm = 0.078" in v.reason


def test_equivalence_claims_hold_inside_the_margin_and_fail_beyond_it() -> None:
    base = {s: 0.90 + 0.01 * s for s in range(5)}
    close = {s: v + 0.001 * (-1) ** s for s, v in base.items()}
    far = {s: v + 0.05 + 0.001 * (-1) ** s for s, v in base.items()}
    noisy = {s: v + 0.03 * (-1) ** s for s, v in base.items()}
    outcome = {
        name: verdict("c", paired(name, "q", base, other), "same", margin=0.01).outcome
        for name, other in {"close": close, "far": far, "noisy": noisy}.items()
    }
    assert outcome == {"close": "holds", "far": "does not hold", "noisy": "inconclusive"}
    with pytest.raises(ValueError, match="needs a margin"):
        verdict("c", paired("x", "q", base, close), "same")


# --- power, robust tests, TOST (issue 16) ------------------------------------------------


def test_the_minimum_detectable_difference_has_80_percent_power_in_simulation() -> None:
    """Differences drawn with mean = the reported MDE are detected by the paired t-test at
    alpha 0.05 in 80% of 4,000 simulated studies of the same n (within sampling error)."""
    rng = np.random.default_rng(0)
    for n, sd in ((3, 0.02), (5, 1.0), (10, 0.3)):
        base = dict(enumerate(rng.normal(0.8, 0.02, n)))
        noise = rng.normal(0, 1, n)
        noise = (noise - noise.mean()) / noise.std(ddof=1) * sd  # sd of the differences: sd
        c = paired("v", "q", base, {s: base[s] + 0.01 + noise[s] for s in base})
        assert c.mde > 0
        draws = rng.normal(c.mde, sd, size=(4000, n))
        power = float(np.mean(stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05))
        assert power == pytest.approx(0.8, abs=0.025), (n, power)


def test_the_seeds_needed_reach_80_percent_power_and_one_fewer_does_not() -> None:
    base, other = shifted(0.004, seed=3, noise=0.01)
    c = paired("v", "q", base, other)
    n = int(c.seeds_for_power)
    assert n > len(SEEDS)  # an inconclusive-sized effect needs more seeds than it had
    rng = np.random.default_rng(1)

    def power(k: int) -> float:
        draws = rng.normal(c.effect_size, 1.0, size=(6000, k))  # d_z in units of sd
        return float(np.mean(stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05))

    assert power(n) >= 0.8 - 0.02
    assert power(n - 1) < 0.8 + 0.02


def test_no_effect_needs_no_finite_number_of_seeds() -> None:
    c = paired("v", "q", {0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 1.5, 2: 3.0})  # mean diff 0
    assert c.diff_mean == 0 and math.isnan(c.seeds_for_power)


def test_non_normal_differences_with_enough_seeds_are_decided_by_the_robust_tests() -> None:
    """Eight seeds, one far outlier: Shapiro–Wilk rejects normality, so the sign-flip
    permutation test and the BCa interval decide, with scipy's own values; the t-test's stay
    recorded beside them."""
    d = np.array([0.011, 0.012, 0.010, 0.013, 0.009, 0.012, 0.011, 0.30])
    base = {s: 0.5 for s in range(8)}
    c = paired("v", "q", base, {s: 0.5 + d[s] for s in range(8)})
    assert c.normality_p == pytest.approx(stats.shapiro(c.diffs).pvalue) and c.normality_p < 0.05
    assert c.test.startswith("sign-flip permutation test")
    assert "Shapiro–Wilk rejects" in c.test_reason
    d = np.asarray(c.diffs)  # b − a as floats: the values scipy sees
    perm = stats.permutation_test(
        (d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
        n_resamples=np.inf, vectorized=True,
    )  # fmt: skip
    assert c.p_value == c.permutation_p == pytest.approx(perm.pvalue)
    assert c.p_value == pytest.approx(2 / 2**8)  # every difference positive: 2 of 256 patterns
    boot = stats.bootstrap((d,), np.mean, method="BCa", rng=0).confidence_interval
    assert (c.ci_low, c.ci_high) == pytest.approx((boot.low, boot.high))
    t = stats.ttest_rel([0.5 + x for x in d], [0.5] * 8)
    assert c.t_p == pytest.approx(t.pvalue)


def test_normal_differences_keep_the_t_test_and_few_seeds_cannot_use_the_robust_ones() -> None:
    base, other = shifted(0.02, seed=5, seeds=list(range(8)))
    c = paired("v", "q", base, other)
    assert c.normality_p >= 0.05 and c.test == "paired t-test"
    assert not math.isnan(c.permutation_p)  # computed all the same, and shown
    few = paired("v", "q", *shifted(0.02, seed=5))
    assert few.test == "paired t-test" and "too few seeds" in few.test_reason
    assert math.isnan(few.permutation_p)


def test_probability_of_improvement_counts_ties_as_half() -> None:
    c = paired("v", "q", {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, {0: 2.0, 1: 3.0, 2: 0.0, 3: 1.0})
    assert c.prob_improvement == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def test_tost_says_equivalent_only_when_both_one_sided_tests_reject() -> None:
    from statsmodels.stats.weightstats import ttost_paired

    margin = 0.05
    base = {s: 0.7 for s in range(6)}
    # tight around 0: both one-sided tests reject -> equivalent
    near = np.array([0.004, -0.003, 0.001, 0.0, -0.002, 0.003])
    # around +0.045 with spread: the upper test cannot reject -> not shown equivalent, even
    # though the lower one rejects
    edge = np.array([0.03, 0.06, 0.04, 0.05, 0.035, 0.055])
    for d, equivalent in ((near, True), (edge, False)):
        c = paired("v", "q", base, {s: 0.7 + d[s] for s in range(6)})
        diffs = np.asarray(c.diffs)
        _, (_, p_low, _), (_, p_high, _) = ttost_paired(diffs, np.zeros(6), -margin, margin)
        assert (p_low < 0.05 and p_high < 0.05) == equivalent
        v = verdict(CLAIM, c, "same", margin=margin)
        assert (v.outcome == "holds") == equivalent, v.reason
        assert "TOST" in v.reason
        if equivalent:
            assert f"equivalent within ±{margin:g}" in v.reason
    assert p_low < 0.05 <= p_high  # the edge case: exactly one of the two rejected


def test_an_inconclusive_verdict_says_what_more_seeds_would_detect() -> None:
    c = paired("v", "q", *shifted(0.002, seed=2))
    v = verdict(CLAIM, c, "higher")
    assert v.outcome == "inconclusive"
    assert f"detects |diff| >= {c.mde:.3g} with 80% power" in v.reason
    assert f"about {c.seeds_for_power:.0f} seeds" in v.reason


@pytest.mark.parametrize("effect", [0.3, 1.0, 3.0, 6.0, 10.0, 40.0])
def test_seeds_for_power_is_the_smallest_n_with_80_percent_power(effect: float) -> None:
    """Also for strong effects, where statsmodels' root finder fails or stops at n = 2."""
    from ablab.analysis.stats import _seeds_for_power

    n = int(_seeds_for_power(effect, 0.05))
    rng = np.random.default_rng(7)

    def simulated(k: int) -> float:  # the t-test's rejection rate on 20,000 simulated studies
        draws = rng.normal(effect, 1.0, size=(20_000, k))
        return float(np.mean(stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05))

    assert simulated(n) >= 0.8 - 0.01
    assert n == 2 or simulated(n - 1) < 0.8 + 0.01


def test_identical_differences_are_equivalent_exactly_inside_the_margin() -> None:
    base = {s: 1.0 for s in range(4)}
    inside = paired("v", "q", base, {s: 1.0 + 1e-3 for s in range(4)})
    outside = paired("v", "q", base, {s: 1.5 for s in range(4)})
    assert verdict(CLAIM, inside, "same", margin=0.01).outcome == "holds"
    assert verdict(CLAIM, outside, "same", margin=0.01).outcome == "does not hold"


def test_an_inconclusive_permutation_verdict_says_when_the_seeds_could_not_reach_alpha() -> None:
    """6 seeds, every difference positive: the exact sign-flip p is 2/2^6 = 0.031, 0.0625
    after Holm over two claims, above a look's α of 0.019: no data at 6 seeds could decide it,
    and the reason says so (with the seeds it needs), instead of only the t-test's power."""
    base = {s: 0.0 for s in range(6)}
    skewed = {0: 0.1, 1: 0.8, 2: 0.3, 3: 0.12, 4: 0.25, 5: 0.11}  # Shapiro–Wilk rejects
    c = paired("v", "final train_eval/loss", base, skewed, method="bootstrap", alpha=0.019)
    assert c.test.startswith("sign-flip") and c.p_value == pytest.approx(2 / 64)
    c = replace(c, p_holm=2 * c.p_value)  # Holm over two claims, this one's p the smaller
    v = verdict("claim", c, "higher", alpha=0.019)
    assert v.outcome == "inconclusive"
    assert "cannot reach α = 0.019 at n = 6: its smallest p is 2/2^6 = 0.0312, 0.0625 after " \
           "Holm; it needs 8 seeds." in v.reason  # fmt: skip
    # 9 seeds reach it (2/2^9 · 2 = 0.0078): decided, and nothing said of a floor
    more = paired("v", "q", {s: 0.0 for s in range(9)}, {s: 0.1 + s**2 for s in range(9)},
                  method="bootstrap", alpha=0.019)  # fmt: skip
    v = verdict("claim", replace(more, p_holm=2 * more.p_value), "higher", alpha=0.019)
    assert v.outcome == "holds" and "cannot reach" not in v.reason
