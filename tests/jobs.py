"""Real training processes for fault tests: start one, pause it at a known point, act on it.

A paused process is an event to wait on, not a time: ``wait_for`` returns as soon as the run
writes its ``paused`` file (``tests.injected.PauseAtStep``) and fails at once if the process
ends first; its timeout is only a safety net that turns a hang into a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from conftest import REPO

#: A short LeNet with dropout (so the restored RNG state matters): 3 epochs of 5 steps, every
#: step logged; last.ckpt is written at the end of each epoch.
SHORT_RUN = [
    "trainer=smoke",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=5",
    "model.dropout=0.5",
    "trainer.system_metrics_interval=null",
]
PER_STEP = ("train/loss_step", "train/acc_step")
#: Safety limit for one real run on a busy machine; the tests wait on events, not on this.
SAFETY_S = 900


def start(root: Path, *overrides: str, base: list[str] = SHORT_RUN) -> subprocess.Popen:
    """``python -m ablab.train <base> <overrides>`` rooted at ``root`` (store, outputs)."""
    env = {**os.environ, "ABLAB_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "ablab.train", *base, *overrides],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = SAFETY_S) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = SAFETY_S) -> None:
    """Return once ``path`` exists; fail at once when ``proc`` ends before it does."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path.name}:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.1)


def kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL


def pause_at(step: int, root: Path) -> str:
    """Override that pauses the run once at global step ``step`` (``root/paused``, ``root/release``)."""
    return (
        "+callbacks.pause={_target_: tests.injected.PauseAtStep, "
        f"step: {step}, paused: '{root}/paused', release: '{root}/release'}}"
    )


def histories(client: MlflowClient, run_id: str, keys=PER_STEP) -> dict[str, list[tuple]]:
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys
    }


def only_run(client: MlflowClient):
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "", run_view_type=3
    )
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]
