"""One page of every claim of the notes: ``ablab report --all``.

The claims are ``experiments/claims.yaml`` (numbered as in the notes' index); a study names the
claims it measures by the number its ``claim:`` starts with ("5." or a range, "7-9."). Each row
gives the claim, its studies and every verdict they reached, with the difference, its interval,
the seeds, the size run and the commit, read from the study's ``RESULTS.json`` (written by
``ablab report``); a report older than that file gives its verdict table's outcomes, without
numbers. A claim with no study, or a study with no report yet, is listed as not measured.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: "7-9. Two stacked ..." -> (7, 9)
CLAIM_NUMBER = re.compile(r"^\s*(\d+)(?:\s*[-–]\s*(\d+))?\.")
#: a row of a legacy RESULTS.md verdict table: | claim | variant | quantity | expected | verdict |
LEGACY_ROW = re.compile(
    r"^\| [^|]* \| (?P<variant>[^|]+?) \| (?P<quantity>[^|]+?) \| (?P<expected>[^|]+?) \| "
    r"(?P<outcome>holds|does not hold|inconclusive) \|"
)


@dataclass
class StudyEntry:
    """One study folder: the claims it names and what its latest report concluded."""

    name: str
    numbers: list[int]
    question: str
    report: str | None  # RESULTS.md, relative to the experiments folder
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    size: str = ""
    commit: str = ""
    seeds: list[int] = field(default_factory=list)
    scale: str = ""  # what the verdicts were measured at (data, model, budget)
    numbers_known: bool = True  # False: a legacy report, outcomes without numbers
    claim: str = ""  # the study's own claim text


def claim_numbers(claim: str) -> list[int]:
    """The claim numbers a study's ``claim:`` text starts with ("7-9. ..." -> [7, 8, 9])."""
    m = CLAIM_NUMBER.match(claim)
    if not m:
        return []
    first = int(m[1])
    return list(range(first, int(m[2] or first) + 1))


def read_study(folder: Path) -> StudyEntry:
    """A study folder's claims, and its report's verdicts: from ``RESULTS.json``, else (a
    report written before that file) the outcomes of ``RESULTS.md``'s verdict table."""
    spec = yaml.safe_load((folder / "study.yaml").read_text()) or {}
    entry = StudyEntry(
        folder.name,
        claim_numbers(str(spec.get("claim", ""))),
        str(spec.get("question", "")),
        f"{folder.name}/RESULTS.md" if (folder / "RESULTS.md").exists() else None,
        claim=str(spec.get("claim", "")),
    )
    data = folder / "RESULTS.json"
    if data.exists():
        got = json.loads(data.read_text())
        entry.verdicts, entry.size = got["verdicts"], got.get("size", "")
        entry.commit, entry.seeds = got.get("commit", ""), got.get("seeds", [])
        entry.scale = got.get("scale", "")
    elif entry.report:
        entry.numbers_known = False
        for line in (folder / "RESULTS.md").read_text().splitlines():
            if m := LEGACY_ROW.match(line):
                entry.verdicts.append({k: m[k] for k in LEGACY_ROW.groupindex})
    return entry


def _num(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.3g}"


def verdict_text(v: dict[str, Any]) -> str:
    """ "no_bn final val/acc lower: **holds** (-0.058 [-0.09, -0.027], n=3)"."""
    against = f" vs {v['against']}" if v.get("against") else ""
    text = f"{v['variant']}{against} {v['quantity']} {v['expected']}: **{v['outcome']}**"
    if "diff" in v:
        low, high = v["ci"]
        text += f" ({_num(v['diff'])} [{_num(low)}, {_num(high)}], n={len(v.get('seeds', []))})"
    return text


