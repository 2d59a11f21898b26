"""``ablab report --all``: one page with every claim of the notes and its verdicts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.analysis.test_render import make_report

from ablab.analysis.claims import claim_numbers, claims_page, write_claims_page
from ablab.analysis.render import write_report
from ablab.study import STUDIES_DIR

CLAIMS = """claims:
  1: "BN speeds convergence."
  2: "Plain nets degrade."
  3: "Zero init fails."
  4: "Something never studied."
"""


@pytest.mark.parametrize(
    ("claim", "numbers"),
    [("1. BN", [1]), ("7-9. Two 3x3", [7, 8, 9]), ("12–13. x", [12, 13]), ("BN", [])],
)
def test_claim_numbers(claim: str, numbers: list[int]) -> None:
    assert claim_numbers(claim) == numbers


def study(folder: Path, claim: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(f'claim: "{claim}"\nquestion: "q?"\n')
    return folder


def test_every_claim_is_listed_with_its_verdicts_or_not_measured(tmp_path: Path) -> None:
    (tmp_path / "claims.yaml").write_text(CLAIMS)
    # a study with a current report: its RESULTS.json, written by ablab report's writer
    report = make_report()
    report.size, report.commit = "quick", "abc1234567"
    write_report(report, study(tmp_path / "bn", "1-2. BN and depth"))
    # a report from before RESULTS.json: the outcomes of its verdict table, without numbers
    legacy = study(tmp_path / "old", "3. Zero init fails")
    (legacy / "RESULTS.md").write_text(
        "| claim | variant | quantity | expected | verdict | reason |\n|---|---|---|---|---|---|\n"
        "| 3. Zero init | zeros | final val/acc | lower than he | holds | diff -0.8 |\n"
    )
    study(tmp_path / "fresh", "3. Zero init fails")  # a study with no report yet
    study(tmp_path / "unet", "Skips recover detail")  # of no numbered claim: its own, last

    md, page = claims_page(tmp_path)
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2", "| 3", "| 3", "| 4"]
    bn = rows[0]
    assert "[`bn`](bn/RESULTS.md)" in bn and "quick, 3 seeds, `abc1234567`" in bn
    assert "no_bn final val/acc lower: **holds** (-0.0583 [-0.09, -0.027], n=3)" in bn
    assert "bn_lr0.5 final val/acc higher: **does not hold** (-0.02 [-0.05, 0.01], n=3)" in bn
    assert rows[1].split(" | ")[3] == bn.split(" | ")[3]  # claim 2: the same study's verdicts
    assert "not measured (no report yet)" in rows[2]  # studies in folder order: fresh, old
    assert "zeros final val/acc lower than he: **holds**" in rows[3]
    assert "(report predates RESULTS.json)" in rows[3]
    assert "not measured (no study yet)" in rows[4]
    assert "2 measured" not in md and "3 measured, 1 not yet" in md
    own = [line for line in md.splitlines() if line.startswith("| — | Skips recover detail |")]
    assert len(own) == 1 and "`unet/`" in own[0] and "not measured (no report yet)" in own[0]
    assert "<strong>holds</strong>" in page
    assert page.count("<tr>") == 1 + 6 + 1 + 4  # header and rows of claims, then of studies
    paths = write_claims_page(tmp_path)
    assert paths["markdown"].read_text() == md and paths["html"].read_text() == page


def test_the_projects_page_lists_all_38_claims() -> None:
    md, _ = claims_page(STUDIES_DIR)
    numbers = {int(m[1]) for m in re.finditer(r"^\| (\d+) \|", md, flags=re.M)}
    assert numbers == set(range(1, 39))
    assert (STUDIES_DIR / "README.md").read_text() == md  # the committed page is current


def test_a_report_says_which_sources_of_variance_varied_across_seeds() -> None:
    from types import SimpleNamespace

    from ablab.analysis.collect import variance_sources
    from ablab.analysis.render import to_markdown

    def run(**params: str) -> SimpleNamespace:  # what variance_sources reads of an MLflow Run
        return SimpleNamespace(data=SimpleNamespace(params=params))

    by_variant = {
        "bn": {s: run(**{"seeds.split": "0", "seeds.data": str(s), "seeds.init": str(s)})
               for s in (0, 1, 2)},
        # a run from before seeds.split: its split's seed was logged as data.seed
        "old": {s: run(**{"data.seed": str(s), "seeds.data": "5"}) for s in (0, 1)},
    }  # fmt: skip
    sources = variance_sources(by_variant)
    assert sources == {
        "data split": True,  # `old` split by seed
        "data order": True,
        "initialisation": True,
    }  # augmentation: no run logged it, so it is not claimed either way
    report = make_report(variance_sources={**sources, "data split": False})
    text = to_markdown(report, {})
    assert (
        "- **Varied across seeds:** data order, initialisation; fixed: data split "
        "(dropout follows `seed`)"
    ) in text
