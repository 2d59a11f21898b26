"""Read a study's runs back from MLflow and turn them into a :class:`StudyReport`.

The study's parent run (the sweep) is found by id or as the latest parent tagged
``study=<name>``; its children are grouped by their ``variant`` param and paired across variants
by their ``seed`` param. Only a run that ended gives values: FINISHED, or FAILED by the
non-finite loss guard (a diverged run is an outcome the study counts). Every other child —
still running, killed, failed otherwise — is left out and listed with the reason, and so is a
variant and seed of the study with no run at all; a RUNNING child whose process is gone (its job
folder's ``job.lock`` is free) is first ended KILLED, ``killed_by=process_gone``, so the store
says what happened to it. Each run gives one number per quantity (final or best value of a
metric, or the first step at which it reaches a threshold); each variant is compared with the
baseline seed by seed, Holm-corrected across the claims the study states, and each claim gets a
verdict (:mod:`ablab.analysis.stats` holds the rules).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run

from ablab.analysis import stats
from ablab.analysis.results import (
    UNTESTED,
    Band,
    Comparison,
    LeftOut,
    Round,
    StudyReport,
    VariantResult,
    Verdict,
)
from ablab.analysis.timing import from_timing, machine_suffix, timing_note, timing_values
from ablab.errors import ConfigError
from ablab.locks import process_gone
from ablab.study import Check, Expectation, Quantity, Study, Tune, load_study
from ablab.tracking.status import end_lost_run
from ablab.tracking.sweep import DESIGN_TAGS, SWEEP_LOCK

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class StudyRuns:
    """A study's parent run and its finished-or-not children (:func:`left_out_reason`)."""

    study: Study
    parent: Run
    children: list[Run]


def find_study_runs(client: MlflowClient, study_or_run: str, size: str | None = None) -> StudyRuns:
    """The parent run ``study_or_run`` (a run id) or the latest parent of study ``study_or_run``
    (of that ``size`` when given: ``ablab study`` reads the size it just ran), with its
    children, those whose process is gone ended first (:func:`end_lost_runs`). Raises
    ConfigError when there is none."""
    if RUN_ID.match(study_or_run):
        parent = client.get_run(study_or_run)
        if "study" not in parent.data.tags:
            raise ConfigError(f"run {study_or_run} is not a study's parent run (no 'study' tag)")
    else:
        study = load_study(study_or_run)  # unknown names fail here, listing the studies
        experiments = [e.experiment_id for e in client.search_experiments()]
        parents = client.search_runs(
            experiments,
            f"tags.study = '{study.name}' and tags.sweep = 'parent'"
            + (f" and tags.study_size = '{size}'" if size else ""),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not parents:
            raise ConfigError(
                f"no runs of study '{study.name}' in {client.tracking_uri}; run it first: "
                f"make study name={study.name} size=quick"
            )
        parent = parents[0]
    # The study file the sweep ran, when it is still there (a study outside experiments/ too).
    tags = parent.data.tags
    source = tags["study_file"] if Path(tags.get("study_file", "")).is_file() else tags["study"]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    sweep_dir = tags.get("sweep_dir")
    if parent.info.status == "RUNNING" and sweep_dir and process_gone(sweep_dir, SWEEP_LOCK):
        end_lost_run(client, parent.info.run_id)  # its launcher died (kill -9): not running
        parent = client.get_run(parent.info.run_id)
    return StudyRuns(load_study(source), parent, end_lost_runs(client, children))


def end_lost_runs(client: MlflowClient, children: list[Run]) -> list[Run]:
    """``children``, each RUNNING one whose process is gone ended KILLED with
    ``killed_by=process_gone`` (:func:`ablab.tracking.status.end_lost_run`) and read back.

    A child's job folder is its ``hydra_output_dir`` tag; its process is gone when the folder's
    ``job.lock`` exists and nobody holds it. A child whose lock is held, or that has no lock to
    ask (another machine's folder, a run from before job locks), is left RUNNING. This is the
    truth about the run, not about the report: it is written also for a report not logged.
    """
    if not any(r.info.status == "RUNNING" for r in children):
        return children
    ended = []
    for run in children:
        job_dir = run.data.tags.get("hydra_output_dir")
        if run.info.status == "RUNNING" and job_dir and process_gone(job_dir):
            end_lost_run(client, run.info.run_id)
            run = client.get_run(run.info.run_id)
        ended.append(run)
    return ended


def left_out_reason(run: Run) -> str | None:
    """Why ``run`` gives no values to the report, or None when it does: it FINISHED, or the
    non-finite loss guard stopped it (FAILED, ``failure=nonfinite_loss``: diverged)."""
    status, tags = run.info.status, run.data.tags
    if status == "FINISHED" or (status == "FAILED" and tags.get("failure") == "nonfinite_loss"):
        return None
    if status == "RUNNING":  # alive, or nothing tells it is not (end_lost_runs ended the dead)
        return "still running"
    if status == "KILLED":  # killed_by: SIGTERM, SIGUSR2, SIGINT, process_gone
        by = tags.get("killed_by", "").replace("_", " ")
        if "preempted" in tags:  # stopped after saving last.ckpt: the job's rerun continues it
            by += ", preempted: rerun the job to continue it"
        return f"killed ({by})" if by else "killed"
    if status == "FAILED":
        why = ": ".join(t for t in (tags.get("failure"), tags.get("error", "")[:120]) if t)
        return f"failed ({why})" if why else "failed"
    return status.lower()  # SCHEDULED: created, never started


def quantity_value(
    client: MlflowClient, run: Run, quantity: Quantity, horizon: int | None = None
) -> float:
    """One run's value of ``quantity``; NaN when the run never logged the metric.

    ``diverged`` is 1.0 for a run the non-finite loss guard stopped, else 0.0: a diverged run
    is an outcome to count, not a missing value.

    A run that never reaches a ``steps_to`` threshold counts as ``horizon + 1`` (censored: slower
    than any run that got there), ``horizon`` being the last step any run of the study logged.
    ``minus`` subtracts, ``over`` divides by, the same stat of another metric of the run. With
    ``scale: log`` the value is log10 of the result (-inf for 0: undefined, so any comparison
    with it is inconclusive).

    The ``final`` value of a diverged run is the quantity's ``diverged_value`` (NaN unless the
    study states one): the last value logged before the blow-up is not where the run ended.
    """
    if stated(quantity, run):
        return quantity.diverged_value
    if quantity.stat == "final" and run.data.tags.get("failure") == "nonfinite_loss":
        return float("nan")
    value = _quantity_value(client, run, quantity, horizon)
    if quantity.minus:
        value -= _quantity_value(client, run, replace(quantity, metric=quantity.minus), horizon)
    if quantity.over:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(
                np.divide(
                    value,
                    _quantity_value(client, run, replace(quantity, metric=quantity.over), horizon),
                )
            )
    if quantity.scale == "log":
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.log10(value))
    return value


