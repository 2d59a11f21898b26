"""``make bench`` (bench/run.py) runs end to end and writes what it promises; no speed is asserted
here: the speed targets live in the benchmark's own report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.run import clock_figures, common_window, full_batch_step_s, window_steps

from conftest import REPO


def test_step_time_leaves_out_epoch_zero_and_validation() -> None:
    record = {
        "epochs": [
            {"start": 100.0, "batch_ends": [105.0, 106.0], "images": [64, 64]},  # warm-up
            {"start": 110.0, "batch_ends": [110.5, 111.0], "images": [64, 64]},
            {"start": 120.0, "batch_ends": [121.0, 122.0], "images": [64, 32]},
        ],
        "threads": 1,
    }
    figures = clock_figures(record)
    assert figures["step_s"] == pytest.approx((1.0 + 2.0) / 4)
    assert figures["images_per_s"] == pytest.approx((64 * 3 + 32) / 3.0)
    assert figures["steps"] == 6
    assert figures["first_step_time"] == 105.0


def test_paired_steps_are_those_both_sides_ran_at_the_same_time() -> None:
    """Left trains epochs 1-2 over 10.0-14.0; right starts epoch 1 at 11.0 and ends at 13.5:
    only steps inside [11.0, 13.5] count, epoch 0 never, and a short last batch is scaled."""
    left = [
        {"start": 0.0, "batch_ends": [9.0], "images": [64]},  # warm-up, never timed
        {"start": 10.0, "batch_ends": [11.0, 12.0], "images": [64, 64]},
        {"start": 12.5, "batch_ends": [13.0, 14.0], "images": [64, 32]},
    ]
    right = [
        {"start": 1.0, "batch_ends": [10.9], "images": [64]},
        {"start": 11.0, "batch_ends": [11.5, 12.0, 12.5, 13.0, 13.5], "images": [64] * 4 + [32]},
    ]
    lo, hi = common_window([left, right])
    assert (lo, hi) == (11.0, 13.5)
    assert window_steps(left, lo, hi) == [(1.0, 64), (0.5, 64)]  # 10-11 and 13-14 fall outside
    right_steps = window_steps(right, lo, hi)
    assert right_steps == [(0.5, 64)] * 4 + [(0.5, 32)]
    # 2.5 s for 288 images: a full batch of 64 takes 64 * 2.5 / 288 s
    assert full_batch_step_s(right_steps) == pytest.approx(64 * 2.5 / 288)


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_bench_writes_results_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "a",
           "--repeats", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True
    assert results["machine"]["cores"] >= 1
    assert {"torch", "pytorch-lightning", "mlflow"} <= set(results["machine"]["versions"])
    assert "--quick" in results["machine"]["command"]
    assert positive(results["warmup"]["wall_s"])
    [repeat] = results["repeats"]
    paired = repeat.pop("paired: ablab | raw", None)
    assert set(repeat) == {"ablab", "raw"}
    if len(os.sched_getaffinity(0)) >= 2:  # with one core the bench says it could not pair
        assert positive(paired["left_step_s"]) and positive(paired["right_step_s"])
        assert paired["left_steps"] >= 1 and paired["right_steps"] >= 1
        assert len(set(paired["cores"])) == 2  # one core each
    else:
        assert paired is None and "paired" in results["skipped"]
    for arm in repeat.values():
        for key in ("wall_s", "step_s", "first_step_s", "max_rss_mib", "cpu_s"):
            assert positive(arm[key]), (key, arm)
        assert isinstance(arm["threads"], int) and arm["threads"] >= 1
    for key in ("throughput_ratio", "sequential_throughput_ratio", "wall_ratio", "rss_ratio"):
        stats = results["summary"]["a"][key]
        assert stats["min"] <= stats["median"] <= stats["max"]
        assert all(positive(v) for v in stats["values"])
    targets = {t["target"]: t for t in results["targets"]}
    assert len(targets) == 2  # a's two; the others were not selected
    assert all(isinstance(t["met"], bool) and positive(t["value"]) for t in targets.values())

    text = (out / "RESULTS.md").read_text()
    assert "do not edit" in text
    for heading in ("## Machine", "## Targets", "## a. Default job vs raw loop", "## g. Peak"):
        assert heading in text
    assert "Skipped:" in text  # the GPU section says why it did not run
    assert "nan" not in text.lower().split()