def claims_page(experiments: Path) -> tuple[str, str]:
    """(Markdown, HTML) of every claim in ``experiments/claims.yaml`` with its verdicts."""
    claims = yaml.safe_load((experiments / "claims.yaml").read_text())["claims"]
    studies = [read_study(f) for f in sorted(experiments.iterdir()) if (f / "study.yaml").exists()]
    header = [
        "claim",
        "the notes say",
        "study",
        "verdicts",
        "measured at: scale, size, seeds, commit",
    ]
    rows: list[list[str]] = []

    def row(number: str, text: str, s: StudyEntry) -> list[str]:
        link = f"[`{s.name}`]({s.report})" if s.report else f"`{s.name}/`"
        if not s.verdicts:
            verdicts = "not measured (no report yet)"
        else:
            verdicts = "<br>".join(verdict_text(v) for v in s.verdicts)
            verdicts += "" if s.numbers_known else "<br>(report predates RESULTS.json)"
        facts = (s.scale, s.size, f"{len(s.seeds)} seeds" if s.seeds else "",
                 f"`{s.commit}`" if s.commit else "")  # fmt: skip
        return [number, text, link, verdicts, ", ".join(x for x in facts if x) or "—"]

    for number, text in sorted(claims.items()):
        mine = [s for s in studies if number in s.numbers]
        if not mine:
            rows.append([str(number), text, "—", "not measured (no study yet)", "—"])
        rows += [row(str(number), text, s) for s in mine]
    # Studies of what the notes build rather than of a numbered claim (U-Net's skips): their
    # own claim, after the numbered ones.
    rows += [row("—", s.claim, s) for s in studies if not s.numbers]
    measured = len({n for s in studies if s.verdicts for n in s.numbers} & set(claims))
    intro = (
        f"Every claim of the notes ({len(claims)}, numbered as in their index), with the "
        f"verdicts of the studies that measure it: {measured} measured, "
        f"{len(claims) - measured} not yet. A verdict gives the variant's mean paired "
        "difference from the baseline (or the named variant), its 95% interval and the seeds; "
        "the study's report has the test, the power and the plots. Generated by "
        "`ablab report --all` from each study's `RESULTS.json`: do not edit."
    )

    def cell(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    md = ["# Claims of the notes and their verdicts", "", intro, "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    md += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    studies_intro = (
        "One folder per study: its README (the claim, the question, the switch, the command), "
        "its `study.yaml` and the report `ablab study` wrote from real runs. Experiment "
        "configs (`python -m ablab.train experiment=<name>`) live in `conf/experiment/`."
    )
    study_rows = [
        [f"[`{s.name}/`]({s.name}/)", ", ".join(map(str, s.numbers)) or "—", s.question or "—"]
        for s in studies
    ]
    md += [
        "",
        "## Studies",
        "",
        studies_intro,
        "",
        "| study | claims | question |",
        "|---|---|---|",
    ]
    md += ["| " + " | ".join(cell(c) for c in r) + " |" for r in study_rows]

    def tbody(table: list[list[str]]) -> str:
        return "".join(
            "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>\n" for r in table
        )

    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>Claims of the notes and their verdicts</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto}"
        "td,th{border:1px solid #d0d7de;padding:.3rem .5rem;vertical-align:top}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>Claims of the notes and their verdicts</h1><p>{_inline_html(intro)}</p>"
        "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>"
        f"<tbody>\n{tbody(rows)}</tbody></table>"
        f"<h2>Studies</h2><p>{_inline_html(studies_intro)}</p>"
        "<table><thead><tr><th>study</th><th>claims</th><th>question</th></tr></thead>"
        f"<tbody>\n{tbody(study_rows)}</tbody></table></body></html>\n"
    )
    return "\n".join(md) + "\n", page


def _inline_html(text: str) -> str:
    """The page's few Markdown marks as HTML: **bold**, `code`, [text](link), <br>."""
    out = html.escape(text, quote=False).replace("&lt;br&gt;", "<br>")
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"\[`?([^\]`]+)`?\]\(([^)]+)\)", r'<a href="\2"><code>\1</code></a>', out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def write_claims_page(experiments: Path) -> dict[str, Path]:
    """Write ``experiments/README.md`` and ``experiments/README.html``."""
    md, page = claims_page(experiments)
    paths = {"markdown": experiments / "README.md", "html": experiments / "README.html"}
    paths["markdown"].write_text(md, encoding="utf-8")
    paths["html"].write_text(page, encoding="utf-8")
    return paths
