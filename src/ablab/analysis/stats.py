"""Statistics of a study: summaries over seeds, paired comparisons with the baseline, Holm's
correction, verdicts, time-to-threshold and seed bands for learning curves.

Every test and quantile comes from a library: the t-interval of a mean and the paired t-test
(Student 1908, "The probable error of a mean", Biometrika 6) from :mod:`scipy.stats`
(``t.interval``, ``ttest_rel(...).confidence_interval()``); Holm's step-down correction (Holm
1979, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6) from
``statsmodels.stats.multitest.multipletests(method="holm")``; the optional non-parametric
comparison from ``scipy.stats.bootstrap`` (BCa interval, Efron & Tibshirani 1993, *An
Introduction to the Bootstrap*, ch. 14) and ``scipy.stats.permutation_test`` (exact sign-flip
test of paired differences, Fisher 1935). The effect size is Cohen's d_z = mean(d) / sd(d)
of the paired differences d (Cohen 1988, *Statistical Power Analysis for the Behavioral
Sciences*, 2nd ed., §2.3; Lakens 2013, Front. Psychol. 4:863).

Non-finite values are kept, never dropped: a run that diverged (NaN or inf) makes its
summary and its comparison undefined, and the verdict says so instead of quietly comparing
the runs that survived.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from ablab.analysis.results import (
    GRID_TEST,
    STATED_TEST,
    UNTESTED,
    Band,
    Comparison,
    Direction,
    Outcome,
    Summary,
    Verdict,
)

NAN = float("nan")
#: Differences within this many units of float rounding of the inputs count as identical.
_ROUNDING_ULPS = 4


def _t_interval(mean: np.ndarray, std: np.ndarray, n: int, confidence: float) -> np.ndarray:
    """Student's t-interval mean ± t_{(1+c)/2, n−1} · std/√n, shape (2, ...); a zero std gives
    the point [mean, mean] (scipy returns NaN for scale 0), a NaN std a NaN interval."""
    sem = std / math.sqrt(n)
    with np.errstate(invalid="ignore"):
        low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=np.where(sem > 0, sem, 1))
    point = np.where(sem == 0, mean, np.nan)  # sem is 0 or NaN wherever it is not > 0
    return np.stack([np.where(sem > 0, low, point), np.where(sem > 0, high, point)])


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample standard deviation (ddof=1) and the t-interval of the mean of one quantity
    over seeds: mean ± t_{(1+c)/2, n−1} · s/√n (Student 1908, via ``scipy.stats.t.interval``).

    With fewer than two values the std and the interval are NaN. A non-finite value (a
    diverged run) is kept: the mean is what numpy makes of it (NaN, or ±inf for a loss that
    blew up) and std and interval are NaN, so the report shows the divergence.
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    mean = float(x.mean()) if n else NAN
    if n < 2 or not np.isfinite(x).all():
        return Summary(x.tolist(), mean, NAN, NAN, NAN, confidence)
    std = float(x.std(ddof=1))
    low, high = _t_interval(np.float64(mean), np.float64(std), n, confidence)
    return Summary(x.tolist(), mean, std, float(low), float(high), confidence)


def _identical(d: np.ndarray, scale: float, ulps: float = _ROUNDING_ULPS) -> bool:
    """Whether all differences are equal up to the rounding of inputs of magnitude ``scale``
    (e.g. 0.75 − 0.70 and 0.80 − 0.75 differ in the last bits)."""
    return float(np.ptp(d)) <= ulps * np.finfo(float).eps * scale


#: Relative tolerance within which a declared-deterministic quantity's values (or paired
#: differences) count as one value: float32's rounding of a computed metric, with room.
DETERMINISTIC_RTOL = 1e-5


#: Seeds from which the sign-flip permutation test can reach p < 0.05 (its smallest two-sided p
#: is 2 / 2**n: 0.0625 at 5 seeds, 0.031 at 6), so the robust tests are run from here on.
ROBUST_MIN_SEEDS = 6
#: Power the minimum detectable difference and the seeds needed are given for (Cohen 1988).
POWER = 0.8


#: The level of the Shapiro–Wilk pre-test that switches to the robust tests: fixed, not the
#: look's (small, spent) α, at which normality would practically never be rejected.
NORMALITY_ALPHA = 0.05


def paired(
    variant: str,
    quantity: str,
    baseline: Mapping[int, float],
    other: Mapping[int, float],
    confidence: float = 0.95,
    *,
    method: Literal["auto", "t", "bootstrap"] = "auto",
    rng: int | np.random.Generator = 0,
    alpha: float = 0.05,
    deterministic: bool = False,
) -> Comparison:
    """``other − baseline`` paired by seed (only seeds present in both, recorded in ``seeds``).

    Always: the mean difference d̄, the paired t-test (``scipy.stats.ttest_rel``, Student 1908)
    with its t-interval, Cohen's d_z = d̄ / sd(d) (Cohen 1988), the Shapiro–Wilk p of the
    differences (``scipy.stats.shapiro``; Shapiro & Wilk 1965, Biometrika 52), the probability
    of improvement P(d > 0) + ½·P(d = 0) over the seeds (the paired form of rliable's, Agarwal
    et al. 2021), the minimum detectable difference MDE = d_z* · sd(d), where d_z* is the
    effect the two-sided paired t-test at ``alpha`` detects with 80% power at these n seeds,
    and the seeds that test needs for 80% power at the observed d_z (``statsmodels``
    ``TTestPower.solve_power``: the noncentral t distribution). From ``ROBUST_MIN_SEEDS``
    seeds on: the exact sign-flip permutation p (``scipy.stats.permutation_test``, Fisher
    1935) and the BCa bootstrap interval (``scipy.stats.bootstrap``, Efron & Tibshirani 1993).

    Which test decides (``test``, with ``test_reason``): ``method="t"`` or ``"bootstrap"``
    force one; ``"auto"`` takes the t-test unless there are enough seeds for the robust tests
    and Shapiro–Wilk rejects normal differences at :data:`NORMALITY_ALPHA` (0.05, whatever the
    test's own ``alpha``: autorank's rule; Herbold 2020,
    JOSS 5:2173). Below ``ROBUST_MIN_SEEDS`` a forced bootstrap still runs (its smallest p
    cannot reach 0.05 and a bootstrap of 3–5 values undercovers).

    A quantity declared ``deterministic`` (a parameter count, MACs) whose sides indeed have
    one value each on every seed, or whose paired difference is the same on every seed (a
    rescaling of the same random draws), up to rounding, is stated, not tested: ``test`` is
    :data:`STATED_TEST`, the interval is the point [d, d], and p and d_z are NaN (no p-value:
    it is no sample of anything). Undeclared constant values (an accuracy at its ceiling, a
    threshold every run missed) are tested like any other.

    Degenerate cases, decided here rather than left to scipy's NaN/inf and warnings:
    fewer than 2 pairs → NaN interval, p and d_z; a non-finite difference (a diverged run)
    → NaN interval, p and d_z; all differences identical up to rounding (sd 0) → the interval
    is the point [d, d], and for the t-test p = 0 and d_z = ±inf when d ≠ 0 (t = d/0 is
    infinite: every seed moved by exactly the same amount), p = 1 and d_z = 0 when d = 0.
    """
    seeds = sorted(set(baseline) & set(other))
    a = np.array([baseline[s] for s in seeds], dtype=float)
    b = np.array([other[s] for s in seeds], dtype=float)
    d = b - a
    n = d.size
    if method not in ("auto", "t", "bootstrap"):
        raise ValueError(f"paired: method '{method}'; valid: auto, t, bootstrap")
    mean = float(d.mean()) if n else NAN
    base = Comparison(variant, quantity, seeds, mean, NAN, NAN, NAN, NAN, diffs=d.tolist())
    if n < 2 or not np.isfinite(d).all():
        test = "sign-flip permutation test, BCa bootstrap CI" if method == "bootstrap" else None
        return replace(base, test=test or "paired t-test")
    scale = float(max(np.abs(a).max(), np.abs(b).max()))
    tie = _ROUNDING_ULPS * np.finfo(float).eps * scale
    # a declared-deterministic quantity is read at float32's precision: the metrics behind it
    # (a std through 19 layers) are float32 reductions, whose rounding spreads a fixed
    # difference by ~1e-8 relative, far beyond float64's few ulps
    close = partial(_identical, scale=scale, ulps=DETERMINISTIC_RTOL / np.finfo(float).eps)
    sides = close(a) and close(b)
    if deterministic and (sides or close(d)):
        # Each side the same on every seed (a parameter count, MACs), or the same difference
        # on every seed (the same random draws rescaled by a fixed factor, e.g. Xavier against
        # He at initialisation): a deterministic quantity. Its difference is a number to
        # state; a test of it is noise.
        mean = 0.0 if abs(mean) <= tie else mean  # equal up to the rounding of the inputs
        what = "each side has the same value" if sides else "the difference is the same"
        return replace(
            base,
            diff_mean=mean,
            ci_low=mean,
            ci_high=mean,
            test=STATED_TEST,
            prob_improvement=float(np.mean(np.where(np.abs(d) <= tie, 0.5, d > 0))),
            test_reason=f"{what} on every seed: a deterministic quantity, stated, not tested",
        )
    identical = _identical(d, scale)
    zero = identical and abs(mean) <= tie
    improvement = float(np.mean(np.where(np.abs(d) <= tie, 0.5, d > 0)))
    if identical:
        effect = 0.0 if zero else math.copysign(math.inf, mean)
        t_p = 1.0 if zero else 0.0
        t_ci = (0.0, 0.0) if zero else (mean, mean)
        normality, mde, needed = NAN, NAN, NAN
    else:
        sd = float(d.std(ddof=1))
        effect = mean / sd
        res = stats.ttest_rel(b, a)
        ci = res.confidence_interval(confidence_level=confidence)
        t_p, t_ci = float(res.pvalue), (float(ci.low), float(ci.high))
        normality = float(stats.shapiro(d).pvalue) if n >= 3 else NAN
        mde = _detectable_effect(n, alpha) * sd
        needed = _seeds_for_power(abs(effect), alpha)

    robust = method == "bootstrap" or n >= ROBUST_MIN_SEEDS
    perm_p, boot_ci = NAN, (NAN, NAN)
    if robust:
        # Exact: all 2**n sign patterns of the differences (n is a handful of seeds).
        perm_p = float(
            stats.permutation_test(
                (d,),
                lambda x, axis: np.mean(x, axis=axis),
                permutation_type="samples",
                n_resamples=np.inf if n <= 16 else 100_000,
                vectorized=True,
                rng=rng,
            ).pvalue
        )
        if identical:  # a bootstrap of constant data is degenerate (scipy warns, NaN)
            boot_ci = t_ci
        else:
            bci = stats.bootstrap(
                (d,), np.mean, confidence_level=confidence, method="BCa", rng=rng
            ).confidence_interval
            boot_ci = (float(bci.low), float(bci.high))

    if method == "bootstrap":
        use_robust, reason = True, "the robust tests were asked for"
    elif method == "t":
        use_robust, reason = False, "the t-test was asked for"
    elif not robust:
        use_robust = False
        reason = f"n = {n} < {ROBUST_MIN_SEEDS}: too few seeds for a permutation test"
    elif not math.isnan(normality) and normality < NORMALITY_ALPHA:
        use_robust = True
        reason = (
            f"Shapiro–Wilk rejects normal differences (p = {normality:.3g} < {NORMALITY_ALPHA:g})"
        )
    else:
        use_robust = False
        reason = (
            "identical differences (no spread to test)"
            if identical
            else f"differences consistent with normal (Shapiro–Wilk p = {normality:.3g})"
        )
    if use_robust:
        test, p, (low, high) = "sign-flip permutation test, BCa bootstrap CI", perm_p, boot_ci
    else:
        test, p, (low, high) = "paired t-test", t_p, t_ci
    return replace(
        base,
        ci_low=low,
        ci_high=high,
        p_value=p,
        effect_size=effect,
        test=test,
        normality_p=normality,
        prob_improvement=improvement,
        mde=mde,
        seeds_for_power=needed,
        t_p=t_p,
        t_ci=t_ci,
        permutation_p=perm_p,
        bootstrap_ci=boot_ci,
        test_reason=reason,
    )


def _solve_power(**kw: float | None) -> float:
    """``TTestPower().solve_power`` (two-sided), NaN where its root finder does not converge
    (two pairs: one degree of freedom)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            return float(TTestPower().solve_power(alternative="two-sided", **kw))
        except (ConvergenceWarning, ValueError):
            return NAN


