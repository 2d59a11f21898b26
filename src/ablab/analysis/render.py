"""A :class:`StudyReport` as a reader sees it: learning-curve figures, a GitHub Markdown page
(``RESULTS.md``, its PNGs in ``RESULTS_files/``) and one self-contained HTML page
(``RESULTS.html``: PNGs inline as base64 data URIs, inline CSS, no scripts, nothing fetched).

Both pages are rendered from the same formatted tables (:func:`report_tables`), so they say the
same thing; the runs the report left out (unfinished) get a table of their own there and one
line on the terminal (:func:`left_out_line`). Numbers keep 4 significant digits; p-values 2
(below 1e-4 as ``<1e-4``); an undefined value (NaN: too few seeds, a diverged run) is an em
dash, never a silent 0 or a gap.
The HTML goes through Jinja2 with autoescaping, so run names or claims cannot inject markup.
Figures use matplotlib's object API (``Figure``, saved through the Agg canvas), which leaves
pyplot's global figure list untouched.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import jinja2
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ablab.analysis.results import GRID_TEST, STATED_TEST, Band, StudyReport

#: What an undefined number (NaN) shows as.
DASH = "—"
#: marks a per-seed value the study stated rather than measured (a diverged run)
STATED = "†"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: CSS class of each verdict outcome (the class selectors colour the verdict cells).
OUTCOME_CLASS = {"holds": "holds", "does not hold": "does-not-hold", "inconclusive": "inconclusive"}


# --- numbers -----------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    """4 significant digits; no exponent between 1e-4 and 1e15 (a step count 12345 shows as
    12350, not 1.234e+04); NaN as an em dash, infinities as ∞ and -∞."""
    if x is None or math.isnan(x):
        return DASH
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    text = f"{x:.4g}"
    if "e+" in text and abs(x) < 1e15:
        text = f"{float(text):.0f}"
    return text


def fmt_signed(x: float) -> str:
    """:func:`fmt` with an explicit sign for positive values (differences)."""
    text = fmt(x)
    return "+" + text if x > 0 else text


def fmt_p(p: float) -> str:
    """A p-value to 2 significant digits (0.0032, 0.045, 1); below 1e-4 as ``<1e-4``."""
    if math.isnan(p):
        return DASH
    if p < 1e-4:
        return "<1e-4"
    return f"{p:.2g}"


def fmt_interval(low: float, high: float) -> str:
    """``[low, high]``; an em dash when both bounds are undefined."""
    if math.isnan(low) and math.isnan(high):
        return DASH
    return f"[{fmt(low)}, {fmt(high)}]"


# --- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FigureRef:
    """One figure of a report: its file-safe name, which section it is in and what it plots."""

    name: str
    section: str  # "forest" | "curves" | "diagnostics"
    metric: str
    alt: str


def figure_refs(report: StudyReport) -> list[FigureRef]:
    """The report's figures in page order: ``curve_<metric>`` per learning-curve metric, then
    ``diag_<metric>`` per diagnostic (``diag/act_std/stem.conv`` -> ``diag_act_std_stem.conv``).
    Names keep only ``[A-Za-z0-9._-]`` and are unique (a clash gets ``_2``, ``_3``…)."""
    refs: list[FigureRef] = []
    taken: set[str] = {"forest", "tuning"}
    if report.tuning:
        refs.append(FigureRef("tuning", "tuning", "", (
            "tuning: each variant's mean validation score at every grid point, the chosen "
            "point starred"
        )))  # fmt: skip
    if report.verdicts:
        quantities = list(dict.fromkeys(v.quantity for v in report.verdicts))
        refs.append(FigureRef("forest", "forest", "", (
            f"forest plot: each claim's mean paired difference with its CI, one axis per "
            f"quantity ({', '.join(quantities)}), coloured by verdict"
        )))  # fmt: skip
    for section, prefix, metrics in (
        ("curves", "curve", report.curves),
        ("diagnostics", "diag", report.diagnostics),
    ):
        for metric, bands in metrics.items():
            base = prefix + "_" + (_safe(metric.removeprefix("diag/")) or "metric")
            name, i = base, 1
            while name in taken:
                i += 1
                name = f"{base}_{i}"
            taken.add(name)
            xlabel = "training step" if section == "curves" else PROFILE_X
            alt = _alt(metric, bands, report.baseline, xlabel)
            refs.append(FigureRef(name, section, metric, alt))
    return refs


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")


def _seed_count(bands: Mapping[str, Band]) -> str:
    counts = sorted({b.n_seeds for b in bands.values() if b.steps})
    if not counts:
        return "no seeds"
    low, high = counts[0], counts[-1]
    return f"{low} seed{'s' * (high != 1)}" if low == high else f"{low}–{high} seeds"


def _alt(metric: str, bands: Mapping[str, Band], baseline: str, xlabel: str = "step") -> str:
    names = ", ".join(f"{n} (baseline)" if n == baseline else n for n in bands)
    return (
        f"{metric} against {xlabel} for {names}: mean over {_seed_count(bands)}, "
        "shaded band = confidence interval of the mean"
    )


def plot_curves(
    bands: Mapping[str, Band],
    metric: str,
    baseline: str | None = None,
    *,
    variants: Sequence[str] | None = None,
    xlabel: str = "step",
) -> Figure:
    """One line per variant (the mean over seeds at each step) with its seed band shaded
    (``low``..``high``); the baseline first, in black and thicker, on top of the others.

    ``variants`` (the study's variant order) fixes each variant's colour, so a variant has the
    same colour in every figure of a report. The y axis is logarithmic when every mean is
    positive and the means span more than three decades (losses, gradient norms), even where
    a band's lower end is at or below zero.
    """
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    others = [n for n in (variants or bands) if n != baseline]
    others += [n for n in bands if n not in others and n != baseline]
    colour = {name: f"C{i % 10}" for i, name in enumerate(others)}
    order = ([baseline] if baseline in bands else []) + [n for n in others if n in bands]
    means: list[float] = []  # the lines decide the scale; a band's CI may cross zero
    for name in order:
        band = bands[name]
        if not band.steps:
            continue
        is_base = name == baseline
        c = "black" if is_base else colour[name]
        # The baseline's line sits above every band so it stays visible where they overlap.
        ax.fill_between(band.steps, band.low, band.high, color=c, alpha=0.18, linewidth=0, zorder=1)
        label = f"{name} (baseline)" if is_base else name
        width, z = (2.2, 3) if is_base else (1.5, 2)
        ax.plot(band.steps, band.mean, color=c, linewidth=width, label=label, zorder=z)
        means += [v for v in band.mean if math.isfinite(v)]
    if not means:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    elif min(means) > 0 and max(means) / min(means) > 1e3:
        # A band reaching below zero (the CI of a mean over few, widely spread seeds) is
        # clipped at the axis' floor rather than making the whole figure linear.
        ax.set_yscale("log", nonpositive="clip")
        ax.set_ylim(bottom=min(means) / 3)  # not down to the clip floor of such a band
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean over {_seed_count(bands)}, band = CI of the mean")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return fig


#: Verdict colours of the forest plot.
OUTCOME_COLOURS = {"holds": "tab:green", "does not hold": "tab:red", "inconclusive": "tab:gray"}


def plot_forest(report: StudyReport) -> Figure:
    """Every claim's comparison on one axis per quantity: the mean paired difference (variant −
    baseline, or − the variant it is claimed against) as a point, its CI as a bar, coloured by
    the verdict, with the claimed direction beside the name and a line at zero. A comparison
    whose difference is undefined (a run diverged, too few seeds) is listed without a point."""
    quantities = list(dict.fromkeys(v.quantity for v in report.verdicts))
    by_key = {(c.variant, c.quantity, c.against): c for c in report.comparisons}
    rows = {q: [v for v in report.verdicts if v.quantity == q] for q in quantities}
    height = 0.9 + sum(0.45 * len(r) + 0.6 for r in rows.values())
    fig = Figure(figsize=(7.0, height), layout="constrained")
    axes = fig.subplots(len(quantities), 1, squeeze=False)[:, 0]
    for ax, q in zip(axes, quantities, strict=True):
        labels = []
        for y, v in enumerate(reversed(rows[q])):
            c = by_key.get((v.variant, v.quantity, v.against))
            name = f"{v.variant} vs {v.against}" if v.against else v.variant
            labels.append(f"{name} ({v.expected})")
            colour = OUTCOME_COLOURS[v.outcome]
            if c is None or not math.isfinite(c.diff_mean):
                ax.text(0, y, "  undefined", va="center", color=colour, fontsize="small")
                continue
            low, high = c.ci_low, c.ci_high
            if math.isfinite(low) and math.isfinite(high):
                ax.plot([low, high], [y, y], color=colour, linewidth=2.5, solid_capstyle="butt")
            ax.plot([c.diff_mean], [y], "o", color=colour, markersize=6)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_xlabel(f"difference in {q} (vs {report.baseline} unless named)")
        ax.grid(axis="x", alpha=0.3)
    handles = [
        Line2D([], [], color=c, marker="o", linewidth=2.5, label=o)
        for o, c in OUTCOME_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="outside upper center", ncols=3, fontsize="small")
    return fig


def plot_tuning(report: StudyReport) -> Figure:
    """Each variant's mean selection score over the tuning grid, one line per variant, its
    chosen point starred. A grid over one numeric key is drawn against its values (log axis
    when they span a factor of 10 or more, as learning rates do); any other grid against its
    points in order."""
    order = [v.name for v in report.variants]
    labels = list(dict.fromkeys(label for scores in report.tuning.values() for label in scores))
    keys = {label.split("=", 1)[0] for label in labels}
    try:
        xs = [float(label.split("=", 1)[1]) for label in labels] if len(keys) == 1 else None
    except ValueError:
        xs = None
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    positions = xs if xs is not None else list(range(len(labels)))
    for i, (variant, scores) in enumerate(
        sorted(report.tuning.items(), key=lambda kv: _rank(order, kv[0]))
    ):
        colour = f"C{_rank(order, variant) % 10 if variant in order else i % 10}"
        ys = [scores.get(label, math.nan) for label in labels]
        ax.plot(positions, ys, "o-", color=colour, label=variant)
        if (chosen := report.tuned.get(variant)) in labels:
            k = labels.index(chosen)
            ax.plot([positions[k]], [ys[k]], "*", color=colour, markersize=16)
    if xs is not None:
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(next(iter(keys)))
    else:
        ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize="small")
        ax.set_xlabel("grid point")
    ax.set_ylabel("validation score (mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


#: x axis of the diagnostics figures: per-layer profiles (ablab.analysis.collect).
PROFILE_X = "layer (input to output)"


def figures(report: StudyReport) -> dict[str, Figure]:
    """A figure per learning-curve metric and per diagnostic metric, keyed by the names of
    :func:`figure_refs`."""
    order = [v.name for v in report.variants]
    out: dict[str, Figure] = {}
    for ref in figure_refs(report):
        if ref.section == "forest":
            out[ref.name] = plot_forest(report)
            continue
        if ref.section == "tuning":
            out[ref.name] = plot_tuning(report)
            continue
        bands = (report.curves if ref.section == "curves" else report.diagnostics)[ref.metric]
        # Study order, so the baseline and every variant keep their colour across figures.
        ranked = dict(sorted(bands.items(), key=lambda kv: _rank(order, kv[0])))
        xlabel = "step" if ref.section == "curves" else PROFILE_X
        out[ref.name] = plot_curves(
            ranked, ref.metric, report.baseline, variants=order, xlabel=xlabel
        )
    return out


def _rank(order: Sequence[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG, rendered by the Agg canvas."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


# --- tables --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A table with every cell already formatted; ``kind`` is its HTML class, ``numeric`` the
    columns aligned right, ``row_classes`` one HTML class per row (may be empty)."""

    kind: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    title: str = ""
    note: str = ""
    numeric: frozenset[int] = frozenset()
    row_classes: tuple[str, ...] = ()
    data: tuple[tuple[str, str], ...] = ()  # extra data-* attributes of the HTML table


