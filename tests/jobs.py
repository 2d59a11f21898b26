"""Real training processes for fault tests: start one, pause it at a known point, act on it.

A paused process is an event to wait on, not a time: ``wait_for_pause`` returns as soon as the
run writes its ``paused`` file (``tests.injected.PauseAtStep``, ``pause_at``) and fails at once
if the process ends first; its timeout is only a safety net that turns a hang into a failure.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from conftest import REPO, tracking_uri
from injected import SAFETY_TIMEOUT_S, pause_at, wait_paused

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
_runs = itertools.count()
__all__ = ["pause_at"]  # re-exported: the override the tests pass with ``wait_for_pause``


def start(root: Path, *overrides: str, base: list[str] = SHORT_RUN) -> subprocess.Popen:
    """``python -m ablab.train <base> <overrides>`` rooted at ``root`` (store, outputs); its
    output goes to a file (a pipe nobody reads while the run is paused could fill and block it)."""
    env = {**os.environ, "ABLAB_ROOT": str(root), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    log = root / f"run-{next(_runs)}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ablab.train", *base, *overrides],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float = SAFETY_TIMEOUT_S) -> tuple[int, str]:
    """Wait for ``proc`` to end; its exit status and output."""
    proc.wait(timeout=timeout)
    return proc.returncode, proc.log.read_text(errors="replace")


def wait_for_pause(root: Path, proc: subprocess.Popen) -> None:
    """Return once the run paused by ``pause_at(step, root)`` is paused (fails if it ends)."""
    wait_paused(root, proc, proc.log)


def kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL


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


def killed_then_resumed(root: Path, pause: str, base: list[str]) -> tuple[MlflowClient, Any]:
    """Run ``base`` until the ``pause`` point, ``kill -9`` it (its run is left RUNNING), run the
    same command again to the end: the client, and the one run, which must be the killed one
    continued (its second attempt), finished."""
    proc = start(root, pause, base=base)
    wait_for_pause(root, proc)
    kill_9(proc)
    client = MlflowClient(tracking_uri(root))
    killed = only_run(client)
    assert killed.info.status == "RUNNING"
    code, out = finish(start(root, pause, base=base))
    assert code == 0, out[-3000:]
    run = only_run(client)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["attempt"] == "2"
    return client, run