def censored(quantity: Quantity, values: Mapping[int, float], horizon: int | None) -> list[int]:
    """Positions (in seed order) of the runs that never reached ``quantity``'s ``steps_to``
    threshold: their value is ``horizon + 1`` (:func:`ablab.analysis.stats.time_to_threshold`)."""
    if quantity.stat != "steps_to" or horizon is None or quantity.scale == "log":
        return []
    return [i for i, (_, v) in enumerate(sorted(values.items())) if v > horizon]


def censoring_note(
    verdict: Verdict,
    study: Study,
    values: Mapping[str, Mapping[str, Mapping[int, float]]],
    horizons: Mapping[str, int | None],
    comparisons: Sequence[Comparison],
) -> Verdict:
    """``verdict`` saying, when a side has runs that never reached its ``steps_to``
    threshold, how many of each side's runs did: their steps are censored, not measured."""
    quantity = next((q for q in study.quantities if q.name == verdict.quantity), None)
    if quantity is None or quantity.stat != "steps_to":
        return verdict
    horizon = horizons.get(quantity.metric)
    comparison = next(
        (c for c in comparisons
         if (c.variant, c.quantity, c.against) == (verdict.variant, verdict.quantity,
                                                   verdict.against)), None,
    )  # fmt: skip
    seeds = set(comparison.seeds) if comparison else set()
    sides = [verdict.variant, verdict.against or study.baseline]
    counts = []
    for side in sides:
        own = {
            s: v for s, v in values.get(side, {}).get(verdict.quantity, {}).items() if s in seeds
        }
        counts.append((side, len(own) - len(censored(quantity, own, horizon)), len(own)))
    if all(reached == total for _, reached, total in counts):
        return verdict
    text = ", ".join(f"{side} {reached} of {total}" for side, reached, total in counts)
    note = (
        f"runs that reached the threshold: {text}; the others are censored at {horizon} steps "
        f"(counted as {horizon} + 1, not measured)"
    )
    return replace(verdict, reason=f"{verdict.reason.rstrip('.')}; {note}.")


def stated(quantity: Quantity, run: Run) -> bool:
    """Whether ``run``'s value of ``quantity`` is the study's ``diverged_value``, not a measurement."""
    return (
        quantity.stat == "final"
        and quantity.diverged_value is not None
        and run.data.tags.get("failure") == "nonfinite_loss"
    )


def _quantity_value(
    client: MlflowClient, run: Run, quantity: Quantity, horizon: int | None
) -> float:
    if quantity.pattern:
        # One number from every metric the pattern matches (e.g. the dead fraction of every
        # activation layer): NaN when none matches.
        names = sorted(fnmatch.filter(run.data.metrics, quantity.metric))
        if not names:
            return float("nan")
        values = [
            _quantity_value(client, run, replace(quantity, metric=name), horizon) for name in names
        ]
        return float(getattr(np, quantity.reduce)(values))
    if quantity.stat == "diverged":
        return float(run.data.tags.get("failure") == "nonfinite_loss")
    if quantity.stat == "param":
        try:
            return float(run.data.params[quantity.metric])
        except (KeyError, ValueError):  # not logged, or not a number
            return float("nan")
    if quantity.metric not in run.data.metrics:
        return float("nan")
    if quantity.stat == "final":
        return float(run.data.metrics[quantity.metric])
    steps, values = metric_curve(client, run, quantity.metric)
    if quantity.stat == "first":
        return float(values[0])
    if quantity.stat == "best":
        return float(max(values) if quantity.mode == "max" else min(values))
    return stats.time_to_threshold(
        steps, values, quantity.threshold, quantity.mode, horizon=horizon
    )


def last_step(client: MlflowClient, runs: Iterable[Run], metric: str) -> int | None:
    """The last step at which any of ``runs`` logged ``metric``."""
    steps = [metric_curve(client, r, metric)[0][-1] for r in runs if metric in r.data.metrics]
    return max(steps) if steps else None


