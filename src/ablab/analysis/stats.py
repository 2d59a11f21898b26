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

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ablab.analysis.results import Band, Comparison, Direction, Outcome, Summary, Verdict

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


def _identical(d: np.ndarray, scale: float) -> bool:
    """Whether all differences are equal up to the rounding of inputs of magnitude ``scale``
    (e.g. 0.75 − 0.70 and 0.80 − 0.75 differ in the last bits)."""
    return float(np.ptp(d)) <= _ROUNDING_ULPS * np.finfo(float).eps * scale


def paired(
    variant: str,
    quantity: str,
    baseline: Mapping[int, float],
    other: Mapping[int, float],
    confidence: float = 0.95,
    *,
    method: Literal["t", "bootstrap"] = "t",
    rng: int | np.random.Generator = 0,
) -> Comparison:
    """``other − baseline`` paired by seed (only seeds present in both, recorded in ``seeds``).

    ``method="t"`` (default): mean difference, its t-interval and the two-sided p of the
    paired t-test, ``scipy.stats.ttest_rel`` (Student 1908). ``method="bootstrap"``: the BCa
    bootstrap interval of the mean difference (``scipy.stats.bootstrap``, Efron & Tibshirani
    1993) and the exact two-sided sign-flip permutation p (``scipy.stats.permutation_test``);
    it makes no normality assumption but with n seeds its smallest p is 2/2**n, so it needs
    n ≥ 6 to reach p < 0.05 (5 seeds: 0.0625), and a bootstrap of 3–5 values undercovers.
    ``effect_size`` is Cohen's d_z = mean(d) / sd(d, ddof=1) (Cohen 1988).

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
    if method not in ("t", "bootstrap"):
        raise ValueError(f"paired: method '{method}'; valid: t, bootstrap")
    test = "paired t-test" if method == "t" else "sign-flip permutation test, BCa bootstrap CI"
    mean = float(d.mean()) if n else NAN
    if n < 2 or not np.isfinite(d).all():
        return Comparison(variant, quantity, seeds, mean, NAN, NAN, NAN, NAN, test=test)
    scale = float(max(np.abs(a).max(), np.abs(b).max()))
    identical = _identical(d, scale)
    zero = identical and abs(mean) <= _ROUNDING_ULPS * np.finfo(float).eps * scale
    if identical:
        effect = 0.0 if zero else math.copysign(math.inf, mean)
        low = high = 0.0 if zero else mean
    else:
        effect = mean / float(d.std(ddof=1))

    if method == "t":
        if identical:
            p = 1.0 if zero else 0.0
        else:
            res = stats.ttest_rel(b, a)
            ci = res.confidence_interval(confidence_level=confidence)
            p, low, high = float(res.pvalue), float(ci.low), float(ci.high)
    else:
        # Exact: all 2**n sign patterns of the differences (n is a handful of seeds).
        p = float(
            stats.permutation_test(
                (d,),
                lambda x, axis: np.mean(x, axis=axis),
                permutation_type="samples",
                n_resamples=np.inf,
                vectorized=True,
            ).pvalue
        )
        if not identical:  # a bootstrap of constant data is degenerate (scipy warns, NaN)
            ci = stats.bootstrap(
                (d,), np.mean, confidence_level=confidence, method="BCa", rng=rng
            ).confidence_interval
            low, high = float(ci.low), float(ci.high)
    return Comparison(variant, quantity, seeds, mean, low, high, p, effect, test=test)


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
    outputs) needs a ``margin`` and replaces rules 3–5: *holds* when the whole interval lies
    inside (−margin, +margin), *does not hold* when the difference is significant and the
    interval reaches the margin, else *inconclusive*.

    The reason is one sentence with the numbers: mean difference, interval, p, d_z and n.
    """
    c = comparison
    n = len(c.seeds)
    numbers = (
        f"diff {c.diff_mean:+.4g}, {c.test} CI [{c.ci_low:.4g}, {c.ci_high:.4g}], "
        f"{_p_text(c)}, d_z = {c.effect_size:.3g}, n = {n}"
    )

    def out(outcome: Outcome, reason: str) -> Verdict:
        return Verdict(claim, c.variant, c.quantity, expected, outcome, reason)

    if expected not in ("higher", "lower", "same"):
        raise ValueError(f"verdict: expected direction '{expected}'; valid: higher, lower, same")
    if expected == "same" and not margin:
        raise ValueError("verdict: an equivalence claim (expected 'same') needs a margin")
    if n < min_seeds:
        return out("inconclusive", f"too few seeds: n={n} < {min_seeds} ({numbers}).")
    p = c.p_holm if not math.isnan(c.p_holm) else c.p_value
    if not all(math.isfinite(v) for v in (c.diff_mean, c.ci_low, c.ci_high)) or math.isnan(p):
        why = "fewer than 2 paired seeds" if n < 2 else "a run diverged or has no value"
        return out("inconclusive", f"the difference is undefined: {why} ({numbers}).")
    if expected == "same":
        return _equivalence(c, margin, p, alpha, numbers, out)
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
            f"not significant after Holm's correction: p_holm = {p:.3g} >= {alpha:g} ({numbers}).",
        )
    return out("inconclusive", f"CI [{c.ci_low:.4g}, {c.ci_high:.4g}] spans 0 ({numbers}).")


def _equivalence(
    c: Comparison, margin: float, p: float, alpha: float, numbers: str, out
) -> Verdict:
    """An equivalence claim ("the same"): *holds* when the whole interval lies inside
    (−margin, +margin); *does not hold* when the difference is significant and the interval
    reaches beyond the margin; otherwise *inconclusive* (too wide an interval to tell)."""
    if -margin < c.ci_low and c.ci_high < margin:
        return out("holds", f"the same within the margin {margin:g}, as claimed ({numbers}).")
    if (
        p < alpha
        and (c.ci_low > 0 or c.ci_high < 0)
        and (c.ci_low <= -margin or c.ci_high >= margin)
    ):
        return out("does not hold", f"differs by more than the margin {margin:g} ({numbers}).")
    return out(
        "inconclusive",
        f"the interval is too wide to show a difference within ±{margin:g} ({numbers}).",
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
