"""Failures injected into real runs, to test what tracking records when training breaks."""

from __future__ import annotations

from pytorch_lightning.callbacks import Callback


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
    a rerun of the same command finds ``paused`` and does not pause again.
    """

    def __init__(self, step: int, paused: str, release: str, timeout: float = 300) -> None:
        self.step, self.paused, self.release, self.timeout = step, paused, release, timeout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import time
        from pathlib import Path

        paused, release = Path(self.paused), Path(self.release)
        if trainer.global_step != self.step or paused.exists():
            return
        import os

        # the SLURM job that paused, for scontrol requeue: an array task as <array>_<task>
        # (task 0's SLURM_JOB_ID is the array's own id, which would requeue every task)
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        paused.write_text(f"{array}_{task}" if array else os.environ.get("SLURM_JOB_ID", ""))
        deadline = time.monotonic() + self.timeout
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class PauseOnSave(Callback):
    """Once, on the ``call``-th checkpoint dump (counted over the whole run, 1-based): create
    ``paused`` and wait for ``release``, before that checkpoint's file is written.

    Within one save point Lightning writes the top-k file first and ``last.ckpt`` second, so
    pausing on the second dump of an epoch and killing the process leaves the state a kill during
    a (slow, large) checkpoint save leaves: the new top-k file and the previous ``last.ckpt``.
    """

    def __init__(self, call: int, paused: str, release: str, timeout: float = 900) -> None:
        self.call, self.paused, self.release, self.timeout = call, paused, release, timeout
        self.calls = 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        import time
        from pathlib import Path

        self.calls += 1
        paused, release = Path(self.paused), Path(self.release)
        if self.calls != self.call or paused.exists():
            return
        paused.write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
