"""Report rendering on a hand-made study (3 variants x 3 seeds, one diverged run): number
formatting, figures, the Markdown and the self-contained HTML page, the written files, and the
page as a real headless Chromium renders it."""

from __future__ import annotations

import base64
import math
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from ablab.analysis.render import (
    DASH,
    OUTCOME_COLOURS,
    PNG_SIGNATURE,
    figure_refs,
    figures,
    fmt,
    fmt_p,
    note_markdown,
    plot_curves,
    png_bytes,
    to_html,
    to_markdown,
    write_report,
)
from ablab.analysis.results import (
    Band,
    Comparison,
    StudyReport,
    Summary,
    VariantResult,
    Verdict,
)
from browser import png_size

NAN = float("nan")
SEEDS = [0, 1, 2]
VARIANTS = ["bn", "no_bn", "bn_lr0.5"]
QUANTITIES = ["final val/acc", "best val/acc", "steps to val/acc >= 0.9"]
CLAIM = "1. BatchNorm speeds convergence <b>and</b> tolerates larger learning rates."


def summary(values: list[float]) -> Summary:
    """A Summary with the sample mean/std and a made-up interval (rendering only)."""
    n = len(values)
    mean = sum(values) / n
    if any(math.isnan(v) for v in values):
        return Summary(values, NAN, NAN, NAN, NAN)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(values, mean, std, mean - 2.5 * std, mean + 2.5 * std)


def band(start: float, rate: float, n_seeds: int = 3) -> Band:
    steps = list(range(0, 200, 20))
    mean = [start + (1 - start) * (1 - math.exp(-rate * s)) for s in steps]
    return Band(steps, mean, [m - 0.03 for m in mean], [m + 0.03 for m in mean], n_seeds)


def make_report(**changes) -> StudyReport:
    """Three variants x three seeds; no_bn diverged at seed 1 on the steps-to quantity."""
    per_variant = {
        "bn": {
            QUANTITIES[0]: [0.95, 0.96, 0.955],
            QUANTITIES[1]: [0.96, 0.97, 0.965],
            QUANTITIES[2]: [120.0, 140.0, 100.0],
        },
        "no_bn": {
            QUANTITIES[0]: [0.90, 0.88, 0.91],
            QUANTITIES[1]: [0.92, 0.90, 0.93],
            QUANTITIES[2]: [300.0, NAN, 280.0],
        },
        "bn_lr0.5": {
            QUANTITIES[0]: [0.93, 0.94, 0.935],
            QUANTITIES[1]: [0.95, 0.95, 0.951],
            QUANTITIES[2]: [12346.0, 11000.0, 13000.0],
        },
    }
    overrides = {"bn": {"model.norm": "bn"}, "no_bn": {"model.norm": "none"}}
    variants = [
        VariantResult(
            name,
            overrides.get(name, {"optimizer.lr": "0.5"}),
            {s: f"{name}-run-{s}" for s in SEEDS},
            {q: summary(v) for q, v in per_variant[name].items()},
        )
        for name in VARIANTS
    ]
    comparisons = [
        Comparison(
            "no_bn",
            QUANTITIES[0],
            SEEDS,
            -0.0583,
            -0.09,
            -0.027,
            0.0032,
            -4.1,
            0.0064,
            prob_improvement=0.0,
            normality_p=0.42,
            mde=0.061,
            seeds_for_power=3,
        ),
        Comparison("no_bn", QUANTITIES[2], SEEDS, NAN, NAN, NAN, NAN, NAN),
        Comparison("bn_lr0.5", QUANTITIES[0], SEEDS, -0.02, -0.05, 0.01, 3e-6, -math.inf),
    ]
    verdicts = [
        Verdict(CLAIM, "no_bn", QUANTITIES[2], "higher", "inconclusive", "a run diverged"),
        # p: what decided it (collect.judge sets it: Holm's when run, else the test's own)
        Verdict(CLAIM, "no_bn", QUANTITIES[0], "lower", "holds", "significantly | lower", p=0.0064),
        Verdict(
            CLAIM, "bn_lr0.5", QUANTITIES[0], "higher", "does not hold", "lower, not higher", p=3e-6
        ),
    ]
    curves = {
        "val/acc": {
            name: band(0.1, r) for name, r in zip(VARIANTS, (0.05, 0.01, 0.03), strict=True)
        },
        "train/loss_epoch": {
            name: band(2.3, r) for name, r in zip(VARIANTS, (0.04, 0.01, 0.02), strict=True)
        },
    }
    grad = [10.0**-k for k in range(6)]  # spans 5 decades: plotted on a log axis
    diagnostics = {
        "diag/grad_norm/stem.conv": {
            name: Band(list(range(6)), grad, [g / 2 for g in grad], [g * 2 for g in grad], 3)
            for name in VARIANTS[:2]
        }
    }
    fields = {
        "study": "bn_vs_nobn",
        "claim": CLAIM,
        "question": "Does BN reach 90% validation accuracy in fewer steps?",
        "command": "python -m ablab.train -m study=bn_vs_nobn 'variant=`x`'",
        "machine": "host-1 (git abc123)",
        "baseline": "bn",
        "seeds": SEEDS,
        "variants": variants,
        "comparisons": comparisons,
        "verdicts": verdicts,
        "curves": curves,
        "diagnostics": diagnostics,
        "parent_run_id": "0123456789abcdef0123456789abcdef",
        "tracking_uri": "sqlite:////tmp/study/mlflow.db",
        "tables": {
            "throughput": [
                {"variant": "bn", "images/s": "1234"},
                {"variant": "no_bn", "images/s": "1301", "note": "no norm layers"},
            ]
        },
    }
    return StudyReport(**{**fields, **changes})