@dataclass(frozen=True)
class ReportTables:
    """Every table of a report, in page order."""

    verdicts: Table
    variants: Table
    summaries: tuple[Table, ...]
    comparisons: Table
    measured: tuple[Table, ...]
    left_out: Table
    #: a sequential study's looks (:func:`rounds_table`); None for a study of fixed size
    rounds: Table | None = None
    #: a study that tunes: each variant's score at each grid point (:func:`tuning_table`)
    tuning: Table | None = None


#: What the table of left-out runs means (under its heading on both pages).
LEFT_OUT_NOTE = (
    "Runs that give no value to this report: not finished (still running, killed, failed other "
    "than by diverging) or never started. A seed missing on either side of a comparison is "
    "left out of it; a verdict that lost seeds this way says so."
)


#: The comparisons table's short name of each test (:func:`ablab.analysis.stats.paired`).
TEST_LABELS = {
    "paired t-test": "t",
    "sign-flip permutation test, BCa bootstrap CI": "permutation, BCa",
    STATED_TEST: "stated",
    GRID_TEST: "tuning grid",
}


def report_tables(report: StudyReport) -> ReportTables:
    """The formatted tables both pages show."""
    base = report.baseline

    def label(name: str) -> str:
        return f"{name} (baseline)" if name == base else name

    scale = f"at this scale: {report.scale}" if report.scale else DASH
    verdicts = Table(
        "verdicts",
        ("claim", "variant", "quantity", "expected", "verdict", "reason", "measured"),
        tuple(
            (
                v.claim,
                v.variant,
                v.quantity,
                (
                    f"same as {v.against or base}"
                    if v.expected == "same"
                    else f"{v.expected} than {v.against or base}"
                ),
                v.outcome,
                v.reason,
                scale,
            )
            for v in report.verdicts
        ),
        row_classes=tuple(OUTCOME_CLASS.get(v.outcome, "") for v in report.verdicts),
    )
    variants = Table(
        "variants",
        ("variant", "overrides", "seeds"),
        tuple(
            (
                label(v.name),
                overrides_as_run(v.overrides, report.tuned.get(v.name, "")) or DASH,
                ", ".join(map(str, sorted(v.run_ids))) or DASH,
            )
            for v in report.variants
        ),
        row_classes=tuple("baseline" if v.name == base else "" for v in report.variants),
    )
    quantities = list(dict.fromkeys(q for v in report.variants for q in v.summaries))
    summaries = []
    for q in quantities:
        present = [v for v in report.variants if q in v.summaries]
        confidence = present[0].summaries[q].confidence
        rows = []
        for v in present:
            s = v.summaries[q]
            rows.append(
                (
                    label(v.name),
                    f"{fmt(s.mean)} ± {fmt(s.std)}",
                    fmt_interval(s.ci_low, s.ci_high),
                    str(s.n),
                    ", ".join(
                        (f">{fmt(x - 1)}" if i in s.censored else fmt(x))
                        + (STATED if i in s.stated else "")
                        for i, x in enumerate(s.values)
                    )
                    or DASH,
                )
            )
        summaries.append(
            Table(
                "summary",
                ("variant", "mean ± std", f"{confidence * 100:g}% CI", "n", "per seed"),
                tuple(rows),
                title=q,
                note=" ".join(
                    text
                    for text, shown in (
                        (
                            f"{STATED} a diverged run (stopped by the non-finite loss guard), "
                            "counted as the value the study states for it, not measured.",
                            any(v.summaries[q].stated for v in present),
                        ),
                        (
                            ">N: a run that never reached the threshold within the N steps the "
                            "study's runs logged (censored: counted as N + 1, not measured); "
                            + ", ".join(
                                f"{v.name} {v.summaries[q].n - len(v.summaries[q].censored)} of "
                                f"{v.summaries[q].n} reached it"
                                for v in present
                            )
                            + ".",
                            any(v.summaries[q].censored for v in present),
                        ),
                    )
                    if shown
                ),
                numeric=frozenset({1, 2, 3}),
                row_classes=tuple("baseline" if v.name == base else "" for v in present),
                data=(("quantity", q),),
            )
        )
    tests = sorted({c.test for c in report.comparisons})
    comparisons = Table(
        "comparisons",
        (
            "variant",
            "quantity",
            "diff",
            "CI",
            "p",
            "p Holm",
            "test",
            "d_z",
            "P(v > b)",
            "normality p",
            "MDE 80%",
            "seeds for 80%",
            "seeds",
        ),
        tuple(
            (
                f"{c.variant} vs {c.against}" if c.against else c.variant,
                c.quantity,
                fmt_signed(c.diff_mean),
                fmt_interval(c.ci_low, c.ci_high),
                fmt_p(c.p_value),
                fmt_p(c.p_holm),
                TEST_LABELS.get(c.test, "t"),
                fmt(c.effect_size),
                fmt(c.prob_improvement),
                fmt_p(c.normality_p),
                fmt(c.mde),
                fmt(c.seeds_for_power),
                ", ".join(map(str, c.seeds)) or DASH,
            )
            for c in report.comparisons
        ),
        note=(
            f"diff = variant − {base} (or − the variant after 'vs'), paired by seed; CI of the mean difference; "
            f"p: {', '.join(tests) or 'paired test'}, two-sided; p Holm: Holm-corrected over "
            "the claimed comparisons (— outside that family); test: the paired t-test (t), or "
            "from 6 seeds on, when Shapiro–Wilk rejects normal differences (normality p < "
            "0.05), the sign-flip permutation test with a BCa bootstrap CI; stated: a "
            "deterministic quantity (each side the same on every seed), its difference stated, "
            "not tested (no p); d_z = mean "
            "difference / std of the differences; P(v > b): share of seeds where the variant "
            "beats the baseline (ties ½); MDE 80%: the smallest |diff| the paired t-test "
            "detects with 80% power at these seeds; seeds for 80%: seeds it needs to detect the "
            "observed d_z."
        ),
        numeric=frozenset({2, 3, 4, 5, 7, 8, 9, 10, 11}),
    )
    measured = []
    for title, rows in report.tables.items():
        columns = tuple(dict.fromkeys(k for row in rows for k in row))
        measured.append(
            Table(
                "measured",
                columns,
                tuple(tuple(str(row.get(c, DASH)) for c in columns) for row in rows),
                title=title,
                data=(("title", title),),
            )
        )
    left_out = Table(
        "left-out",
        ("variant", "seed", "run", "status", "why left out", "used instead"),
        tuple(
            (
                e.variant,
                str(e.seed),
                e.run_id or DASH,
                e.status or DASH,
                e.reason,
                e.used_instead or DASH,
            )
            for e in report.left_out
        ),
        note=LEFT_OUT_NOTE,
        numeric=frozenset({1}),
    )
    return ReportTables(
        verdicts,
        variants,
        tuple(summaries),
        comparisons,
        tuple(measured),
        left_out,
        rounds_table(report) if report.rounds else None,
        tuning_table(report) if report.tuning else None,
    )