def collect(client: MlflowClient, runs: StudyRuns) -> StudyReport:
    """The report of one study run (see the module docstring)."""
    study, (by_variant, left_out) = runs.study, choose_runs(runs.children)
    unknown = (set(by_variant) | {e.variant for e in left_out}) - set(study.variants)
    if unknown:
        raise ConfigError(
            f"runs of variants {sorted(unknown)} are not in {study.folder}/study.yaml; "
            f"valid: {', '.join(study.variants)}"
        )
    declared = declared_seeds(study, runs)
    left_out += never_started(study, declared, by_variant, left_out)
    everything = [run for seeded in by_variant.values() for run in seeded.values()]
    horizons = {
        q.metric: last_step(client, everything, q.metric)
        for q in study.quantities
        if q.stat == "steps_to"
    }
    table = tuning_table(client, study, runs.children)
    # read off the tuning grid, on the tuning seeds
    widths = {q.name: tuning_widths(study, q, table) for q in study.quantities if q.from_tuning}
    edges = {q + AT_GRID_END: ends for q, (_, ends) in widths.items()}
    widths = {q: found for q, (found, _) in widths.items()}
    # read off the timing run, one value per round
    tags = runs.parent.data.tags
    fingerprint = None
    if study.timing is not None and tags.get("study_size") in study.sizes:
        tuned = {v: dict(p) for v, p in tuned_from_tags(study, tags).items()}
        fingerprint = study.timing_fingerprint(
            tags.get("study_size", ""), tuned, tags.get("study_overrides", "")
        )
    timing_run, timed = timing_values(client, study, runs.children, fingerprint)
    values: dict[str, dict[str, dict[int, float]]] = {}
    variants = []
    for name in study.variants:
        seeded = by_variant.get(name, {})
        values[name] = {
            q.name: (
                widths[q.name].get(name, {})
                if q.from_tuning
                else timed[q.name].get(name, {})
                if q.from_timing
                else {
                    seed: quantity_value(client, run, q, horizons.get(q.metric))
                    for seed, run in seeded.items()
                }
            )
            for q in study.quantities
        }
        values[name] |= {key: ends.get(name, {}) for key, ends in edges.items()}
        summaries = {
            q.name: replace(
                stats.summarize([v for _, v in sorted(values[name][q.name].items())]),
                stated=[]
                if q.from_tuning or q.from_timing
                else [i for i, (_, run) in enumerate(sorted(seeded.items())) if stated(q, run)],
                censored=censored(q, values[name][q.name], horizons.get(q.metric)),
            )
            for q in study.quantities
        }
        run_ids = {seed: run.info.run_id for seed, run in sorted(seeded.items())}
        variants.append(VariantResult(name, study_overrides(study, name), run_ids, summaries))
    design = Design.from_tags(runs.parent.data.tags)
    if design is None:
        comparisons, verdicts = judge(study, values, declared, left_out)
        rounds: list[Round] = []
    else:
        comparisons, verdicts, rounds = judge_sequentially(
            study, values, declared, left_out, design
        )
    verdicts = [censoring_note(v, study, values, horizons, comparisons) for v in verdicts]
    verdicts = [timing_note(v, study, timing_run) for v in verdicts]
    curves = {
        metric: {
            name: stats.seed_band(
                {
                    seed: metric_curve(client, run, metric)
                    for seed, run in by_variant.get(name, {}).items()
                    if metric in run.data.metrics
                }
            )
            for name in study.variants
            if any(metric in r.data.metrics for r in by_variant.get(name, {}).values())
        }
        for metric in study.curves
    }
    parent = runs.parent
    tags = parent.data.tags
    diagnostics = {
        profile_title(profile): bands
        for profile in study.profiles
        if (bands := layer_profiles(client, by_variant, study, profile))
    }
    return StudyReport(
        study=study.name,
        claim=study.claim,
        question=study.question,
        command=tags.get("user_command") or study_command(client, parent),
        machine=machine_text(tags, runs.children) + machine_suffix(timing_run),
        baseline=study.baseline,
        seeds=sorted({s for seeded in by_variant.values() for s in seeded}),
        variants=variants,
        comparisons=comparisons,
        verdicts=verdicts,
        curves={m: bands for m, bands in curves.items() if bands},
        diagnostics=diagnostics,
        parent_run_id=parent.info.run_id,
        tracking_uri=str(client.tracking_uri),
        tables={CHECKS_TITLE: check_rows(study.checks)} if study.checks else {},
        left_out=sorted(left_out, key=lambda e: (_rank(study, e.variant), e.seed, e.run_id)),
        variance_sources=variance_sources(by_variant),
        size=tags.get("study_size", ""),
        commit=tags.get("git_commit", "")[:10],
        tuning={
            v: {
                label: float(np.mean(list(x.values()))) if x else float("nan")
                for label, x in points.items()
            }
            for v, points in table.items()
        },
        tuned={v: tags[f"tuned.{v}"] for v in study.variants if f"tuned.{v}" in tags},
        scale=scale_text(study, tags),
        pilots=study.pilots,
        design=design.text() if design else "",
        rounds=rounds,
        planned_looks=list(design.looks) if design else [],
    )


def tuned_from_tags(study: Study, tags: Mapping[str, str]) -> dict[str, dict]:
    """Each tuned variant's point as the parent records it (``tuned.<variant>``); those not
    recorded yet are left out."""
    if study.tune is None:
        return {}
    points = {Tune.label(p): p for p in study.tune.points()}
    return {v: points[tags[f"tuned.{v}"]] for v in study.tuned_variants
            if tags.get(f"tuned.{v}") in points}  # fmt: skip


def scale_text(study: Study, tags: Mapping[str, str]) -> str:
    """What the verdicts were measured at: the size's scale (:meth:`Study.scale`), and the
    overrides the study's command added to every job, which the study file does not know."""
    size = tags.get("study_size")
    text = study.scale(size) if size in study.sizes else ""
    if extra := tags.get("study_overrides"):
        text = f"{text}; with {extra} on the command line" if text else f"with {extra}"
    return text