# --- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.123456, "0.1235"),
        (0.95, "0.95"),
        (120.0, "120"),
        (12346.0, "12350"),  # 4 significant digits, no exponent
        (-0.0583, "-0.0583"),
        (2.5e-5, "2.5e-05"),
        (NAN, DASH),
        (math.inf, "∞"),
        (-math.inf, "-∞"),
    ],
)
def test_fmt(value: float, text: str) -> None:
    assert fmt(value) == text


@pytest.mark.parametrize(
    ("p", "text"),
    [(0.0032, "0.0032"), (0.04512, "0.045"), (1.0, "1"), (1e-4, "0.0001"), (3e-6, "<1e-4")],
)
def test_fmt_p(p: float, text: str) -> None:
    assert fmt_p(p) == text
    assert fmt_p(NAN) == DASH


# --- figures ------------------------------------------------------------------------------


def test_figures_one_per_metric_with_file_safe_names() -> None:
    report = make_report()
    before = plt.get_fignums()
    figs = figures(report)
    assert plt.get_fignums() == before  # object API: nothing registered with pyplot
    assert list(figs) == [
        "forest", "curve_val_acc", "curve_train_loss_epoch", "diag_grad_norm_stem.conv"
    ]  # fmt: skip
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in figs)
    assert [r.name for r in figure_refs(report)] == list(figs)

    ax = figs["curve_val_acc"].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step", "val/acc")
    assert "val/acc" in ax.get_title() and "3 seeds" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["bn (baseline)", "no_bn", "bn_lr0.5"]  # baseline first
    lines = ax.get_lines()
    assert lines[0].get_color() == "black" and lines[0].get_zorder() > lines[1].get_zorder()
    assert list(lines[1].get_xdata()) == report.curves["val/acc"]["no_bn"].steps
    assert list(lines[1].get_ydata()) == report.curves["val/acc"]["no_bn"].mean
    assert len(ax.collections) == 3  # one shaded seed band per variant
    assert ax.get_yscale() == "linear"
    assert figs["diag_grad_norm_stem.conv"].axes[0].get_yscale() == "log"