def tuning_table(report: StudyReport) -> Table:
    """One row per variant: its mean selection score at each grid point over the tuning seeds,
    the chosen point marked, and the point it was compared at."""
    labels = list(dict.fromkeys(label for scores in report.tuning.values() for label in scores))
    rows = []
    for variant, scores in report.tuning.items():
        chosen = report.tuned.get(variant, "")
        cells = [
            fmt(scores.get(label, math.nan)) + (" ✓" if label == chosen else "") for label in labels
        ]
        # a single setting's best at either end of its grid may lie beyond it
        edge = len(labels) > 1 and "," not in chosen and chosen in (labels[0], labels[-1])
        rows.append((variant, *cells, (chosen + " (the grid's end)" * edge) or "not yet chosen"))
    return Table(
        "tuning",
        ("variant", *labels, "compared at"),
        tuple(rows),
        note=(
            "Each variant tried every grid point on the tuning seeds (runs apart from the "
            "comparison's); the score is the mean of the selection metric, a validation metric "
            "(the test set is never read to choose); ✓ the point each variant was then compared at; "
            "a point at the grid's end may not be the best, which could lie beyond it."
        ),
        numeric=frozenset(range(1, len(labels) + 1)),
    )


def rounds_table(report: StudyReport) -> Table:
    """One row per look of a sequential study: its seeds, the level it tests at and each
    claim's outcome there; a claim decided at an earlier look reads "decided at round r" (its
    later tests do not count), the look that decided it marks its outcome "(decided)"."""
    claims = [
        f"{v.variant}: {v.quantity} {v.expected}" + (f" than {v.against}" if v.against else "")
        for v in report.verdicts
    ]
    rows = []
    for r in report.rounds:
        cells = []
        for v, outcome in zip(report.verdicts, r.outcomes, strict=True):
            decided = v.outcome != "inconclusive"
            if decided and v.round < r.look:
                cells.append(f"decided at round {v.round}")
            else:
                cells.append(outcome + (" (decided)" if decided and v.round == r.look else ""))
        rows.append(
            (str(r.look), str(r.n), fmt_p(r.alpha), *cells, f"{r.decided} of {len(claims)}")
        )
    planned = len(report.planned_looks) or len(report.rounds)
    return Table(
        "rounds",
        ("round", "seeds", "α at this look", *claims, "decided"),
        tuple(rows),
        note=(
            f"{len(report.rounds)} of {planned} planned looks run (at "
            f"{', '.join(map(str, report.planned_looks))} seeds)."
        ),
        numeric=frozenset({0, 1, 2}),
    )