def judge(
    study: Study,
    values: Mapping[str, Mapping[str, Mapping[int, float]]],
    seeds: Sequence[int],
    left_out: list[LeftOut],
    alpha: float = 0.05,
    confidence: float = 0.95,
) -> tuple[list[Comparison], list[Verdict]]:
    """Every variant against the baseline (and each claim's own reference) on ``seeds``, paired
    by seed; Holm's correction over the claimed comparisons; one verdict per claim of the study,
    in the order of its ``expect``, at level ``alpha`` with ``confidence`` intervals.

    ``values[variant][quantity][seed]`` are the runs' numbers; seeds outside ``seeds`` are not
    used (a sequential look reads only its first n seeds), and a verdict notes the seeds of
    ``seeds`` its runs lost (:func:`lost_seeds`).
    """
    keep = set(seeds)

    # quantities read off the tuning grid: measured on the tuning seeds, whatever the look
    grid = {q.name for q in study.quantities if q.from_tuning}
    # ... and off the timing run: keyed by round, whatever the look
    apart = grid | {q + AT_GRID_END for q in grid} | from_timing(study)

    def of(variant: str, quantity: str) -> dict[int, float]:
        found = values.get(variant, {}).get(quantity, {})
        return {seed: v for seed, v in found.items() if seed in keep or quantity in apart}

    declared = {q.name: q.stated_not_tested for q in study.quantities}

    def compare(
        variant: str, quantity: str, reference: Mapping[int, float], against: str | None = None
    ) -> Comparison:
        if quantity in grid:
            low, high = (
                set(of(v, quantity + AT_GRID_END)) for v in (against or study.baseline, variant)
            )
            return stats.grid_reading(
                variant, quantity, reference, of(variant, quantity), censored=(low, high)
            )
        return stats.paired(
            variant, quantity, reference, of(variant, quantity), confidence, alpha=alpha,
            deterministic=declared.get(quantity, False),
        )  # fmt: skip

    comparisons = [
        compare(name, q.name, of(study.baseline, q.name))
        for name in study.variants
        if name != study.baseline
        for q in study.quantities
    ]

    # Claims against another variant than the baseline (resnet56 against resnet20), or against
    # zero (a difference measured inside each run: the one-sample test of its values).
    def reference(e: Expectation) -> dict[int, float]:
        own = of(e.variant, e.quantity)
        return dict.fromkeys(own, 0.0) if e.against_zero else of(e.against, e.quantity)

    comparisons += [
        replace(compare(e.variant, e.quantity, reference(e), e.against), against=e.against)
        for e in study.expect
        if e.against not in (None, study.baseline)
    ]

    def key(variant: str, quantity: str, against: str | None) -> tuple[str, str, str]:
        return variant, quantity, "" if against in (None, study.baseline) else against

    # The family Holm corrects is the set of claims the verdicts are drawn from, each by the
    # test that decides it: the difference test for "higher"/"lower", TOST for "same".
    # Members: one per directional comparison claimed (two claims on it share its test), one
    # per equivalence claim (each margin is its own TOST).
    by_key = {(c.variant, c.quantity, c.against): c for c in comparisons}
    members: dict[tuple[tuple[str, str, str], float | None], Comparison] = {}
    for e in study.expect:
        k, same = key(e.variant, e.quantity, e.against), e.direction == "same"
        c = by_key[k]
        member = (k, e.margin) if same else (k, None)
        members[member] = replace(c, p_value=stats.tost(c, e.margin)[0]) if same else c
    family = dict(zip(members, stats.holm(list(members.values()), alpha), strict=True))
    adjusted = {k: c for (k, margin), c in family.items() if margin is None}
    comparisons = [adjusted.get((c.variant, c.quantity, c.against), c) for c in comparisons]
    by_key = {(c.variant, c.quantity, c.against): c for c in comparisons}
    # comparison runs left out take nothing from a quantity of the tuning grid or timing run
    lost = [e for e in left_out if e.seed in keep]

    def decided_by(e: Expectation) -> float:
        c = family.get(
            (key(e.variant, e.quantity, e.against), e.margin if e.direction == "same" else None)
        )
        if c is None or c.test in UNTESTED:
            return float("nan")
        return c.p_value if math.isnan(c.p_holm) else c.p_holm

    verdicts = [
        lost_seeds(
            replace(
                stats.verdict(
                    study.claim,
                    by_key[key(e.variant, e.quantity, e.against)],
                    e.direction,
                    alpha=alpha,
                    margin=e.margin,
                    tost_holm=(
                        family[(key(e.variant, e.quantity, e.against), e.margin)].p_holm
                        if e.direction == "same"
                        else float("nan")
                    ),
                ),
                against=key(e.variant, e.quantity, e.against)[2],
                p=decided_by(e),
            ),
            {e.variant} if e.against_zero else {e.variant, e.against or study.baseline},
            [] if e.quantity in apart else lost,
            len(by_key[key(e.variant, e.quantity, e.against)].seeds),
            len(keep),
        )
        for e in study.expect
    ]
    return comparisons, verdicts


