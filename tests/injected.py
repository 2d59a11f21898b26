"""Failures injected into real runs, to test what tracking records when training breaks.

The callbacks are loaded by the training process (``+callbacks.x={_target_: tests.injected...}``);
``pause_at`` and ``wait_paused`` are their test side: a test waits for the run to reach a known
step (an event, not a guess at how long training takes), acts on it, then lets it go on.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pytorch_lightning.callbacks import Callback

if TYPE_CHECKING:
    import subprocess

#: Seconds a wait on an event may take before it counts as a hang. Only a safety limit: the
#: waits return as soon as the event happens, and a busy 2-core machine must never reach it.
SAFETY_TIMEOUT_S = 600.0


class RaiseAtStep(Callback):
    """Raise ``RuntimeError`` once training reaches global step ``step``."""

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"injected failure at step {trainer.global_step}")


class PauseAtStep(Callback):
    """Once, at global step ``step``: create ``paused``, then wait until ``release`` exists.

    The test acts on the paused run (kill -9, SIGTERM, ``scontrol requeue``) at a known step;
    a rerun of the same command finds ``paused`` and does not pause again. A ``release`` that
    never comes (the test died) fails the run after ``timeout`` seconds rather than hanging.
    """

    def __init__(
        self,
        step: int,
        paused: str,
        release: str,
        timeout: float = SAFETY_TIMEOUT_S,
        job: int | None = None,
    ) -> None:
        self.step, self.paused, self.release, self.timeout = step, paused, release, timeout
        #: pause only in this job of a sweep (Hydra's job number), e.g. half-way through a study
        self.job = job

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        paused, release = Path(self.paused), Path(self.release)
        if trainer.global_step != self.step or paused.exists():
            return
        if self.job is not None:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.get().job.num != self.job:
                return
        # the SLURM job that paused, for scontrol requeue: an array task as <array>_<task>
        # (task 0's SLURM_JOB_ID is the array's own id, which would requeue every task)
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{array}_{task}" if array else os.environ.get("SLURM_JOB_ID", "")
        staged = paused.with_name(f".{paused.name}.{os.getpid()}")
        staged.write_text(job)
        staged.rename(paused)  # whole when it appears: the test reads it at once
        deadline = time.monotonic() + self.timeout
        while not release.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"paused at step {self.step}: no {release} after {self.timeout:.0f} s"
                )
            time.sleep(0.05)


class MeetAtStep(Callback):
    """At global step ``step``: arrive at a barrier of ``parties`` processes (a file each in
    ``folder``) and wait for the others, so several runs are provably live at the same time
    (their MLflow runs started, none ended) without relying on how fast each one starts."""

    def __init__(
        self, step: int, folder: str, parties: int = 2, timeout: float = SAFETY_TIMEOUT_S
    ) -> None:
        self.step, self.folder, self.parties, self.timeout = step, folder, parties, timeout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{os.getpid()}.arrived").touch()
        deadline = time.monotonic() + self.timeout
        while len(list(folder.glob("*.arrived"))) < self.parties:
            if time.monotonic() > deadline:
                raise RuntimeError(f"met no partner at step {self.step} in {self.timeout:.0f} s")
            time.sleep(0.05)


class PauseOnSave(Callback):
    """Once, on the ``call``-th checkpoint dump (counted over the whole run, 1-based): create
    ``paused`` and wait for ``release``, before that checkpoint's file is written.

    Within one save point Lightning writes the top-k file first and ``last.ckpt`` second, so
    pausing on the second dump of an epoch and killing the process leaves the state a kill during
    a (slow, large) checkpoint save leaves: the new top-k file and the previous ``last.ckpt``.
    """

    def __init__(
        self, call: int, paused: str, release: str, timeout: float = SAFETY_TIMEOUT_S
    ) -> None:
        self.call, self.paused, self.release, self.timeout = call, paused, release, timeout
        self.calls = 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.calls += 1
        paused, release = Path(self.paused), Path(self.release)
        if self.calls != self.call or paused.exists():
            return
        paused.write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def pause_at(step: int, folder: Path, job: int | None = None) -> str:
    """The override that pauses a run at ``step`` (in sweep job ``job`` only, when given), with
    ``paused``/``release`` in ``folder``."""
    only = f", job: {job}" if job is not None else ""
    return (
        "+callbacks.pause={_target_: tests.injected.PauseAtStep, "
        f"step: {step}, paused: '{folder}/paused', release: '{folder}/release'{only}}}"
    )


def wait_paused(
    folder: Path, proc: subprocess.Popen, log: Path | None = None, timeout: float = SAFETY_TIMEOUT_S
) -> str:
    """Wait until the run ``proc`` has paused (``folder/paused`` exists); return that file's text.

    Fails at once if ``proc`` ends first (with the tail of ``log``, its output, when given), and
    after the safety ``timeout`` if neither happens.
    """
    paused = folder / "paused"
    deadline = time.monotonic() + timeout
    while not paused.exists():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise AssertionError(f"the run exited {proc.returncode} before pausing:\n{tail}")
        assert time.monotonic() < deadline, f"the run did not pause within {timeout:.0f} s"
        time.sleep(0.1)
    return paused.read_text()


def release(folder: Path) -> None:
    """Let the run paused by ``pause_at(step, folder)`` go on."""
    (folder / "release").touch()