def test_forest_plot_shows_every_claim_on_its_quantitys_axis_coloured_by_verdict() -> None:
    report = make_report()
    fig = figures(report)["forest"]
    quantities = list(dict.fromkeys(v.quantity for v in report.verdicts))
    assert len(fig.axes) == len(quantities)
    by_key = {(c.variant, c.quantity): c for c in report.comparisons}
    for ax, q in zip(fig.axes, quantities, strict=True):
        claims = [v for v in report.verdicts if v.quantity == q]
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == [f"{v.variant} ({v.expected})" for v in reversed(claims)]
        points = [line for line in ax.get_lines() if line.get_marker() == "o"]
        defined = [v for v in claims if math.isfinite(by_key[(v.variant, q)].diff_mean)]
        assert len(points) == len(defined)
        for line in points:  # each point sits at its claim's mean difference, in its colour
            y = int(line.get_ydata()[0])
            v = list(reversed(claims))[y]
            assert line.get_xdata()[0] == by_key[(v.variant, q)].diff_mean
            assert line.get_color() == OUTCOME_COLOURS[v.outcome]
        assert ax.get_xlabel().startswith(f"difference in {q}")


def test_the_forest_plot_sits_under_the_verdicts() -> None:
    report = make_report()
    images = {r.name: f"RESULTS_files/{r.name}.png" for r in figure_refs(report)}
    text = to_markdown(report, images)
    verdicts_at, forest_at = text.index("## Verdicts"), text.index("RESULTS_files/forest.png")
    assert verdicts_at < forest_at < text.index("## Variants")
    assert text.count("forest.png") == 1


def test_variant_keeps_its_colour_across_figures() -> None:
    bands = make_report().curves["val/acc"]
    full = plot_curves(bands, "val/acc", "bn", variants=VARIANTS)
    partial = plot_curves({"bn_lr0.5": bands["bn_lr0.5"]}, "val/acc", "bn", variants=VARIANTS)
    colour = {line.get_label(): line.get_color() for line in full.axes[0].get_lines()}
    assert partial.axes[0].get_lines()[0].get_color() == colour["bn_lr0.5"]


def test_clashing_metric_names_get_distinct_figure_names() -> None:
    bands = make_report().curves["val/acc"]
    report = make_report(curves={"val/acc": bands, "val_acc": bands}, diagnostics={})
    names = [r.name for r in figure_refs(report)]
    assert names == ["forest", "curve_val_acc", "curve_val_acc_2"]


def test_a_log_scale_follows_the_means_even_when_a_band_crosses_zero() -> None:
    """A gradient norm of 1880 ± 1800 at one step and 1 later: the means span three decades;
    the CI of the first mean reaching below zero must not make the figure linear."""
    spiky = Band([1, 2, 3], [1880.0, 1.2, 1.0], [-150.0, 0.9, 0.8], [3900.0, 1.5, 1.2], 9)
    fig = plot_curves({"relu": spiky, "tanh": Band([1, 2, 3], [3.0] * 3, [2.0] * 3, [4.0] * 3, 9)},
                      "train/grad_norm_max")  # fmt: skip
    assert fig.axes[0].get_yscale() == "log"


def test_mixed_seed_counts_and_no_data() -> None:
    fig = plot_curves({"a": band(0.1, 0.02, 2), "b": band(0.1, 0.03, 3)}, "val/acc")
    assert "2–3 seeds" in fig.axes[0].get_title()
    empty = plot_curves({"a": Band([], [], [], [], 0)}, "val/acc")
    assert [t.get_text() for t in empty.axes[0].texts] == ["no data"]