@dataclass(frozen=True)
class Design:
    """A sequential study's design, as its parent run's tags record it (``ablab study
    --until-decided``): the looks (seed counts), the overall α and the spending function."""

    looks: tuple[int, ...]
    alpha: float
    spending: str

    TAGS = DESIGN_TAGS

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Design | None:
        if "sequential.looks" not in tags:
            return None
        looks = tuple(int(n) for n in tags["sequential.looks"].split(","))
        return cls(looks, float(tags["sequential.alpha"]), tags["sequential.spending"])

    def tags(self) -> dict[str, str]:
        return dict(zip(self.TAGS, (",".join(map(str, self.looks)), f"{self.alpha:g}",
                                    self.spending), strict=True))  # fmt: skip

    def levels(self) -> list[float]:
        return stats.look_levels(self.looks, self.alpha, self.spending)

    def text(self) -> str:
        """The design, named and cited, for the report."""
        levels = ", ".join(f"{n} seeds: {a:.3g}" for n, a in zip(self.looks, self.levels(),
                                                                   strict=True))  # fmt: skip
        return (
            f"Group-sequential: looks after {', '.join(map(str, self.looks))} seeds, overall "
            f"α = {self.alpha:g} spent over the looks by a Lan–DeMets spending function, "
            f"`{self.spending}`: {stats.SPENDING_NAMES[self.spending]} (Lan & DeMets 1983, "
            f"Biometrika 70:659–663). Each look tests at the α it spends ({levels}): a "
            "Bonferroni split over the looks, so the chance that any look decides a true null "
            "stays at most α whatever the correlation between looks (conservative, and free of "
            "the normal approximation behind classical group-sequential boundaries; each look's "
            "own test is as valid as its paired t-test or permutation test). Holm's correction "
            "runs over the claims within each look. A claim is "
            "decided at the first look where it holds or does not hold, and later seeds do not "
            "overturn it; intervals are at 1 − the look's α."
        )


def judge_sequentially(
    study: Study,
    values: Mapping[str, Mapping[str, Mapping[int, float]]],
    order: Sequence[int],
    left_out: list[LeftOut],
    design: Design,
) -> tuple[list[Comparison], list[Verdict], list[Round]]:
    """:func:`judge` at every look of ``design`` the study has reached (look k: the first n_k
    seeds of ``order``, at the level the look spends); each claim's verdict is the one of the
    first look that decided it, else of the last look reached. Returns the comparisons (the
    last look's, with each claim's replaced by the one that gave its verdict), the verdicts,
    and the rounds."""
    planned = len(design.looks)
    reached = [
        (k, n, a)
        for k, (n, a) in enumerate(zip(design.looks, design.levels(), strict=True), 1)
        if n <= len(order)
    ] or [(1, len(order), design.levels()[0])]
    rounds: list[Round] = []
    chosen: dict[int, tuple[Verdict, Comparison]] = {}
    decided: set[int] = set()
    comparisons: list[Comparison] = []
    for k, n, level in reached:
        comparisons, verdicts = judge(study, values, order[:n], left_out, level, 1.0 - level)
        by_key = {(c.variant, c.quantity, c.against): c for c in comparisons}
        for i, v in enumerate(verdicts):
            if i in decided:
                continue
            state = "undecided after" if v.outcome == "inconclusive" else "decided at"
            c = by_key[(v.variant, v.quantity, v.against)]
            # a stated quantity spends no α and a grid reading's or timing's n is not the seeds
            tested = c.test not in UNTESTED and v.quantity not in apart_from_seeds(study)
            at = f"n = {n} seeds, α = {level:.3g}" if tested else f"{n} seeds run"
            prefix = f"{state} round {k} of {planned} ({at}): "
            chosen[i] = (
                replace(v, round=k, reason=prefix + v.reason),
                by_key[(v.variant, v.quantity, v.against)],
            )
            if v.outcome != "inconclusive":
                decided.add(i)
        rounds.append(
            Round(k, n, list(order[:n]), level, [v.outcome for v in verdicts], len(decided))
        )
    final = {(c.variant, c.quantity, c.against): c for _, c in chosen.values()}
    comparisons = [final.get((c.variant, c.quantity, c.against), c) for c in comparisons]
    return comparisons, [chosen[i][0] for i in range(len(study.expect))], rounds


def apart_from_seeds(study: Study) -> set[str]:
    """Quantities not measured on the comparison's seeds: read off the tuning grid (tuning
    seeds) or the timing run (rounds)."""
    return {q.name for q in study.quantities if q.from_tuning} | from_timing(study)


def _rank(study: Study, variant: str) -> int:
    names = list(study.variants)
    return names.index(variant) if variant in names else len(names)


def declared_seeds(study: Study, runs: StudyRuns) -> list[int]:
    """The seeds the sweep was to run, in the order it added them: those its parent records
    (``study_seeds``: a study with seeds added in rounds), else those of the size it records
    (``study_size``), else every seed any child has."""
    if seeds := runs.parent.data.tags.get("study_seeds"):
        return [int(s) for s in seeds.split(",")]
    size = runs.parent.data.tags.get("study_size")
    if size in study.sizes:
        return study.seeds_for(size)
    return sorted({s for r in runs.children if (s := run_seed(r)) is not None})


def never_started(
    study: Study,
    declared: list[int],
    by_variant: dict[str, dict[int, Run]],
    left_out: list[LeftOut],
) -> list[LeftOut]:
    """A :class:`LeftOut` for every variant and declared seed without any run (a sweep
    stopped before it launched the job, or a job that died before its run existed)."""
    tried = {(e.variant, e.seed) for e in left_out}
    return [
        LeftOut(name, seed, "", "", "no run (never started)")
        for name in study.variants
        for seed in declared
        if seed not in by_variant.get(name, {}) and (name, seed) not in tried
    ]


def lost_seeds(
    verdict: Verdict, sides: set[str], left_out: list[LeftOut], paired: int, declared: int
) -> Verdict:
    """``verdict`` noting the seeds it lacks because runs of ``sides`` (the variants compared)
    were left out, in ``seeds_left_out`` and at the end of its reason."""
    lost = sorted({e.seed for e in left_out if e.variant in sides and not e.used_instead})
    if not lost:
        return verdict
    note = (
        f"rests on {paired} of {declared} seeds: seed{'s' * (len(lost) > 1)} "
        f"{', '.join(map(str, lost))} left out (unfinished runs)"
    )
    return replace(verdict, seeds_left_out=lost, reason=f"{verdict.reason.rstrip('.')}; {note}.")