@functools.lru_cache(maxsize=256)  # a function of (n, alpha) only, asked for every comparison
def _detectable_effect(n: int, alpha: float, power: float = POWER) -> float:
    """d_z* the two-sided paired t-test at ``alpha`` detects with ``power`` at n pairs."""
    return _solve_power(effect_size=None, nobs=n, alpha=alpha, power=power)


def _seeds_for_power(effect: float, alpha: float, power: float = POWER) -> float:
    """Pairs the two-sided paired t-test needs to detect |d_z| = ``effect`` with ``power``,
    rounded up; NaN for no effect (no number of seeds detects it) or a non-finite one."""
    if not math.isfinite(effect) or effect <= 0:
        return NAN
    solved = _solve_power(effect_size=effect, nobs=None, alpha=alpha, power=power)
    # The root finder fails or stops at its lower bound (2) for strong effects (|d_z| > ~5):
    # then, and to check its rounding, count up with the power function itself.
    n = max(2, math.ceil(solved)) if math.isfinite(solved) else 2
    while _power(effect, n, alpha) < power:
        n += 1
    return float(n)


def _power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at n pairs and |d_z| = ``effect``: P(|T| > t*) for
    T ~ noncentral t(n − 1, effect·√n) (``scipy.stats.nct``). statsmodels' ``TTestPower.power``
    and ``nct.sf`` return NaN for strong effects at few pairs, where the far tail underflows:
    its share is then 0."""
    df, nc = n - 1, effect * math.sqrt(n)
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    upper = 1.0 - float(stats.nct.cdf(critical, df, nc))
    lower = float(stats.nct.cdf(-critical, df, nc))
    return (upper if math.isfinite(upper) else 0.0) + (lower if math.isfinite(lower) else 0.0)


def _pocock_spending(t: float, alpha: float) -> float:
    """Pocock-type spending α·ln(1 + (e − 1)·t) (Lan & DeMets 1983): nearly even over the
    looks, so a strong effect is decided at the first look with few seeds."""
    return alpha * math.log1p((math.e - 1.0) * t)


def _obrien_fleming_spending(t: float, alpha: float) -> float:
    """O'Brien–Fleming-type spending 2 − 2Φ(z_{1−α/2} / √t) (Lan & DeMets 1983): almost nothing
    early, nearly all of α at the last look."""
    if t <= 0:
        return 0.0
    return float(2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1.0 - alpha / 2.0) / math.sqrt(t)))


#: Alpha-spending functions α(t) of the information fraction t = n_k / n_K (Lan & DeMets 1983,
#: "Discrete sequential boundaries for clinical trials", Biometrika 70:659–663).
SPENDING: dict[str, Callable[[float, float], float]] = {
    "pocock": _pocock_spending,
    "obrien_fleming": _obrien_fleming_spending,
}
SPENDING_NAMES = {
    "pocock": "Pocock-type α·ln(1 + (e − 1)t)",
    "obrien_fleming": "O'Brien–Fleming-type 2 − 2Φ(z_{1−α/2}/√t)",
}


def plan_looks(first: int, max_seeds: int, step: int | None = None) -> list[int]:
    """The seed counts at which a sequential study looks: ``first``, then every ``step`` more
    seeds (default: ``first`` more), ending exactly at ``max_seeds``; a last round shorter than
    ``step`` joins the one before (3, 6, 10 rather than 3, 6, 9, 10: a look after one more
    seed would spend almost no α)."""
    step = first if step is None else step
    if first < 2 or step < 1 or max_seeds < first:
        raise ValueError(
            f"looks: first {first} (>= 2), step {step} (>= 1), max {max_seeds} (>= first)"
        )
    looks = list(range(first, max_seeds, step))
    if len(looks) > 1 and max_seeds - looks[-1] < step:
        looks.pop()
    return [*looks, max_seeds]


def look_levels(looks: Sequence[int], alpha: float = 0.05, spending: str = "pocock") -> list[float]:
    """The significance level each look tests at: the α it spends, α(t_k) − α(t_{k−1}), with
    t_k = n_k / n_K the look's share of the planned seeds.

    The looks' levels sum to ``alpha``, so by the union bound (Bonferroni over looks) the chance
    that any look decides a true null is at most ``alpha`` whatever the correlation between the
    looks' tests: valid for the paired t-test at 3 seeds, where the normal-theory
    group-sequential boundaries (which recover some of the slack) do not apply. Conservative.
    """
    if spending not in SPENDING:
        raise ValueError(f"spending '{spending}'; valid: {', '.join(SPENDING)}")
    if not looks or list(looks) != sorted(set(looks)):
        raise ValueError(f"looks {list(looks)}: seed counts, increasing")
    spend, last = SPENDING[spending], looks[-1]
    spent = [spend(n / last, alpha) for n in looks]
    spent[-1] = alpha  # α(1) = α exactly: float rounding must not leave any unspent
    return [b - a for a, b in zip([0.0, *spent[:-1]], spent, strict=True)]


def grid_reading(
    variant: str,
    quantity: str,
    baseline: Mapping[int, float],
    other: Mapping[int, float],
    censored: tuple[Collection[int], Collection[int]] = ((), ()),
) -> Comparison:
    """``other − baseline`` of a quantity read off the tuning grid (the width of the range of a
    setting within x of an arm's best), per tuning seed, stated, not tested (:data:`GRID_TEST`):
    the grid's resolution makes the widths discrete and a few tuning seeds often agree exactly,
    so a test of them would claim a precision the grid does not have. ``censored`` names the
    seeds whose range reached an end of the grid, on the baseline's and the other's side: such
    a width is only a lower bound, so a difference that a wider true range could undo is
    unknown ("?" in ``grid_signs``). A seed without a width on either side is named, not
    dropped silently. :func:`verdict` decides only when every seed's sign agrees."""
    seeds = sorted(set(baseline) | set(other))
    paired = [s for s in seeds if math.isfinite(baseline.get(s, NAN))
              and math.isfinite(other.get(s, NAN))]  # fmt: skip
    d = [other[s] - baseline[s] for s in paired]
    mean = float(np.mean(d)) if d else NAN
    low, high = censored

    def sign(s: int, x: float) -> str:
        # a censored side's width may be larger than read: the sign it would flip is unknown
        if (x > 0 and s in low) or (x < 0 and s in high) or (x == 0 and (s in low or s in high)):
            return "?"
        return "+" if x > 0 else "-" if x < 0 else "0"

    def listed(x: Mapping[int, float], edge: Collection[int]) -> str:
        return ", ".join(f"{'≥' if s in edge else ''}{x[s]:.3g}" for s in paired)

    missing = [s for s in seeds if s not in paired]
    reason = (
        f"read off the tuning grid on {len(paired)} tuning seed(s) ({listed(other, high)} "
        f"against {listed(baseline, low)}; ≥: the range reached the grid's end)"
    )
    if missing:
        reason += f"; tuning seed(s) {', '.join(map(str, missing))} without a complete grid"
    return Comparison(
        variant, quantity, paired, mean, mean, mean, NAN, NAN, diffs=d, test=GRID_TEST,
        test_reason=reason + ": stated, not tested",
        grid_signs="".join(sign(s, x) for s, x in zip(paired, d, strict=True)),
    )  # fmt: skip


def _grid(c: Comparison, expected: Direction, margin: float | None, out) -> Verdict:
    """A tuning-grid reading's verdict: decided only when at least two tuning seeds read it and
    every one agrees (each seed's difference the claimed way, or every one not), else
    inconclusive with the reason; no p-value, no place in Holm's family."""
    text = f"diff {c.diff_mean:+.4g}, {c.test_reason}"
    signs, d = c.grid_signs, np.asarray(c.diffs, dtype=float)
    if len(signs) < 2:
        return out("inconclusive", f"fewer than 2 tuning seeds read the grid ({text}).")
    if "?" in signs:
        return out("inconclusive", f"a range reached the grid's end, so a width is only a lower "
                                   f"bound and the direction is unknown ({text}).")  # fmt: skip
    if expected == "same":
        if (np.abs(d) < margin).all():
            return out("holds", f"within ±{margin:g} on every tuning seed, as claimed ({text}).")
        if (np.abs(d) >= margin).all():
            return out("does not hold", f"beyond ±{margin:g} on every tuning seed ({text}).")
        return out("inconclusive", f"the tuning seeds disagree ({text}).")
    claimed = "+" if expected == "higher" else "-"
    if all(x == claimed for x in signs) and (margin is None or (np.abs(d) >= margin).all()):
        return out("holds", f"{expected} on every tuning seed, as claimed ({text}).")
    if not any(x == claimed for x in signs):
        way = "the opposite direction" if set(signs) != {"0"} else "no difference"
        return out("does not hold", f"{way} on every tuning seed ({text}).")
    return out("inconclusive", f"the tuning seeds disagree ({signs}: {text}).")


def holm(comparisons: list[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """Copies of ``comparisons`` with ``p_holm`` set by Holm's step-down procedure (Holm 1979,
    ``statsmodels ... multipletests(method="holm")``): the i-th smallest of m p-values becomes
    max_{j≤i} min(1, (m − j + 1)·p_(j)). The family is the comparisons with a defined p; a NaN
    p stays NaN and does not count towards m."""
    p = np.array([c.p_value for c in comparisons], dtype=float)
    defined = ~np.isnan(p)
    adjusted = np.full_like(p, np.nan)
    if defined.any():
        adjusted[defined] = multipletests(p[defined], alpha=alpha, method="holm")[1]
    return [replace(c, p_holm=float(q)) for c, q in zip(comparisons, adjusted, strict=True)]


def _interval_name(test: str) -> str:
    """What a test's interval is called: "paired t-test CI", "... BCa bootstrap CI"."""
    return test if test.endswith(" CI") else f"{test} CI"


def _p_text(c: Comparison) -> str:
    return f"p_holm = {c.p_holm:.3g}" if not math.isnan(c.p_holm) else f"p = {c.p_value:.3g}"


def verdict(
    claim: str,
    comparison: Comparison,
    expected: Direction,
    *,
    alpha: float = 0.05,
    min_seeds: int = 3,
    margin: float | None = None,
    tost_holm: float = NAN,
) -> Verdict:
    """Whether ``claim`` holds: the claim predicts ``variant − baseline`` of ``quantity`` goes
    the ``expected`` way. Rules, in order (the tool's contract):

    1. fewer than ``min_seeds`` paired seeds → *inconclusive* ("too few seeds");
    2. an undefined comparison (NaN mean difference, interval or p: a diverged run, or
       fewer than two pairs) → *inconclusive*;
    3. p < ``alpha`` — Holm-adjusted ``p_holm``, or ``p_value`` when :func:`holm` was not run
       — and the interval excludes 0: *holds* if the mean difference has the expected sign,
       *does not hold* if it has the opposite one ("significant in the opposite direction").
       The interval is the comparison's (``confidence`` of :func:`paired`): at 1 − alpha it
       excludes 0 exactly when the unadjusted t-test p < alpha, so p_holm decides; a higher
       confidence makes the rule stricter; the bootstrap method needs both to agree;
    4. with a ``margin``, an interval inside (−margin, +margin) → *does not hold*: the claim
       predicted a difference and any there is is smaller than the margin (an equivalence
       reading of the interval; at 95% it is stricter than TOST's 90% interval);
    5. otherwise *inconclusive* (the interval spans 0).

    ``expected="same"`` (an equivalence claim, e.g. fused and unfused nets give the same
    outputs) needs a ``margin`` and replaces rules 3–5 by TOST (:func:`tost`): *holds* when
    its p — Holm-adjusted ``tost_holm`` when the claim is one of several — is below ``alpha``,
    *does not hold* when the whole interval lies beyond the margin, else *inconclusive*.

    The reason is one sentence with the numbers: mean difference, interval, p, d_z and n.
    """
    c = comparison
    n = len(c.seeds)
    numbers = (
        f"diff {c.diff_mean:+.4g}, {_interval_name(c.test)} [{c.ci_low:.4g}, {c.ci_high:.4g}], "
        f"{_p_text(c)}, d_z = {c.effect_size:.3g}, n = {n}"
    )
    if c.test_reason:
        numbers += f"; {c.test} because {c.test_reason}"

    def out(outcome: Outcome, reason: str) -> Verdict:
        if outcome == "inconclusive":  # not significant, but say which way it went
            reason = _opposite(c, expected) + reason
        return Verdict(claim, c.variant, c.quantity, expected, outcome, reason)

    if expected not in ("higher", "lower", "same"):
        raise ValueError(f"verdict: expected direction '{expected}'; valid: higher, lower, same")
    if expected == "same" and not margin:
        raise ValueError("verdict: an equivalence claim (expected 'same') needs a margin")
    if c.test == GRID_TEST:
        return _grid(c, expected, margin, out)
    if c.test == STATED_TEST and n >= 2 and math.isfinite(c.diff_mean):
        return _stated(c, expected, margin, out)
    if n < min_seeds:
        return out("inconclusive", f"too few seeds: n={n} < {min_seeds} ({numbers}).")
    p = c.p_holm if not math.isnan(c.p_holm) else c.p_value
    if not all(math.isfinite(v) for v in (c.diff_mean, c.ci_low, c.ci_high)) or math.isnan(p):
        why = "fewer than 2 paired seeds" if n < 2 else "a run diverged or has no value"
        return out("inconclusive", f"the difference is undefined: {why} ({numbers}).")
    if expected == "same":
        return _equivalence(c, margin, alpha, numbers, out, tost_holm)
    if p < alpha and (c.ci_low > 0 or c.ci_high < 0):
        if (c.diff_mean > 0) == (expected == "higher"):
            return out("holds", f"significantly {expected}, as claimed ({numbers}).")
        return out("does not hold", f"significant in the opposite direction ({numbers}).")
    if margin is not None and -margin < c.ci_low and c.ci_high < margin:
        return out(
            "does not hold",
            f"no difference larger than the margin {margin:g}: the claim predicted one ({numbers}).",
        )
    if c.ci_low > 0 or c.ci_high < 0:  # the seed CI excludes 0, the corrected p does not
        return out(
            "inconclusive",
            f"not significant after Holm's correction: p_holm = {p:.3g} >= {alpha:g} "
            f"({numbers}).{_floor_text(c, alpha)}{_power_text(c)}",
        )
    return out(
        "inconclusive",
        f"CI [{c.ci_low:.4g}, {c.ci_high:.4g}] spans 0 ({numbers}).{_power_text(c)}",
    )


def _opposite(c: Comparison, expected: Direction) -> str:
    """ "opposite to the claim (higher on 3 of 3 seeds), not significant: " when the mean
    difference goes against a directional claim, else "": an inconclusive verdict must not
    read as a weak confirmation when the data lean the other way."""
    if expected not in ("higher", "lower") or not math.isfinite(c.diff_mean) or c.diff_mean == 0:
        return ""
    if (c.diff_mean > 0) == (expected == "higher"):
        return ""
    d = np.asarray(c.diffs, dtype=float)
    way = "lower" if expected == "higher" else "higher"
    against = int(np.sum(d < 0) if expected == "higher" else np.sum(d > 0))
    return f"opposite to the claim ({way} on {against} of {d.size} seeds), not significant: "


def permutation_seeds(alpha: float, factor: float = 1.0) -> int:
    """The fewest seeds at which the exact sign-flip permutation test can reach ``alpha`` when
    its p is multiplied by ``factor`` (Holm's, for the smallest of ``factor`` claims): the least
    n with 2 / 2**n · factor < alpha (2/2**n is its smallest two-sided p)."""
    return math.floor(1 + math.log2(factor / alpha)) + 1


def _floor_text(c: Comparison, alpha: float) -> str:
    """Said when the sign-flip permutation test decided and could not have reached ``alpha`` at
    these seeds: its smallest two-sided p is 2 / 2**n (every difference of one sign), times the
    Holm factor this comparison got; a verdict left inconclusive by that floor was not a weak
    effect but too few seeds for the test."""
    if not c.test.startswith("sign-flip") or not c.p_value > 0:
        return ""
    n = len(c.seeds)
    floor = 2.0 / 2**n
    factor = c.p_holm / c.p_value if math.isfinite(c.p_holm) else 1.0
    if floor * factor < alpha:
        return ""
    needed = permutation_seeds(alpha, factor)
    return (
        f" The sign-flip permutation test cannot reach α = {alpha:g} at n = {n}: its smallest p "
        f"is 2/2^{n} = {floor:.3g}, {floor * factor:.3g} after Holm; it needs {needed} seeds."
    )


def _power_text(c: Comparison) -> str:
    """What more seeds would do: the smallest difference these seeds detect with 80% power
    and the seeds that would detect the observed one (both for the paired t-test)."""
    if math.isnan(c.mde):
        return ""
    text = (
        f" With n = {len(c.seeds)} the paired t-test detects |diff| >= {c.mde:.3g} with 80% power"
    )
    if math.isnan(c.seeds_for_power):
        return text + "."
    return text + f"; the observed d_z needs about {c.seeds_for_power:.0f} seeds."


def _stated(c: Comparison, expected: Direction, margin: float | None, out) -> Verdict:
    """A deterministic quantity's verdict, read off the values (no test): the difference has
    the expected sign (and, with a margin, is at least the margin) → *holds*; otherwise *does
    not hold*. ``same``: holds when |diff| < margin."""
    n = len(c.seeds)
    numbers = f"diff {c.diff_mean:+.6g} on each of {n} seeds: a deterministic quantity, stated, not tested"
    d = c.diff_mean
    if expected == "same":
        if abs(d) < margin:
            return out("holds", f"equal within ±{margin:g}, as claimed ({numbers}).")
        return out("does not hold", f"differs by more than the margin {margin:g} ({numbers}).")
    right_way = d > 0 if expected == "higher" else d < 0
    if right_way and (margin is None or abs(d) >= margin):
        return out("holds", f"{expected}, as claimed ({numbers}).")
    if right_way:
        return out(
            "does not hold", f"{expected}, but by less than the margin {margin:g} ({numbers})."
        )
    if d == 0:
        return out("does not hold", f"no difference ({numbers}).")
    return out("does not hold", f"the opposite direction ({numbers}).")


def tost(c: Comparison, margin: float) -> tuple[float, str]:
    """The p of an equivalence test of ``c`` within ±``margin``, and how it was found.

    TOST, two one-sided paired t-tests of H0: diff <= −margin and H0: diff >= +margin
    (Schuirmann 1987, J. Pharmacokin. Biopharm. 15; ``statsmodels.stats.weightstats.
    ttost_paired``): p is the larger of the two, so p < α means both reject. Identical
    differences (no spread, a deterministic quantity) are decided exactly: p = 0 when
    |diff| < margin, else 1. A comparison made without its differences has NaN (its interval
    decides, :func:`verdict`)."""
    d = np.asarray(c.diffs, dtype=float)
    if c.test in UNTESTED:  # no test, and no member of Holm's family (:func:`_stated` decides)
        return NAN, "stated"
    if d.size != len(c.seeds) or d.size < 2 or not np.isfinite(d).all():
        return NAN, f"{_interval_name(c.test)} inside ±{margin:g}"
    if _identical(d, max(float(np.abs(d).max()), margin)):
        return (0.0 if abs(c.diff_mean) < margin else 1.0), (
            f"identical differences, |diff| vs ±{margin:g}"
        )
    tost_p, (_, p_low, _), (_, p_high, _) = ttost_paired(d, np.zeros_like(d), -margin, margin)
    text = (
        f"TOST ±{margin:g}: p = {float(p_low):.3g} (diff > −{margin:g}), "
        f"{float(p_high):.3g} (diff < +{margin:g})"
    )
    return float(tost_p), text


def _equivalence(
    c: Comparison,
    margin: float,
    alpha: float,
    numbers: str,
    out,
    tost_holm: float = NAN,
) -> Verdict:
    """An equivalence claim ("the same"), decided by TOST (:func:`tost`): *holds* ("equivalent
    within ±m") only when both one-sided tests reject at ``alpha`` — after Holm's correction
    (``tost_holm``) when the study claims several things; *does not hold* when the whole
    interval of the difference lies beyond the margin; otherwise *inconclusive*."""
    tost_p, text = tost(c, margin)
    if math.isnan(tost_p):  # no differences to test: the interval decides
        equivalent = -margin < c.ci_low and c.ci_high < margin
    else:
        if not math.isnan(tost_holm):
            text += f"; p_holm = {tost_holm:.3g}"
            tost_p = tost_holm
        equivalent = tost_p < alpha
    if equivalent:
        return out("holds", f"equivalent within ±{margin:g}, as claimed ({text}; {numbers}).")
    # Shown to differ by more than the margin: the whole interval lies beyond it. An interval
    # that merely reaches past the margin from a significant difference would call a true
    # difference of 0.6 margins "not equivalent" in about a third of studies.
    if c.ci_low >= margin or c.ci_high <= -margin:
        return out(
            "does not hold", f"differs by more than the margin {margin:g} ({text}; {numbers})."
        )
    return out(
        "inconclusive",
        f"not shown equivalent within ±{margin:g}: both one-sided tests must reject ({text}; "
        f"{numbers}).",
    )


def time_to_threshold(
    steps: Sequence[int],
    values: Sequence[float],
    threshold: float,
    mode: Literal["max", "min"],
    *,
    horizon: int | None = None,
) -> float:
    """The first logged step at which the metric reaches ``threshold`` (value ≥ threshold for
    ``mode="max"``, ≤ for ``"min"``; NaN values never reach it), in step order.

    A run that never reaches it is right-censored: its time is only known to exceed its
    budget. With ``horizon`` (the study's step budget, e.g. the last step any of its runs
    logged) it counts as ``horizon + 1`` — slower than every run that got there, so paired
    differences keep their sign and a "slower" claim is tested conservatively; a result
    ``> horizon`` marks it censored. Without ``horizon`` it is NaN, which makes the variant's
    summary and comparison undefined (inconclusive). ``last logged step + 1`` would be wrong:
    ``NonFiniteLossGuard`` stops a diverging run early, which would make it look fast.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"time_to_threshold: mode '{mode}'; valid: max, min")
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    if s.shape != v.shape:
        raise ValueError(f"time_to_threshold: {s.size} steps but {v.size} values")
    if horizon is not None and s.size and horizon < s.max():
        raise ValueError(f"time_to_threshold: horizon {horizon} < last logged step {s.max():g}")
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    reached = v >= threshold if mode == "max" else v <= threshold
    if reached.any():
        return float(s[np.argmax(reached)])
    return NAN if horizon is None else float(horizon + 1)


def seed_band(
    curves: Mapping[int, tuple[Sequence[int], Sequence[float]]], confidence: float = 0.95
) -> Band:
    """A learning curve over seeds: at each step that every seed logged, the mean over seeds
    and its t-interval, mean ± t_{(1+c)/2, k−1} · s/√k for k seeds (the same interval as
    :func:`summarize`, so bands and tables agree; NaN band with one seed).

    Steps some seed lacks are dropped (a run stopped early truncates the band there rather
    than changing which seeds are averaged); a step logged twice (a resumed run) keeps its
    last value; a NaN value makes that step's mean and band NaN.
    """
    per_seed = [dict(zip(map(int, s), map(float, v), strict=True)) for s, v in curves.values()]
    k = len(per_seed)
    common = sorted(set.intersection(*(set(c) for c in per_seed))) if per_seed else []
    if not common:
        return Band([], [], [], [], k)
    x = np.array([[c[step] for step in common] for c in per_seed])  # (seeds, steps)
    mean = x.mean(axis=0)
    if k < 2:
        nan = [NAN] * len(common)
        return Band(common, mean.tolist(), nan, list(nan), k)
    low, high = _t_interval(mean, x.std(axis=0, ddof=1), k, confidence)
    return Band(common, mean.tolist(), low.tolist(), high.tolist(), k)