# --- Markdown -----------------------------------------------------------------------------


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table as rows of cells (header first, alignment row dropped); an escaped
    ``\\|`` stays inside its cell."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if not all(re.fullmatch(r"-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_content() -> None:
    report = make_report(scale="data=digits, model=lenet5, 8 epochs", pilots=["a | pilot"])
    images = {r.name: f"RESULTS_files/{r.name}.png" for r in figure_refs(report)}
    text = to_markdown(report, images)
    tables = markdown_tables(text)
    headers = [t[0] for t in tables]
    verdicts = tables[
        headers.index(["claim", "variant", "quantity", "expected", "verdict", "reason", "measured"])
    ]
    assert [row[4] for row in verdicts[1:]] == ["inconclusive", "holds", "does not hold"]
    assert verdicts[2][5] == "significantly | lower"  # the pipe was escaped, not a new cell
    # every verdict row says what it was measured at
    assert {row[6] for row in verdicts[1:]} == {
        "at this scale: data=digits, model=lenet5, 8 epochs"
    }
    assert "## Pilot runs that shaped the design\n\n- a \\| pilot\n" in text
    summaries = [t for t in tables if t[0][:2] == ["variant", "mean ± std"]]
    assert len(summaries) == len(QUANTITIES)
    assert all(len(t) == 1 + len(VARIANTS) for t in summaries)
    steps = summaries[QUANTITIES.index("steps to val/acc >= 0.9")]
    assert steps[2] == ["no_bn", f"{DASH} ± {DASH}", DASH, "3", f"300, {DASH}, 280"]
    assert steps[3][1].startswith("12120 ± ")  # mean 12115.3 of 12346, 11000, 13000
    assert steps[1][0] == "bn (baseline)"
    comparisons = tables[
        headers.index(
            ["variant", "quantity", "diff", "CI", "p", "p Holm", "test", "d_z", "P(v > b)",
             "normality p", "MDE 80%", "seeds for 80%", "seeds"]
        )
    ]  # fmt: skip
    assert comparisons[1] == [
        "no_bn", "final val/acc", "-0.0583", "[-0.09, -0.027]", "0.0032", "0.0064", "t", "-4.1",
        "0", "0.42", "0.061", "3", "0, 1, 2",
    ]  # fmt: skip
    assert comparisons[2][2:6] == [DASH] * 4 and comparisons[2][7:12] == [DASH] * 5
    assert comparisons[3][4:6] == ["<1e-4", DASH] and comparisons[3][7] == "-∞"
    measured = tables[headers.index(["variant", "images/s", "note"])]
    assert measured[1] == ["bn", "1234", DASH]
    for name, path in images.items():
        assert f"]({path})" in text, name
    assert f"```bash\n{report.command}\n```\n" in text
    assert text.rstrip().endswith(
        "Generated by `ablab report` from MLflow parent run "
        "`0123456789abcdef0123456789abcdef` at `sqlite:///mlflow.db`."
    )
    assert "## Measurements" in text and "## Diagnostics" in text


def test_markdown_leaves_out_figures_it_has_no_file_for() -> None:
    report = make_report()
    text = to_markdown(report, {"curve_val_acc": "RESULTS_files/curve_val_acc.png"})
    assert len(re.findall(r"!\[", text)) == 1
    assert "## Diagnostics" not in text


def test_markdown_command_fence_outlasts_backticks_in_the_command() -> None:
    command = "echo ```not a fence```"
    text = to_markdown(make_report(command=command), {})
    assert f"\n````bash\n{command}\n````\n" in text


def test_footer_drops_a_password_from_the_tracking_uri() -> None:
    report = make_report(tracking_uri="http://alice:s3cret@mlflow.lab:5000/")
    assert "s3cret" not in to_markdown(report, {})
    assert "http://alice@mlflow.lab:5000/" in to_markdown(report, {})
    assert "s3cret" not in to_html(report, {})


# --- HTML ---------------------------------------------------------------------------------