CHECKS_TITLE = "The notes' worked numbers, re-measured by tracing"


def check_rows(checks: list[Check]) -> list[dict[str, str]]:
    """One row per check: the notes' numbers against parameters and MACs measured by
    :func:`ablab.complexity.measure` (the tracer behind ``ablab summary``) on the instantiated
    module; a ratio check divides two earlier checks' measurements."""
    from hydra.utils import instantiate

    from ablab.complexity import measure

    measured: dict[str, dict[str, float]] = {}
    rows = []
    for check in checks:
        if check.ratio:
            a, b = (measured[name] for name in check.ratio)
            got = {k: a[k] / b[k] for k in ("params", "macs") if b[k]}
        else:
            stats_ = measure(instantiate(check.module), check.input)
            got = {"params": float(stats_.params), "macs": float(stats_.macs)}
        measured[check.name] = got
        row = {"check": check.name, "formula": check.formula}
        agrees = []
        for key in ("params", "macs"):
            row[f"{key} (measured)"] = _number(got.get(key))
            row[f"{key} (notes)"] = _number(check.notes.get(key))
            if key in check.notes:
                # The notes round ratios to two decimals (0.72); counts must match exactly.
                tol = 0.005 if check.ratio else 0.0
                agrees.append(abs(got[key] - check.notes[key]) <= tol)
        row["notes agree"] = "—" if not agrees else "yes" if all(agrees) else "**no**"
        rows.append(row)
    return rows


def _number(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:.4g}"


def profile_title(profile: str) -> str:
    """``act_std@init`` -> "act_std by layer (at initialisation)"."""
    family, _, when = profile.partition("@")
    return f"{family} by layer ({'at initialisation' if when == 'init' else 'end of training'})"


def layer_profiles(
    client: MlflowClient, by_variant: dict[str, dict[int, Run]], study: Study, profile: str
) -> dict[str, Band]:
    """Per variant, the seed band of a diagnostics family layer by layer (input to output) at
    the end of training (``act_std``) or at step 0 (``act_std@init``), from each run's
    ``diagnostics/layers.json``. Runs without it (no diagnostics callback) are skipped."""
    family, _, when = profile.partition("@")
    snapshot = "init" if when == "init" else "end"
    bands = {}
    for name in study.variants:
        curves = {}
        for seed, run in by_variant.get(name, {}).items():
            layers = run_layers(client, run.info.run_id)
            # {layer: value} in the model's order, input to output
            values = list((layers or {}).get(snapshot, {}).get(family, {}).values())
            if values:
                curves[seed] = (list(range(len(values))), values)
        if curves:
            bands[name] = stats.seed_band(curves)
    return bands


def run_layers(client: MlflowClient, run_id: str) -> dict | None:
    """A run's ``diagnostics/layers.json`` (the diagnostics callback's per-layer summary)."""
    import json

    try:
        path = client.download_artifacts(run_id, "diagnostics/layers.json")
    except Exception:  # no diagnostics callback in this run
        return None
    with open(path) as f:
        return json.load(f)


def choose_runs(children: Iterable[Run]) -> tuple[dict[str, dict[int, Run]], list[LeftOut]]:
    """``{variant: {seed: run}}`` of the runs that give values, and the runs left out
    (:func:`left_out_reason`). Of the used runs of one variant and seed the latest wins (a
    rerun); a left-out run never replaces a used one, whichever started later."""
    grouped: dict[str, dict[int, Run]] = {}
    unused: list[tuple[str, int, Run, str]] = []
    for run in sorted(children, key=lambda r: r.info.start_time or 0):
        variant, seed = run_variant(run), run_seed(run)
        if variant is None or seed is None or run_tuning(run) is not None:
            continue  # not a job of the comparison (no variant, or a tuning run)
        reason = left_out_reason(run)
        if reason is None:
            grouped.setdefault(variant, {})[seed] = run
        else:
            unused.append((variant, seed, run, reason))
    left_out = [
        LeftOut(variant, seed, run.info.run_id, run.info.status, reason, used.info.run_id)
        if (used := grouped.get(variant, {}).get(seed))
        else LeftOut(variant, seed, run.info.run_id, run.info.status, reason)
        for variant, seed, run, reason in unused
    ]
    return grouped, left_out


def run_variant(run: Run) -> str | None:
    """A child's variant: its ``variant`` param, else the sweep's ``factor.variant`` tag (a job
    killed before it logged its params)."""
    variant = run.data.params.get("variant") or run.data.tags.get("factor.variant")
    return None if variant in (None, "", "None") else variant


def run_tuning(run: Run) -> str | None:
    """The grid point a run of a study's tuning stage tried (its ``tuning`` param, else the
    sweep's ``factor.tuning`` tag), or None for a run of the comparison."""
    point = run.data.params.get("tuning") or run.data.tags.get("factor.tuning")
    return None if point in (None, "", "None") else point


def tuning_table(
    client: MlflowClient, study: Study, children: Iterable[Run]
) -> dict[str, dict[str, dict[int, float]]]:
    """``{variant: {grid point: {tuning seed: score}}}`` of the finished tuning runs: the
    study's ``tune.stat`` of ``tune.metric``, a validation metric (:func:`ablab.study._tune`):
    nothing else of the runs is read. A seed tried twice at a point keeps its newest run."""
    tune = study.tune
    if tune is None:
        return {}
    quantity = Quantity(tune.metric, tune.stat, mode=tune.mode)
    scores: dict[str, dict[str, dict[int, float]]] = {
        v: {Tune.label(p): {} for p in tune.points()} for v in study.tuned_variants
    }
    for run in sorted(children, key=lambda r: r.info.start_time or 0):
        point, variant, seed = run_tuning(run), run_variant(run), run_seed(run)
        if point is None or seed is None or left_out_reason(run) is not None:
            continue
        if variant in scores and point in scores[variant]:
            # a run that diverged never scores: its best value before the blow-up would make
            # an unstable point win (NaN excludes the point, whatever its other seeds did)
            diverged = run.data.tags.get("failure") == "nonfinite_loss"
            value = float("nan") if diverged else quantity_value(client, run, quantity)
            scores[variant][point][seed] = value
    return scores


