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
from bench.run import clock_figures

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
    assert set(repeat) == {"ablab", "raw"}
    for arm in repeat.values():
        for key in ("wall_s", "step_s", "first_step_s", "max_rss_mib", "cpu_s"):
            assert positive(arm[key]), (key, arm)
        assert isinstance(arm["threads"], int) and arm["threads"] >= 1
    for key in ("throughput_ratio", "wall_ratio", "rss_ratio"):
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
