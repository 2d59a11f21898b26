"""Interleaved timing (issue 17, item 2): a study's variants' networks timed in one process,
alternating in rounds, logged as one child run of the study's parent; real nets, real timers, a
real MLflow store in tmp."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from ablab.study import Timing
from ablab.tracking.timing import latest_timing_run, median_name, metric_name
from ablab.training.timing import TimedRounds, log_timing, main, time_nets
from conftest import tracking_uri


def convs(n: int) -> nn.Module:
    return nn.Sequential(*(nn.Conv2d(8, 8, 3, padding=1) for _ in range(n)), nn.Flatten())


@pytest.mark.parametrize("mode", ["inference", "train_step"])
def test_the_cheaper_net_is_faster_on_most_rounds(mode: str) -> None:
    nets = {"one_conv": convs(1), "twenty_convs": convs(20)}
    nets["one_conv"].eval()  # a flag the timing must leave as it found it
    x = torch.randn(8, 8, 16, 16)
    timing = Timing(batch_size=8, rounds=5, min_run_time=1.0, mode=mode)
    timed = time_nets(nets, x, timing, threads=1)
    cheap, costly = timed.images_per_s("one_conv"), timed.images_per_s("twenty_convs")
    assert timed.rounds == 5 and len(cheap) == len(costly) == 5
    assert sum(a > b for a, b in zip(cheap, costly, strict=True)) >= 4
    assert timed.threads == 1 and timed.batch_shape == (8, 8, 16, 16)
    assert [m.training for m in nets["one_conv"].modules()] == [False, False, False]
    assert all(m.training for m in nets["twenty_convs"].modules())
    if mode == "inference":
        assert all(p.grad is None for p in nets["one_conv"].parameters())


def fake_rounds() -> TimedRounds:
    return TimedRounds(
        mode="inference", batch_shape=(8, 1, 28, 28), threads=1, device="cpu",
        precision="32-true",
        seconds={"base": [0.010, 0.011, 0.012], "model.act=relu,x/y": [0.002, 0.002, 0.004]},
    )  # fmt: skip


def test_the_timing_run_is_a_child_of_the_parent_with_its_tags_and_rounds(root: Path) -> None:
    client = MlflowClient(tracking_uri(root))
    experiment = client.create_experiment("s", artifact_location=str(root / "a"))
    parent = client.create_run(experiment, tags={"sweep": "parent", "study": "s"})
    timing = Timing(batch_size=8, rounds=3, min_run_time=0.5)
    run_id = log_timing(client, parent, fake_rounds(), timing, time.time)
    run = client.get_run(run_id)
    tags = run.data.tags
    assert run.info.status == "FINISHED" and not run.data.params  # no variant: no comparison run
    assert tags["mlflow.parentRunId"] == parent.info.run_id
    assert tags["timing"] == "true" and tags["timing.mode"] == "inference"
    assert tags["timing.rounds"] == "3" and tags["timing.threads"] == "1"
    assert tags["timing.batch_shape"] == "8x1x28x28" and tags["timing.device"] == "cpu"
    assert tags["timing.torch"] == torch.__version__ and tags["hw.cpu"]
    assert "hw.gpu" in tags
    odd = metric_name("timing/images_per_s", "model.act=relu,x/y")
    assert odd == "timing/images_per_s/model.act_relu_x_y"
    history = sorted(client.get_metric_history(run_id, odd), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx([4000, 4000, 2000])
    base = client.get_metric_history(run_id, "timing/ms_per_batch/base")
    assert sorted(m.value for m in base) == pytest.approx([10, 11, 12])
    median = run.data.metrics[median_name("timing/images_per_s", "base")]
    assert median == pytest.approx(8 / 0.011)
    assert latest_timing_run([run]).info.run_id == run_id


STUDY = """
claim: "0. A fabricated claim."
question: Is one 3x3 conv per block faster than two?
common: {model: plain20, model.widths: [8, 8, 8], data: digits, trainer: cpu}
baseline: {name: two_3x3, overrides: {model.block: basic}}
variants:
  one_3x3: {model.block: conv}
seeds: [0, 1, 2]
sizes: {quick: {}}
timing: {batch_size: 8, rounds: 3, min_run_time: 0.3}
quantities:
  - {metric: timing/images_per_s, stat: interleaved}
expect:
  - {variant: one_3x3, quantity: interleaved timing/images_per_s, direction: higher}
"""


def test_a_study_is_timed_from_its_variants_configs_once_per_parent(root: Path) -> None:
    folder = root / "timed"
    folder.mkdir()
    (folder / "study.yaml").write_text(STUDY)
    client = MlflowClient(tracking_uri(root))
    experiment = client.create_experiment("timed", artifact_location=str(root / "a"))
    tags = {"sweep": "parent", "study": "timed", "study_file": str(folder / "study.yaml"),
            "study_size": "quick"}  # fmt: skip
    parent = client.create_run(experiment, tags=tags).info.run_id
    first = main([str(folder), "--size", "quick"])
    assert first is not None
    run = client.get_run(first)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["timing.batch_shape"] == "8x1x28x28"  # digits: 1 channel, 28 px
    for variant in ("two_3x3", "one_3x3"):
        history = client.get_metric_history(first, f"timing/images_per_s/{variant}")
        assert sorted(m.step for m in history) == [0, 1, 2]
    assert main([str(folder), "--size", "quick"]) is None  # finished: not timed again
    again = main([str(folder), "--size", "quick", "--again"])
    assert again not in (None, first)
