"""What a study report holds: per-variant summaries over seeds, paired comparisons with the
baseline, one verdict per claim, learning curves with seed bands, and the runs left out.

Plain dataclasses: :mod:`ablab.analysis.stats` computes them, :mod:`ablab.analysis.collect`
fills them from MLflow runs, :mod:`ablab.analysis.render` turns them into Markdown and HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["holds", "does not hold", "inconclusive"]
Direction = Literal["higher", "lower", "same"]
#: The "test" of a deterministic quantity: none, its values are stated (``stats.paired``).
STATED_TEST = "stated (deterministic)"
#: The "test" of a quantity read off the tuning grid (``stats.grid_reading``): none, stated.
GRID_TEST = "stated (tuning grid)"
#: Comparisons whose difference is stated, not tested: no p-value, no place in Holm's family.
UNTESTED = (STATED_TEST, GRID_TEST)


@dataclass
class Summary:
    """One quantity over seeds: mean, sample standard deviation and a t-based confidence
    interval of the mean (NaN bounds with fewer than two values)."""

    values: list[float]
    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    #: positions in ``values`` that were stated, not measured (a diverged run counted as the
    #: study's ``diverged_value``)
    stated: list[int] = field(default_factory=list)
    #: positions in ``values`` of runs that never reached a ``steps_to`` threshold: their value
    #: is the study's step budget + 1 (right-censored), not a time that was measured
    censored: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class Comparison:
    """``variant − baseline`` of one quantity, paired by seed.

    ``ci_low``/``ci_high`` bound the mean paired difference; ``p_value`` is the two-sided paired
    t-test's, ``p_holm`` the same after Holm's correction across the study's comparisons;
    ``effect_size`` is Cohen's d_z (mean difference / standard deviation of the differences).
    """

    variant: str
    quantity: str
    seeds: list[int]
    diff_mean: float
    ci_low: float
    ci_high: float
    p_value: float
    effect_size: float
    p_holm: float = float("nan")
    test: str = "paired t-test"
    #: the variant compared against, when it is not the study's baseline
    against: str = ""
    #: the paired differences, in seed order
    diffs: list[float] = field(default_factory=list)
    #: Shapiro–Wilk p of the differences (NaN below 3 seeds or for identical differences)
    normality_p: float = float("nan")
    #: P(variant > baseline) over the paired seeds (a tie counts one half)
    prob_improvement: float = float("nan")
    #: smallest |mean difference| the paired t-test detects with 80% power at these seeds
    mde: float = float("nan")
    #: seeds the paired t-test needs for 80% power at the observed d_z (NaN when d_z is 0)
    seeds_for_power: float = float("nan")
    #: the t-test's p and interval, and the sign-flip permutation p and BCa interval (NaN below
    #: the seeds a permutation test needs); ``p_value``/``ci_*`` are those of ``test``
    t_p: float = float("nan")
    t_ci: tuple[float, float] = (float("nan"), float("nan"))
    permutation_p: float = float("nan")
    bootstrap_ci: tuple[float, float] = (float("nan"), float("nan"))
    #: why ``test`` decided (the normality check, or too few seeds for the robust tests)
    test_reason: str = ""
    #: a reading off the tuning grid (:data:`GRID_TEST`): each tuning seed's difference as a
    #: sign, "+", "-" or "0", or "?" where a range reaching the grid's end leaves it unknown
    grid_signs: str = ""


@dataclass
class Verdict:
    """Whether a claim holds for one variant: what was expected, what the comparison says."""

    claim: str
    variant: str
    quantity: str
    expected: Direction
    outcome: Outcome
    reason: str
    #: the variant compared against, when it is not the study's baseline
    against: str = ""
    #: seeds of the study missing from this comparison because their runs were left out
    seeds_left_out: list[int] = field(default_factory=list)
    #: in a sequential study, the round (look) whose test gave this verdict: the first that
    #: decided it, else the last one run; 0 for a study of fixed size
    round: int = 0
    #: the p that decided it: the difference test's (after Holm) for "higher"/"lower", TOST's
    #: (after Holm) for "same"; NaN for a stated quantity, which has none
    p: float = float("nan")


@dataclass
class Round:
    """One look of a sequential study (``ablab study --until-decided``): the first ``n`` seeds
    of the study, tested at the significance level this look spends, and each claim's outcome
    at that look (in the order of the study's ``expect``)."""

    look: int
    n: int
    seeds: list[int]
    alpha: float
    outcomes: list[Outcome]
    #: claims decided (holds or does not hold) at this look or an earlier one
    decided: int = 0


@dataclass
class Band:
    """A learning curve over seeds: the mean and its low/high band at each logged step."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    n_seeds: int


@dataclass
class VariantResult:
    """One variant of a study: its overrides, its runs (one per seed) and summaries by quantity
    (e.g. ``"final val/acc"``, ``"best val/acc"``, ``"steps to val/acc >= 0.9"``)."""

    name: str
    overrides: dict[str, str]
    run_ids: dict[int, str]
    summaries: dict[str, Summary] = field(default_factory=dict)


@dataclass
class LeftOut:
    """A run of the study that gives no final value (it did not finish), or a variant and seed
    of the study with no run at all (``run_id`` and ``status`` empty)."""

    variant: str
    seed: int
    run_id: str
    #: the run's MLflow status (RUNNING, KILLED, FAILED, SCHEDULED), as the report left it
    status: str
    #: "killed (process gone)", "still running", "failed (oom: …)", "no run (never started)"…
    reason: str
    #: the run of the same variant and seed used instead (a rerun that finished), if any
    used_instead: str = ""


@dataclass
class StudyReport:
    """Everything ``ablab report`` writes about one study run."""

    study: str
    claim: str
    question: str
    command: str
    machine: str
    baseline: str
    seeds: list[int]
    variants: list[VariantResult]
    comparisons: list[Comparison]
    verdicts: list[Verdict]
    #: curves[metric][variant] -> seed band, for the learning-curve plots
    curves: dict[str, dict[str, Band]] = field(default_factory=dict)
    #: diagnostics[metric][variant] -> seed band (``diag/*`` metrics), when the callback ran
    diagnostics: dict[str, dict[str, Band]] = field(default_factory=dict)
    parent_run_id: str = ""
    tracking_uri: str = ""
    #: free-form measured tables for measurement studies (title -> rows of column -> value)
    tables: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    #: runs that gave no value (unfinished), and variant/seeds of the study without a run
    left_out: list[LeftOut] = field(default_factory=list)
    #: sources of variance (data split, data order, initialisation, augmentation draws) ->
    #: whether their seeds differed across a variant's runs
    variance_sources: dict[str, bool] = field(default_factory=dict)
    #: the study size run (``quick``, ``full``) and the git commit it ran at
    size: str = ""
    commit: str = ""
    #: what the verdicts were measured at (data, model, budget: ``Study.scale``)
    scale: str = ""
    #: the pilot runs that shaped the design, as the study file lists them
    pilots: list[str] = field(default_factory=list)
    #: a study that tunes: the mean selection score of each variant at each grid point over the
    #: tuning seeds, and the point chosen for each variant (``tuned.<variant>`` on the parent)
    tuning: dict[str, dict[str, float]] = field(default_factory=dict)
    tuned: dict[str, str] = field(default_factory=dict)
    #: a sequential study's design, named and cited (empty for a study of fixed size), and its
    #: looks so far
    design: str = ""
    rounds: list[Round] = field(default_factory=list)
    #: the looks the design plans (seed counts), of which ``rounds`` are those run
    planned_looks: list[int] = field(default_factory=list)
