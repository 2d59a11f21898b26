"""Speed compared from one interleaved timing (issue 17, item 2): the report reads the study's
timing run, pairs the variants by round, says how the speed was timed; the study file's
``timing`` is checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ablab.analysis.collect import collect, find_study_runs
from ablab.analysis.render import to_markdown
from ablab.errors import ConfigError
from ablab.study import Timing, load_study
from conftest import tracking_uri

STUDY = """
claim: "0. A fabricated claim."
question: Is the separable net faster?
baseline: {name: standard, overrides: {model.block: conv}}
variants:
  separable: {model.block: depthwise_separable}
seeds: [0, 1, 2]
sizes: {quick: {}}
timing: {batch_size: 64, rounds: 8, min_run_time: 4}
quantities:
  - {metric: val/acc, stat: final}
  - {metric: timing/images_per_s, stat: interleaved}
expect:
  - {variant: separable, quantity: interleaved timing/images_per_s, direction: higher}
  - {variant: separable, quantity: final val/acc, direction: lower}
"""

#: images/s per round: the machine slows down over the rounds, on both alike
STANDARD = [1000, 980, 700, 650, 900, 1010, 500, 990]
SEPARABLE = [1500, 1490, 1020, 1000, 1320, 1500, 760, 1510]


def write_study(root: Path, text: str = STUDY) -> Path:
    folder = root / "speed"
    folder.mkdir()
    (folder / "study.yaml").write_text(text)
    return folder


def fabricate(root: Path, timed: bool = True) -> tuple[MlflowClient, str]:
    """A parent with three comparison runs per variant (seed 2 of separable killed) and, when
    ``timed``, a failed timing run then a finished one (the one the report must read), then a
    newer finished one of another design (other overrides: never read)."""
    folder = write_study(root)
    fingerprint = load_study(folder).timing_fingerprint("quick", {}, "")
    client = MlflowClient(tracking_uri(root))
    experiment = client.create_experiment("speed", artifact_location=str(root / "a"))
    tags = {"sweep": "parent", "study": "speed", "study_file": str(folder / "study.yaml"),
            "study_size": "quick", "hw.cpu": "Fabricated CPU", "hw.cores": "2"}  # fmt: skip
    parent = client.create_run(experiment, tags=tags).info.run_id
    for variant in ("standard", "separable"):
        for seed in range(3):
            run = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
            params = [Param("variant", variant), Param("seed", str(seed))]
            client.log_batch(run, metrics=[Metric("val/acc", 0.9, 0, 5)], params=params)
            killed = variant == "separable" and seed == 2
            client.set_terminated(run, "KILLED" if killed else "FINISHED")
    if timed:
        timing_tags = {"mlflow.parentRunId": parent, "timing": "true", "hw.cpu": "Fabricated CPU",
                       "hw.gpu": "none", "timing.mode": "inference", "timing.rounds": "8",
                       "timing.threads": "1", "timing.batch_shape": "64x1x28x28",
                       "timing.device": "cpu", "timing.precision": "32-true",
                       "timing.torch": "2.x"}  # fmt: skip
        for status, scale, design in (("FAILED", 0.1, fingerprint), ("FINISHED", 1.0, fingerprint),
                                      ("FINISHED", 0.01, "another design")):  # fmt: skip
            tagged = {**timing_tags, "timing.fingerprint": design}
            run = client.create_run(experiment, tags=tagged).info.run_id
            metrics = [
                Metric(f"timing/images_per_s/{variant}", scale * value, 0, step)
                for variant, values in (("standard", STANDARD), ("separable", SEPARABLE))
                for step, value in enumerate(values)
            ]
            client.log_batch(run, metrics=metrics)
            client.set_terminated(run, status)
    return client, parent


def test_speed_is_paired_by_round_of_the_newest_finished_timing_run(root: Path) -> None:
    client, parent = fabricate(root)
    report = collect(client, find_study_runs(client, parent))
    speed = "interleaved timing/images_per_s"
    (comparison,) = [c for c in report.comparisons if c.quantity == speed]
    assert comparison.seeds == list(range(8))  # the rounds, not the comparison's seeds
    assert comparison.diffs == pytest.approx(
        [b - a for a, b in zip(STANDARD, SEPARABLE, strict=True)]
    )
    assert comparison.test != "stated (deterministic)" and comparison.p_value < 1e-4
    (verdict,) = [v for v in report.verdicts if v.quantity == speed]
    assert verdict.outcome == "holds"
    assert "timed interleaved in one process on Fabricated CPU" in verdict.reason
    assert "paired by round" in verdict.reason and "1 torch thread(s)" in verdict.reason
    assert not verdict.seeds_left_out and "rests on" not in verdict.reason  # a killed run
    (accuracy,) = [v for v in report.verdicts if v.quantity == "final val/acc"]
    assert accuracy.seeds_left_out == [2]  # ... is lost to the comparison's own quantities
    summary = next(v for v in report.variants if v.name == "separable").summaries[speed]
    assert summary.n == 8
    assert "speed timed interleaved in one process over 8 rounds" in report.machine
    assert "Fabricated CPU" in report.machine
    markdown = to_markdown(report, {})
    assert "interleaved" in markdown and "8 rounds" in markdown


def test_without_a_timing_run_the_speed_claim_is_inconclusive_and_says_why(root: Path) -> None:
    client, parent = fabricate(root, timed=False)
    report = collect(client, find_study_runs(client, parent))
    (verdict,) = [v for v in report.verdicts if v.quantity.startswith("interleaved")]
    assert verdict.outcome == "inconclusive"
    assert "no finished timing run of this parent" in verdict.reason


@pytest.mark.parametrize(
    ("timing", "message"),
    [("{rounds: 2}", "timing.rounds must be an integer >= 3, got 2"),
     ("{batch_size: 0}", "timing.batch_size must be an integer >= 1, got 0"),
     ("{batch_size: true}", "timing.batch_size must be an integer >= 1, got True"),
     ("{min_run_time: -1}", "timing.min_run_time must be a positive number of seconds"),
     ("{mode: training}", "timing.mode 'training'; valid: inference, train_step"),
     ("{threads: 0}", "timing.threads must be an integer >= 1, got 0"),
     ("{warmup: 3}", "unknown timing key(s) ['warmup']"),
     ("5", "timing needs {batch_size: 64, rounds: 10")],
)  # fmt: skip
def test_a_timing_declaration_is_checked_in_one_line(root: Path, timing: str, message: str) -> None:
    text = re.sub(r"timing: \{.*\}", f"timing: {timing}", STUDY)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_study(write_study(root, text))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [("timing: {batch_size: 64, rounds: 8, min_run_time: 4}\n", "",
      "quantity interleaved timing/images_per_s reads the timing run; the study declares no "
      "timing"),
     ("{metric: timing/images_per_s, stat: interleaved}", "{metric: val/acc, stat: interleaved}",
      "quantity interleaved val/acc: the timing run logs timing/images_per_s, "
      "timing/ms_per_batch")],
)  # fmt: skip
def test_an_interleaved_quantity_needs_the_timing_run(
    root: Path, old: str, new: str, message: str
) -> None:
    text = STUDY.replace(old, new)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_study(write_study(root, text))


def test_a_declared_timing_is_parsed_with_its_defaults(root: Path) -> None:
    study = load_study(write_study(root))
    assert study.timing == Timing(batch_size=64, rounds=8, min_run_time=4.0)
    assert study.timing.mode == "inference" and study.timing.threads is None
    assert next(q for q in study.quantities if q.from_timing).name == (
        "interleaved timing/images_per_s"
    )