def tuning_scores(
    client: MlflowClient, study: Study, children: Iterable[Run]
) -> dict[str, dict[str, list[float]]]:
    """``{variant: {grid point: [score per tuning seed]}}`` (:func:`tuning_table`)."""
    return {
        variant: {point: [s for _, s in sorted(seeded.items())] for point, seeded in points.items()}
        for variant, points in tuning_table(client, study, children).items()
    }


#: The key, beside a ``tuning_width`` quantity's name in a variant's values, of the tuning seeds
#: whose range reached an end of the grid (value 1.0): their widths are lower bounds.
AT_GRID_END = " (at the grid's end)"


def tuning_widths(
    study: Study, quantity: Quantity, table: Mapping[str, Mapping[str, Mapping[int, float]]]
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """``{variant: {tuning seed: width}}`` of a ``tuning_width`` quantity, and ``{variant:
    {tuning seed: 1.0}}`` for the widths whose range reached an end of the grid (a lower bound:
    the arm might stay within x beyond it).

    On each tuning seed: the width in decades (log10 max − log10 min) of the contiguous run of
    grid values of ``quantity.metric``, around the seed's best, whose scores (each the best over
    the grid's other keys at that value) are within ``quantity.within`` of the best; 0 when
    only the best value is. A diverged point (NaN) is never within, and a value out of reach
    ends the range (a rate that trains again beyond one that fails is not a tolerated rate). A
    seed with a grid value no finished run scored (killed, not yet run) has no width (NaN): a
    missing run is not a failed one."""
    tune = study.tune
    assert tune is not None and quantity.within is not None
    sign = 1.0 if tune.mode == "max" else -1.0
    points = {Tune.label(p): p for p in tune.points()}
    grid = sorted({float(v) for v in tune.grid[quantity.metric]})
    widths: dict[str, dict[int, float]] = {}
    edges: dict[str, dict[int, float]] = {}
    for variant, by_point in table.items():
        seeds = sorted({s for seeded in by_point.values() for s in seeded})
        widths[variant], edges[variant] = {}, {}
        for seed in seeds:
            at: dict[float, float] = {}  # grid value -> best signed score there (-inf: diverged)
            for label, seeded in by_point.items():
                if seed not in seeded:
                    continue
                value = float(points[label][quantity.metric])
                score = sign * seeded[seed]
                at[value] = max(at.get(value, -np.inf), score if np.isfinite(score) else -np.inf)
            scores = [at.get(v, np.nan) for v in grid]
            if np.isnan(scores).any() or not np.isfinite(scores).any():
                widths[variant][seed] = float("nan")
                continue
            best = int(np.argmax(scores))
            low = high = best
            while low > 0 and scores[low - 1] >= scores[best] - quantity.within:
                low -= 1
            while high < len(grid) - 1 and scores[high + 1] >= scores[best] - quantity.within:
                high += 1
            widths[variant][seed] = float(np.log10(grid[high]) - np.log10(grid[low]))
            if low == 0 or high == len(grid) - 1:
                edges[variant][seed] = 1.0
    return widths, edges


def choose_points(
    study: Study, scores: Mapping[str, Mapping[str, Sequence[float]]]
) -> dict[str, dict]:
    """Each variant's grid point with the best mean score (ties: the first in grid order);
    raises ConfigError for a variant without a finished, finite tuning run."""
    if study.tune is None:
        return {}
    points = {Tune.label(p): p for p in study.tune.points()}
    sign = 1.0 if study.tune.mode == "max" else -1.0
    chosen = {}
    for variant in study.tuned_variants:
        means = {
            label: float(np.mean(values))
            for label, values in scores.get(variant, {}).items()
            if values and np.isfinite(values).all()
        }
        if not means:
            raise ConfigError(
                f"variant {variant} of study {study.name} has no finished tuning run with a "
                f"finite {study.tune.metric}; run the study's command again to finish them"
            )
        best = max(means, key=lambda label: sign * means[label])
        chosen[variant] = points[best]
    return chosen


def run_seed(run: Run) -> int | None:
    """A child's seed: its ``seed`` param, else the sweep's ``factor.seed`` tag."""
    seed = run.data.params.get("seed") or run.data.tags.get("factor.seed")
    try:
        return int(seed)
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def _history(client: MlflowClient, run_id: str, metric: str) -> tuple[tuple[int, float], ...]:
    history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
    return tuple((m.step, m.value) for m in history)


def metric_curve(client: MlflowClient, run: Run, metric: str) -> tuple[list[int], list[float]]:
    """A run's (steps, values) of ``metric`` in step order (fetched once per report)."""
    history = _history(client, run.info.run_id, metric)
    return [s for s, _ in history], [v for _, v in history]


def study_overrides(study: Study, variant: str) -> dict[str, str]:
    return {k: str(v) for k, v in study.variants[variant].items()}


#: What each seed stream of a run seeds (conf/train.yaml ``seeds.*``), by its param, the first
#: one a run logged: the split's is ``data.seed``, what the data module receives (``seeds.split``
#: by default; a run may also set it directly).
VARIANCE_SOURCES = {
    "data split": ("data.seed", "seeds.split"),
    "data order": ("seeds.data",),
    "initialisation": ("seeds.init",),
    "augmentation draws": ("seeds.augmentation",),
}


def variance_sources(by_variant: Mapping[str, Mapping[int, Run]]) -> dict[str, bool]:
    """Whether each source of variance differed across the seeds of a variant (Bouthillier et
    al. 2021, "Accounting for variance in machine learning benchmarks", MLSys: randomise every
    source): True when some variant's runs had more than one value of its seed param. Sources
    no run logged are left out."""
    out: dict[str, bool] = {}
    for source, params in VARIANCE_SOURCES.items():
        seen = False
        for runs in by_variant.values():
            values = {next((r.data.params[p] for p in params if p in r.data.params), None)
                      for r in runs.values()} - {None}  # fmt: skip
            seen = seen or bool(values)
            if len(values) > 1:
                out[source] = True
                break
        else:
            if seen:
                out[source] = False
    return out


def machine_text(tags: Mapping[str, str], children: Sequence[Run]) -> str:
    """What the study ran on, from the parent's tags and its runs' thread params: CPU model and
    cores, torch threads per run, GPU, Python and library versions, git commit; no host name.
    A parent older than these tags gives its commit alone."""
    commit = f"git {tags.get('git_commit', '?')[:10]}"
    if "hw.cpu" not in tags:
        return commit
    threads = sorted(
        {r.data.params["runtime.torch_threads"] for r in children
         if "runtime.torch_threads" in r.data.params},
        key=int,
    )  # fmt: skip
    libraries = ", ".join(
        f"{name} {tags[f'lib.{dist}']}"
        for dist, name in (("torch", "torch"), ("pytorch-lightning", "Lightning"),
                           ("torchmetrics", "torchmetrics"), ("mlflow", "MLflow"))
        if f"lib.{dist}" in tags
    )  # fmt: skip
    return (
        f"{tags['hw.cpu']}, {tags.get('hw.cores', '?')} cores"
        + (f", {'/'.join(threads)} torch thread(s) per run" if threads else "")
        + f"; GPU: {tags.get('hw.gpu', 'none')}; Python {tags.get('python', '?')}, {libraries}; "
        + commit
    )


def study_command(client: MlflowClient, parent: Run) -> str:
    """The sweep's command line, as the parent run recorded it (its latest attempt's), with the
    interpreter shown as ``python``: a machine's venv path makes no command for another one."""
    try:
        recorded = [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")]
        names = sorted((p for p in recorded if p.startswith("sweep/command")), key=_attempt)
        if not names:  # an older parent without it: the report still stands
            return ""
        path = client.download_artifacts(parent.info.run_id, names[-1])
    except Exception:
        return ""
    with open(path) as f:
        command = f.read().strip()
    first, _, rest = command.partition(" ")
    return f"python {rest}" if Path(first).name.startswith("python") and rest else command


def _attempt(path: str) -> int:
    """``sweep/command-3.txt`` -> 3 (``sweep/command.txt``, before attempts were kept: 0)."""
    stem = Path(path).stem
    return int(stem.rpartition("-")[2]) if stem.rpartition("-")[2].isdigit() else 0


def metric_key(*parts: str) -> str:
    """An MLflow metric name from free text ("steps to val/acc >= 0.9" -> "steps_to_val/acc_0.9")."""
    text = "/".join(parts)
    return (
        re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_/.\- ]", "_", text)).replace(" ", "_").strip("_/")
    )


def publish(client: MlflowClient, report: StudyReport, paths: dict[str, Path]) -> None:
    """Log the written report as artifacts of the study's parent run (``report/``), per
    variant and quantity the mean and CI bounds as parent metrics, so MLflow's own views line
    the variants up, and the verdict table as the parent's description (``mlflow.note.content``,
    the Markdown MLflow's run page shows first)."""
    from mlflow.entities import Metric

    from ablab.analysis.render import note_markdown

    run_id = report.parent_run_id
    client.set_tag(run_id, "mlflow.note.content", note_markdown(report))
    for path in paths.values():
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"report/{path.name}")
        else:
            client.log_artifact(run_id, str(path), "report")
    metrics = [
        Metric(metric_key("summary", v.name, quantity, stat), value, 0, 0)
        for v in report.variants
        for quantity, summary in v.summaries.items()
        for stat, value in (
            ("mean", summary.mean),
            ("ci_low", summary.ci_low),
            ("ci_high", summary.ci_high),
        )
        if value == value  # MLflow stores NaN, but the compare view cannot sort it
    ]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    for verdict in report.verdicts:
        client.set_tag(
            run_id, metric_key("verdict", verdict.variant, verdict.quantity), verdict.outcome
        )


#: MLflow's limit on a tag value (characters).
TAG_LIMIT = 5000


def record_rounds(client: MlflowClient, report: StudyReport) -> None:
    """Each look of a sequential study as a tag of its parent run, ``round.<k>``: its seeds,
    its level and every claim's outcome at that look; ``sequential.rounds_run`` counts them.
    Tags, not metrics: writing the report again rewrites them instead of adding history."""
    if not report.rounds:
        return
    names = [f"{v.variant} {v.quantity} {v.expected}" for v in report.verdicts]
    for r in report.rounds:
        outcomes = "; ".join(f"{n}: {o}" for n, o in zip(names, r.outcomes, strict=True))
        text = (f"n = {r.n} seeds ({', '.join(map(str, r.seeds))}), α = {r.alpha:.3g}; "
                f"{r.decided} of {len(names)} claims decided; {outcomes}")  # fmt: skip
        client.set_tag(report.parent_run_id, f"round.{r.look}", text[:TAG_LIMIT])
    client.set_tag(report.parent_run_id, "sequential.rounds_run", str(len(report.rounds)))