class PageParser(HTMLParser):
    """Tables (class, attributes, body rows of (row class, cell texts)), images and every
    attribute value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.images: list[dict[str, str | None]] = []
        self.attributes: list[tuple[str, str, str | None]] = []
        self.tags: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        self.attributes += [(tag, k, v) for k, v in attrs]
        if tag == "table":
            self.tables.append({"attrs": a, "rows": []})
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
            self.tables[-1]["rows"].append((a.get("class"), self._row))
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def test_html_is_self_contained_and_complete() -> None:
    report = make_report()
    pngs = {name: png_bytes(fig) for name, fig in figures(report).items()}
    page = to_html(report, pngs)
    parsed = parse(page)

    # Nothing to fetch: no scripts, stylesheets or remote URLs; every image inline PNG.
    assert not {"script", "link", "iframe", "object"} & set(parsed.tags)
    assert "url(" not in page
    for tag, name, value in parsed.attributes:
        if name in ("src", "href"):
            assert value and value.startswith("data:"), (tag, name, value)
    assert len(parsed.images) == len(pngs)
    for img, (name, data) in zip(parsed.images, pngs.items(), strict=True):
        assert img["alt"], name
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        decoded = base64.b64decode(img["src"][len(prefix) :], validate=True)
        assert decoded.startswith(PNG_SIGNATURE) and decoded == data

    by_class = {}
    for t in parsed.tables:
        by_class.setdefault(t["attrs"]["class"], []).append(t)
    (verdicts,) = by_class["verdicts"]
    assert [cls for cls, _ in verdicts["rows"]] == ["inconclusive", "holds", "does-not-hold"]
    assert [cells[4] for _, cells in verdicts["rows"]] == [v.outcome for v in report.verdicts]
    summaries = by_class["summary"]
    assert [t["attrs"]["data-quantity"] for t in summaries] == QUANTITIES
    assert all(len(t["rows"]) == len(VARIANTS) for t in summaries)
    no_bn_steps = summaries[2]["rows"][1][1]
    assert no_bn_steps[:4] == ["no_bn", f"{DASH} ± {DASH}", DASH, "3"]
    (comparisons,) = by_class["comparisons"]
    assert len(comparisons["rows"]) == len(report.comparisons)
    assert by_class["measured"][0]["attrs"]["data-title"] == "throughput"
    ids = [t["attrs"]["id"] for t in parsed.tables]
    assert len(ids) == len(set(ids))

    # Autoescaped: the claim's markup is shown as text, not interpreted.
    assert "&lt;b&gt;and&lt;/b&gt;" in page and "<b>and</b>" not in page
    assert "0123456789abcdef0123456789abcdef" in page


def test_html_keeps_empty_tables_findable() -> None:
    report = make_report(verdicts=[], comparisons=[], tables={})
    tables = {t["attrs"]["class"]: t for t in parse(to_html(report, {})).tables}
    assert tables["verdicts"]["rows"] == [] and tables["comparisons"]["rows"] == []
    assert "measured" not in tables
    assert "## Verdicts\n\n_none_\n" in to_markdown(report, {})


def test_html_rejects_an_image_that_is_not_png() -> None:
    with pytest.raises(ValueError, match="curve_val_acc"):
        to_html(make_report(), {"curve_val_acc": b"GIF89a"})


# --- files --------------------------------------------------------------------------------


def test_write_report_writes_pages_and_figures(tmp_path: Path) -> None:
    report = make_report()
    paths = write_report(report, tmp_path / "study")
    folder = tmp_path / "study"
    assert paths == {
        "markdown": folder / "RESULTS.md",
        "html": folder / "RESULTS.html",
        "json": folder / "RESULTS.json",
        "figures": folder / "RESULTS_files",
    }
    pngs = sorted(p.name for p in paths["figures"].iterdir())
    assert pngs == sorted(f"{r.name}.png" for r in figure_refs(report))
    for png in paths["figures"].iterdir():
        assert png.read_bytes().startswith(PNG_SIGNATURE)
    text = paths["markdown"].read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(pngs) and all((folder / link).is_file() for link in links)
    assert len(parse(paths["html"].read_text(encoding="utf-8")).images) == len(pngs)

    # A later report with fewer curves leaves no stale figure behind.
    fewer = make_report(curves={"val/acc": report.curves["val/acc"]}, diagnostics={})
    again = write_report(fewer, folder)
    assert sorted(p.name for p in again["figures"].iterdir()) == ["curve_val_acc.png", "forest.png"]


def test_write_report_without_curves_and_bad_stem(tmp_path: Path) -> None:
    paths = write_report(
        make_report(curves={}, diagnostics={}, verdicts=[]), tmp_path, stem="REPORT"
    )
    assert set(paths) == {"markdown", "html", "json"} and paths["html"].name == "REPORT.html"
    assert not (tmp_path / "REPORT_files").exists()
    with pytest.raises(ValueError, match="stem"):
        write_report(make_report(), tmp_path, stem="../x")


# --- the page in a real browser -------------------------------------------------------------

PAGE_STATE = """() => {
  const rows = (t) => t.querySelectorAll("tbody tr").length;
  const verdictColour = (cls) => {
    const cell = document.querySelector(`table.verdicts tr.${cls} td.verdict`);
    return cell ? getComputedStyle(cell).backgroundColor : null;
  };
  return {
    verdicts: [...document.querySelectorAll("table.verdicts")].map(rows),
    summaries: [...document.querySelectorAll("table.summary")].map(
      (t) => [t.dataset.quantity, rows(t)]),
    comparisons: [...document.querySelectorAll("table.comparisons")].map(rows),
    images: [...document.images].map((i) => ({
      alt: i.alt, loaded: i.complete && i.naturalWidth > 0, width: i.naturalWidth})),
    colours: ["holds", "does-not-hold", "inconclusive"].map(verdictColour),
    scroll: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
  };
}"""


@pytest.mark.browser
@pytest.mark.slow
def test_report_page_in_headless_chromium(chromium, tmp_path: Path) -> None:
    report = make_report()
    paths = write_report(report, tmp_path)
    page = chromium.new_page(viewport={"width": 1200, "height": 800})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        started = time.monotonic()
        page.goto(paths["html"].as_uri(), wait_until="load")
        state = page.evaluate(PAGE_STATE)
        shot = tmp_path / "RESULTS.screenshot.png"
        page.screenshot(path=str(shot), full_page=True)
        print(
            f"chromium {chromium.version}: page loaded and shot in {time.monotonic() - started:.2f} s"
        )
    finally:
        page.close()

    assert requested[0] == paths["html"].as_uri()  # requests are seen: the next check bites
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert state["verdicts"] == [len(report.verdicts)]
    assert state["summaries"] == [[q, len(VARIANTS)] for q in QUANTITIES]
    assert state["comparisons"] == [len(report.comparisons)]
    assert len(state["images"]) == len(figure_refs(report))
    assert all(img["loaded"] and img["alt"] for img in state["images"]), state["images"]
    assert len(set(state["colours"])) == 3  # the three outcomes are told apart by colour
    width, height = png_size(shot)
    assert (width, height) == tuple(state["scroll"])  # the whole page, not just the viewport
    assert height > 800


# --- the parent run's description ------------------------------------------------------------


def test_note_holds_claim_question_command_and_one_row_per_verdict() -> None:
    report = make_report(size="quick")
    note = note_markdown(report)
    # the verdicts first: MLflow's run page shows the first lines of a description
    assert note.startswith("**bn_vs_nobn** (quick): 1 inconclusive, 1 holds, 1 does not hold\n")
    assert note.index("| variant |") < note.index("**Claim.**")
    assert f"**Claim.** {CLAIM}" in note
    assert f"**Question.** {report.question}" in note
    # the command contains a backtick: fenced by a longer run of them
    assert "```bash\n" + report.command + "\n```" in note
    rows = [line for line in note.splitlines() if line.startswith("| ")]
    assert rows == [
        "| variant | quantity | expected | verdict | difference [CI] | p | n |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
        # an undefined difference (a run diverged) is a dash, never 0
        f"| no_bn | {QUANTITIES[2]} | higher than bn | inconclusive | — | — | 3 |",
        # decided on p Holm (0.0064), not the raw p; the difference signed, with its CI
        "| no_bn | final val/acc | lower than bn | holds | -0.0583 [-0.09, -0.027] | 0.0064 | 3 |",
        # no p Holm: the test's own p
        "| bn_lr0.5 | final val/acc | higher than bn | does not hold | -0.02 [-0.05, 0.01] | <1e-4 | 3 |",
    ]


def test_note_fits_an_mlflow_tag_by_leaving_rows_out() -> None:
    many = [Verdict(CLAIM, "no_bn", f"quantity {i}", "higher", "holds", "") for i in range(400)]
    note = note_markdown(make_report(verdicts=many), max_chars=3000)
    assert len(note) <= 3000
    kept = [line for line in note.splitlines() if line.startswith("| no_bn |")]
    assert 0 < len(kept) < 400
    assert f"_… {400 - len(kept)} more verdicts in the report._" in note