def left_out_line(report: StudyReport) -> str | None:
    """One line for the terminal naming the runs the report left out, or None when none was
    ("left out 2 runs (no final value): base seed 3 killed (process gone); …")."""
    if not report.left_out:
        return None
    n = len(report.left_out)
    runs = "; ".join(
        f"{e.variant} seed {e.seed} {e.reason}"
        + (", a rerun used instead" if e.used_instead else "")
        for e in report.left_out
    )
    return f"left out {n} run{'s' * (n != 1)} (no final value): {runs}"


def _footer(report: StudyReport) -> tuple[str, str]:
    """(parent run id, tracking URI without a password) for the "generated by" line; a local
    sqlite store is named by its file alone (a committed page shows no machine's paths)."""
    parts = urlsplit(report.tracking_uri)
    uri = report.tracking_uri
    if uri.startswith("sqlite:///"):
        return report.parent_run_id, f"sqlite:///{Path(uri.removeprefix('sqlite:///')).name}"
    if parts.password is not None:  # a URI with credentials must not end up in a committed page
        host = parts.hostname or ""
        netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
        uri = urlunsplit(parts._replace(netloc=netloc))
    return report.parent_run_id, uri


# --- Markdown ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    align = ["---:" if i in table.numeric else "---" for i in range(len(table.columns))]
    lines = [
        "| " + " | ".join(_md_cell(c) for c in table.columns) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if not table.rows:
        lines = ["_none_"]
    return [*lines, ""]


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def to_markdown(report: StudyReport, images: Mapping[str, str]) -> str:
    """The report as GitHub Markdown; ``images`` maps figure names (:func:`figure_refs`) to
    paths relative to the Markdown file. Figures missing from ``images`` are left out."""
    t = report_tables(report)
    out = [f"# Study `{report.study}`", ""]
    out += [
        f"**Claim.** {report.claim or DASH}",
        "",
        f"**Question.** {report.question or DASH}",
        "",
    ]
    out += [
        f"- **Baseline:** `{report.baseline}`",
        f"- **Seeds:** {', '.join(map(str, report.seeds)) or DASH} ({len(report.seeds)})",
        f"- **Machine:** {report.machine or DASH}",
        *(
            [f"- **Varied across seeds:** {variance_text(report)}"]
            if report.variance_sources
            else []
        ),
        *([f"- **Runs left out:** {len(report.left_out)} (below)"] if report.left_out else []),
        "",
        "**Command:**",
        "",
    ]
    fence = _fence(report.command)
    out += [f"{fence}bash", report.command or "# not recorded", fence, ""]
    out += ["## Verdicts", "", *_md_table(t.verdicts)]
    for ref in _forest(report, images):  # the verdicts at a glance, right under them
        alt = ref.alt.replace("[", "(").replace("]", ")")
        out += [f"![{alt}]({quote(images[ref.name])})", ""]
    if t.rounds is not None:
        out += ["## Sequential design", "", report.design, "", _md_note(t.rounds), ""]
        out += _md_table(t.rounds)
    if report.pilots:
        out += ["## Pilot runs that shaped the design", ""]
        out += [*(f"- {_md_cell(p)}" for p in report.pilots), ""]
    if t.tuning is not None:
        out += ["## Tuning", "", _md_note(t.tuning), "", *_md_table(t.tuning)]
        if "tuning" in images:
            out += [f"![tuning: each variant's score over the grid]({quote(images['tuning'])})", ""]
    if t.left_out.rows:
        out += ["## Runs left out", "", _md_note(t.left_out), "", *_md_table(t.left_out)]
    out += ["## Variants", "", *_md_table(t.variants)]
    out += ["## Per-variant summaries", ""]
    for table in t.summaries:
        out += [f"### {table.title}", "", *_md_table(table)]
        out += [_md_note(table), ""] if table.note else []
    out += [f"## Comparisons with the baseline `{report.baseline}`", "", _md_note(t.comparisons)]
    out += ["", *_md_table(t.comparisons)]
    if t.measured:
        out += ["## Measurements", ""]
        for table in t.measured:
            out += [f"### {table.title}", "", *_md_table(table)]
    for title, refs in _figure_sections(report, images):
        out += [f"## {title}", ""]
        for ref in refs:
            alt = ref.alt.replace("[", "(").replace("]", ")")
            out += [f"![{alt}]({quote(images[ref.name])})", ""]
    out += ["---", "", _generated(report)]
    return "\n".join(out) + "\n"


def overrides_as_run(overrides: dict[str, Any], tuned: str) -> str:
    """A variant's overrides as its comparison runs ran them: a tuned key shows the grid point
    the tuning stage chose (``tuned``, e.g. ``optimizer.lr=0.1``), marked, not the declared value
    it replaced."""
    chosen = dict(item.split("=", 1) for item in tuned.split(",") if "=" in item)
    shown = {k: str(v) for k, v in overrides.items()} | chosen
    return " ".join(f"{k}={v}" + (" (tuned)" if k in chosen else "") for k, v in shown.items())


def _md_note(table: Table) -> str:
    return f"_{table.note}_" if table.note else ""


def variance_text(report: StudyReport) -> str:
    """ "data split, data order, initialisation; fixed: augmentation draws" (dropout and other
    draws follow ``seed``, which always varies)."""
    varied = [s for s, v in report.variance_sources.items() if v]
    fixed = [s for s, v in report.variance_sources.items() if not v]
    text = ", ".join(varied) or "none of the seeded sources"
    return text + (f"; fixed: {', '.join(fixed)}" if fixed else "") + " (dropout follows `seed`)"


def _forest(report: StudyReport, images: Mapping[str, object]) -> list[FigureRef]:
    """The forest plot's ref, when there is one and an image for it (shown under the verdicts,
    not among the figure sections)."""
    return [r for r in figure_refs(report) if r.section == "forest" and r.name in images]


def _figure_sections(
    report: StudyReport, images: Mapping[str, object]
) -> list[tuple[str, list[FigureRef]]]:
    refs = [r for r in figure_refs(report) if r.name in images]
    known = {r.name for r in refs}
    # the forest plot and the tuning plot are shown by their tables, not among the sections
    extra = [
        FigureRef(n, "other", n, n)
        for n in images
        if n not in known and n not in ("forest", "tuning")
    ]
    sections = [
        ("Learning curves", [r for r in refs if r.section == "curves"]),
        ("Diagnostics", [r for r in refs if r.section == "diagnostics"]),
        ("Figures", extra),
    ]
    return [(title, rs) for title, rs in sections if rs]


def _generated(report: StudyReport) -> str:
    run_id, uri = _footer(report)
    where = f" from MLflow parent run `{run_id}`" if run_id else ""
    where += f" at `{uri}`" if uri else ""
    return f"Generated by `ablab report`{where}."


# --- HTML ----------------------------------------------------------------------------------

_HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Study {{ report.study }}</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
  margin: 0; background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.7rem; margin-bottom: .4rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
pre { background: #f6f8fa; padding: .7rem 1rem; overflow-x: auto; border-radius: 6px; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .92rem; }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; vertical-align: top; text-align: left; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.baseline td:first-child { font-weight: 600; }
td.verdict { font-weight: 700; white-space: nowrap; }
tr.holds td.verdict { background: #dafbe1; color: #116329; }
tr.does-not-hold td.verdict { background: #ffebe9; color: #a40e26; }
tr.inconclusive td.verdict { background: #fff8c5; color: #7d4e00; }
p.note { color: #57606a; font-size: .88rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .88rem; }
footer { margin-top: 2.5rem; color: #57606a; font-size: .88rem; border-top: 1px solid #d0d7de;
  padding-top: .6rem; }
</style>
</head>
<body>
<main>
{% macro render_table(t, id) %}
<table{{ {"class": t.kind, "id": id}|xmlattr }}{% for k, v in t.data %} data-{{ k }}="{{ v }}"{% endfor %}>
{% if t.title %}<caption>{{ t.title }}</caption>{% endif %}
<thead><tr>{% for c in t.columns %}<th scope="col"{% if loop.index0 in t.numeric %} class="num"{% endif %}>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in t.rows %}
{% set rc = t.row_classes[loop.index0] if t.row_classes else "" %}
<tr{% if rc %} class="{{ rc }}"{% endif %}>{% for cell in row %}<td{% if loop.index0 in t.numeric %} class="num"{% elif t.kind == "verdicts" and t.columns[loop.index0] == "verdict" %} class="verdict"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% if not t.rows %}<p class="note">None.</p>{% endif %}
{% if t.note and t.kind == "summary" %}<p class="note">{{ t.note }}</p>{% endif %}
{% endmacro %}
<h1>Study <code>{{ report.study }}</code></h1>
<dl class="meta">
<dt>Claim</dt><dd>{{ report.claim or dash }}</dd>
<dt>Question</dt><dd>{{ report.question or dash }}</dd>
<dt>Baseline</dt><dd><code>{{ report.baseline }}</code></dd>
<dt>Seeds</dt><dd>{{ report.seeds|join(", ") or dash }} ({{ report.seeds|length }})</dd>
<dt>Machine</dt><dd>{{ report.machine or dash }}</dd>
{% if report.variance_sources %}<dt>Varied across seeds</dt><dd>{{ variance }}</dd>{% endif %}
{% if report.left_out %}<dt>Runs left out</dt><dd><a href="#left-out">{{ report.left_out|length }}</a></dd>{% endif %}
</dl>
<h2>Command</h2>
<pre><code>{{ report.command or "# not recorded" }}</code></pre>
<section>
<h2>Verdicts</h2>
{{ render_table(tables.verdicts, "verdicts") }}
{% for ref, uri in forest %}
<figure id="fig-{{ ref.name }}"><img src="{{ uri }}" alt="{{ ref.alt }}"></figure>
{% endfor %}
</section>
{% if tables.rounds %}
<section>
<h2>Sequential design</h2>
<p>{{ report.design }}</p>
<p class="note">{{ tables.rounds.note }}</p>
{{ render_table(tables.rounds, "rounds") }}
</section>
{% endif %}
{% if report.pilots %}
<section>
<h2>Pilot runs that shaped the design</h2>
<ul>{% for p in report.pilots %}<li>{{ p }}</li>{% endfor %}</ul>
</section>
{% endif %}
{% if tables.tuning %}
<section>
<h2>Tuning</h2>
<p class="note">{{ tables.tuning.note }}</p>
{{ render_table(tables.tuning, "tuning") }}
{% if tuning_figure %}<figure id="fig-tuning"><img src="{{ tuning_figure }}" alt="tuning: each variant's score over the grid"></figure>{% endif %}
</section>
{% endif %}
{% if tables.left_out.rows %}
<section>
<h2>Runs left out</h2>
<p class="note">{{ tables.left_out.note }}</p>
{{ render_table(tables.left_out, "left-out") }}
</section>
{% endif %}
<section>
<h2>Variants</h2>
{{ render_table(tables.variants, "variants") }}
</section>
<section>
<h2>Per-variant summaries</h2>
{% for t in tables.summaries %}
{{ render_table(t, "summary-" ~ loop.index) }}
{% endfor %}
</section>
<section>
<h2>Comparisons with the baseline <code>{{ report.baseline }}</code></h2>
<p class="note">{{ tables.comparisons.note }}</p>
{{ render_table(tables.comparisons, "comparisons") }}
</section>
{% if tables.measured %}
<section>
<h2>Measurements</h2>
{% for t in tables.measured %}
{{ render_table(t, "measured-" ~ loop.index) }}
{% endfor %}
</section>
{% endif %}
{% for title, figs in sections %}
<section>
<h2>{{ title }}</h2>
{% for ref, uri in figs %}
<figure id="fig-{{ ref.name }}">
<img src="{{ uri }}" alt="{{ ref.alt }}">
<figcaption>{{ ref.alt }}</figcaption>
</figure>
{% endfor %}
</section>
{% endfor %}
<footer>{{ generated }}</footer>
</main>
</body>
</html>
"""

_ENV = jinja2.Environment(
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
)
_TEMPLATE = _ENV.from_string(_HTML)


def to_html(report: StudyReport, images: Mapping[str, bytes]) -> str:
    """The report as one self-contained HTML page: the same content as :func:`to_markdown`,
    ``images`` (figure name -> PNG bytes) embedded as ``data:image/png;base64`` URIs.

    Tables carry classes a reader's tools can find, also when empty: ``verdicts``,
    ``variants``, ``summary`` (one per quantity, ``data-quantity``), ``comparisons``,
    ``measured`` (``data-title``); ``left-out`` only when the report left runs out. Verdict
    rows are classed ``holds``/``does-not-hold``/``inconclusive`` and coloured by them.
    """
    for name, data in images.items():
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError(f"to_html: image '{name}' is not a PNG")
    sections = [
        (title, [(r, _data_uri(images[r.name])) for r in refs])
        for title, refs in _figure_sections(report, images)
    ]
    run_id, uri = _footer(report)
    footer = Markup("Generated by <code>ablab report</code>")
    if run_id:
        footer += Markup(" from MLflow parent run <code>%s</code>") % run_id
    if uri:
        footer += Markup(" at <code>%s</code>") % uri
    return _TEMPLATE.render(
        report=report,
        tables=report_tables(report),
        sections=sections,
        forest=[(r, _data_uri(images[r.name])) for r in _forest(report, images)],
        tuning_figure=_data_uri(images["tuning"]) if "tuning" in images else "",
        variance=variance_text(report),
        generated=footer + ".",
        dash=DASH,
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- files ---------------------------------------------------------------------------------


def to_json(report: StudyReport) -> dict[str, Any]:
    """The verdicts as data, for ``ablab report --all``: study, claim, size, commit, seeds, and
    per verdict its comparison's difference, interval, p values, test and seeds (non-finite
    numbers as null)."""
    by_key = {(c.variant, c.quantity, c.against): c for c in report.comparisons}

    def num(x: float) -> float | None:
        return x if math.isfinite(x) else None

    rows = []
    for v in report.verdicts:
        c = by_key.get((v.variant, v.quantity, v.against))
        rows.append(
            {"variant": v.variant, "against": v.against, "baseline": report.baseline,
             "quantity": v.quantity, "expected": v.expected, "outcome": v.outcome,
             "reason": v.reason}
            | ({"round": v.round} if report.rounds else {})
            | ({"diff": num(c.diff_mean), "ci": [num(c.ci_low), num(c.ci_high)],
                "p": num(c.p_value), "p_holm": num(c.p_holm), "test": c.test,
                "seeds": c.seeds} if c else {})
        )  # fmt: skip
    return {
        "study": report.study, "claim": report.claim, "size": report.size,
        "scale": report.scale,
        "commit": report.commit, "seeds": report.seeds, "parent_run_id": report.parent_run_id,
        "verdicts": rows,
    } | ({"tuning": {v: {label: num(x) for label, x in scores.items()}
                     for v, scores in report.tuning.items()},
          "tuned": report.tuned} if report.tuning else {}
    ) | ({"design": report.design, "looks": report.planned_looks,
          "rounds": [{"round": r.look, "seeds": r.seeds, "alpha": r.alpha,
                      "outcomes": r.outcomes, "decided": r.decided} for r in report.rounds]}
         if report.rounds else {})  # fmt: skip


def write_report(report: StudyReport, folder: Path, stem: str = "RESULTS") -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.html``, ``<stem>.json`` (:func:`to_json`) and the figures
    as ``<stem>_files/<name>.png`` into ``folder``; returns ``{"markdown": …, "html": …,
    "json": …, "figures": <stem>_files}`` (no
    ``figures`` entry when the report has no curves). PNGs left in ``<stem>_files`` by an
    earlier report are removed first, so the folder holds exactly what the pages show."""
    if not stem or Path(stem).name != stem:
        raise ValueError(f"write_report: stem '{stem}' must be a plain file name")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pngs = {name: png_bytes(fig) for name, fig in figures(report).items()}
    files = folder / f"{stem}_files"
    for old in files.glob("*.png") if files.is_dir() else ():
        old.unlink()
    written: dict[str, Path] = {}
    if pngs:
        files.mkdir(exist_ok=True)
        for name, data in pngs.items():
            (files / f"{name}.png").write_bytes(data)
    links = {name: f"{files.name}/{name}.png" for name in pngs}
    written["markdown"] = folder / f"{stem}.md"
    written["markdown"].write_text(to_markdown(report, links), encoding="utf-8")
    written["html"] = folder / f"{stem}.html"
    written["html"].write_text(to_html(report, pngs), encoding="utf-8")
    written["json"] = folder / f"{stem}.json"
    written["json"].write_text(json.dumps(to_json(report), indent=1) + "\n", encoding="utf-8")
    if pngs:
        written["figures"] = files
    return written


# --- MLflow run description ----------------------------------------------------------------

#: Longest run tag value MLflow stores (``mlflow.utils.validation.MAX_TAG_VAL_LENGTH``).
NOTE_MAX_CHARS = 8000


def note_markdown(report: StudyReport, max_chars: int = NOTE_MAX_CHARS) -> str:
    """The parent run's description (MLflow's ``mlflow.note.content``) as Markdown: the study
    and its verdict counts, one row per verdict with the paired difference, its CI, the p that
    decided it and the seeds paired, then the claim, the question and the command. Rows that would pass ``max_chars`` are left out,
    with a line saying how many (the full tables are in the report's artifacts)."""
    expected = {i: row[3] for i, row in enumerate(report_tables(report).verdicts.rows)}
    by_key = {(c.variant, c.quantity, c.against): c for c in report.comparisons}
    rows = []
    for i, v in enumerate(report.verdicts):
        c = by_key.get((v.variant, v.quantity, v.against))
        if c is None:
            diff, p, n = DASH, DASH, DASH
        else:
            # the p the verdict was decided on (Holm's across the study's claims; TOST's for an
            # equivalence claim; none for a stated quantity)
            p_used = v.p
            diff, interval = fmt_signed(c.diff_mean), fmt_interval(c.ci_low, c.ci_high)
            diff += f" {interval}" if interval != DASH else ""
            p, n = fmt_p(p_used), str(len(c.seeds))
        variant = f"{v.variant} vs {v.against}" if v.against else v.variant
        rows.append((variant, v.quantity, expected[i], v.outcome, diff, p, n))
    table = Table(
        "verdicts",
        ("variant", "quantity", "expected", "verdict", "difference [CI]", "p", "n"),
        tuple(rows),
        numeric=frozenset({4, 5, 6}),
    )
    counts = Counter(v.outcome for v in report.verdicts)
    outcomes = ", ".join(f"{n} {o}" for o, n in counts.items()) or "no verdicts"
    size = f" ({report.size})" if report.size else ""
    # The verdicts first: MLflow's run page shows a description's first lines until "Show more".
    head = [f"**{report.study}**{size}: {outcomes}", ""]
    fence = _fence(report.command)
    tail = [
        f"_difference = variant − {report.baseline} (or − the variant after 'vs'), paired by "
        "seed, with its CI; p: the test that decided, Holm-corrected over the claims; n: "
        "seeds paired. The full report is in this run's artifacts, `report/`._",
        "",
        f"**Claim.** {report.claim or DASH}",
        "",
        f"**Question.** {report.question or DASH}",
        "",
        f"{fence}bash",
        report.command or "# not recorded",
        fence,
    ]
    lines = _md_table(table)
    while len("\n".join([*head, *lines, *tail])) > max_chars and len(lines) > 3:
        lines = [*lines[:-2], lines[-1]]  # drop the last row (the list ends with a blank)
    if (cut := len(rows) - (len(lines) - 3)) > 0 and rows:
        lines = [*lines[:-1], f"_… {cut} more verdict{'s' * (cut != 1)} in the report._", ""]
    return "\n".join([*head, *lines, *tail])[: max_chars - 1] + "\n"
