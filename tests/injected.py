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
