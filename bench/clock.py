"""A step clock injected into ``python -m ablab.train`` by ``bench/run.py`` (``make bench``).

Added with Hydra overrides, with ``bench/`` on ``PYTHONPATH``::

    +callbacks.bench_clock._target_=clock.StepClock +callbacks.bench_clock.path=FILE

(``+callbacks.bench_clock.folder=DIR`` in a sweep: one file per job).

It records ``time.time()`` (wall-clock, comparable across processes: the parent compares it with
its spawn time) at every ``on_train_epoch_start`` and ``on_train_batch_end`` and writes them as JSON
at ``on_train_end``. On a GPU it synchronises at each epoch's start and last batch only, so the
epoch's queued kernels are inside the epoch and every other step keeps its CPU/GPU overlap.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from barrier import meet


class StepClock(pl.Callback):
    """Epoch starts and batch ends as ``time.time()``, plus the torch threads and process id."""

    def __init__(
        self, path: str | None = None, folder: str | None = None, barrier: str | None = None
    ) -> None:
        """Write to ``path``, or to a new ``clock-<pid>-<ns>.json`` in ``folder``: a sweep's jobs
        share their overrides, and the sweep resolves them before any job has an output folder.

        ``barrier``: a folder shared with one other process (a paired measurement): training
        starts once both have arrived (:func:`meet`), and the wait is recorded."""
        if (path is None) == (folder is None):
            raise ValueError("StepClock takes a path or a folder")
        self.path = Path(path) if path else None
        self.folder = Path(folder) if folder else None
        self.barrier = Path(barrier) if barrier else None
        self.barrier_wait_s = 0.0
        self.epochs: list[dict[str, Any]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.barrier is not None:
            self.barrier_wait_s = meet(self.barrier)

    def _sync(self, module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self.epochs.append({"start": time.time(), "batch_ends": [], "images": []})

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self._sync(pl_module)
        epoch = self.epochs[-1]
        epoch["batch_ends"].append(time.time())
        images = batch[0] if isinstance(batch, list | tuple) else batch
        epoch["images"].append(len(images) if isinstance(images, torch.Tensor) else None)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {
            "epochs": self.epochs,
            "threads": torch.get_num_threads(),
            "pid": os.getpid(),
            "device": str(pl_module.device),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "barrier_wait_s": self.barrier_wait_s,
        }
        path = self.path or self.folder / f"clock-{os.getpid()}-{time.time_ns()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
