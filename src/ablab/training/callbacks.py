"""Callbacks ablab adds to Lightning's: a non-finite loss guard, the gradient norm, a logged batch
preview, the random-number state in every checkpoint, a ``last.ckpt`` that is always the last
epoch, the best value of the task's monitored metric, the points where held metrics reach the store, a
training budget that ends at a plateau of the training loss, and the run's record of why
training stopped and which weights were tested."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytorch_lightning as pl
import torch
from annotated_types import Ge, Gt
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from mlflow.entities import RunTag
from pytorch_lightning.callbacks import Callback, EarlyStopping, Timer
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor

from ablab.data.base import ImageDataModule
from ablab.data.preview import batch_grid
from ablab.errors import ConfigError
from ablab.tracking.mlflow import ResumableMLFlowLogger


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""

    failure_kind = "nonfinite_loss"


class NonFiniteLossGuard(Callback):
    """Stop at the first step whose loss is NaN/inf, instead of training on garbage."""

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # {}: no loss
        if loss is not None and not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at epoch {trainer.current_epoch}, "
                f"step {trainer.global_step}"
            )


class GradientNorm(Callback):
    """Log the norm of all parameters' gradients, ‖∂L/∂θ‖, at every optimizer step: the
    quantity that explodes in a recurrent net (Pascanu et al. 2013, "On the difficulty of training
    recurrent neural networks") and that ``trainer.gradient_clip_val`` caps.

    Read in ``on_before_optimizer_step``: after the backward (and the gradient accumulation),
    after the AMP loss scale has been divided out, and before the trainer clips. So it is the
    gradient clipping acts on, not what it leaves: with clipping on, the update's gradient has
    norm min(‖g‖, clip). Under DDP the gradient is already the all-reduced one, the same on every
    rank. Logged as ``train/grad_norm`` (the step's value, every ``log_every_n_steps``) and
    ``train/grad_norm_max`` (the largest of every step of the epoch, Lightning's ``reduce_fx``:
    a spike between two logged steps is not missed). Over the parameters of the optimizer about
    to step; with several optimizers (a GAN), one norm each: ``train/grad_norm/<i>``.
    """

    def __init__(self, norm_type: Annotated[float, Gt(0)] = 2.0) -> None:
        self.norm_type = float(norm_type)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # The parameters this optimizer steps: a task with several (a GAN's G and D) gets a
        # norm per optimizer, train/grad_norm/<i>, not one over gradients another step left.
        grads = [
            p.grad
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, self.norm_type).float()
        index = trainer.optimizers.index(optimizer) if len(trainer.optimizers) > 1 else None
        suffix = "" if index is None else f"/{index}"
        pl_module.log(f"train/grad_norm{suffix}", norm, on_step=True, on_epoch=False)
        pl_module.log(
            f"train/grad_norm_max{suffix}", norm, on_step=False, on_epoch=True, reduce_fx="max"
        )


class LogBatchPreview(Callback):
    """Log one training batch, as the model sees it after augmentation, as a labelled PNG grid."""

    def __init__(
        self, max_images: int = 32, artifact_file: str = "samples/train_batch.png"
    ) -> None:
        self.max_images = max_images
        self.artifact_file = artifact_file

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger, datamodule = trainer.logger, trainer.datamodule
        if not (trainer.is_global_zero and isinstance(logger, MLFlowLogger)):
            return
        if not isinstance(datamodule, ImageDataModule):  # a preview of images, and of nothing else
            return
        x, y = next(iter(datamodule.train_dataloader()))
        n = self.max_images
        with torch.no_grad():  # draw 0 without advancing the counter: training starts there too
            x, y = datamodule.augmentation.draw(x[:n], y[:n], index=0)
        labels = y.argmax(1) if y.dim() == 2 else y  # mixed targets: the dominant class
        grid = batch_grid(x, labels, datamodule.class_names, self.max_images)
        logger.experiment.log_image(logger.run_id, grid, artifact_file=self.artifact_file)


class MonitorBest(Callback):
    """best = max (or min) over validation epochs of the task's monitored metric, logged as
    ``<monitor>_best`` after each validation, at the step the metric itself was logged at, and put
    in ``trainer.callback_metrics``.

    This is what ``train`` returns to a sweeper (Optuna), so it must not depend on
    checkpointing: Lightning turns the checkpoint callback off under ``fast_dev_run``, and a
    ``ddp_spawn`` run's checkpoint callback keeps its best score in the worker process, while
    ``callback_metrics`` come back to the main one. The sanity-check validation does not count;
    a non-finite value is never best (a run that validated but never had a finite value scores
    the worst value, ∓inf); the value is saved in checkpoints, so a resumed run continues it (a
    checkpoint written before this callback existed gives it the checkpoint callback's best).
    """

    def __init__(self, monitor: str, mode: str) -> None:
        self.monitor, self.mode = monitor, mode
        self.name = f"{monitor}_best"
        self.best: float | None = None
        self.validated = False

    @property
    def score(self) -> float | None:
        """The best value; the worst possible one when validation ran but nothing was finite."""
        if self.best is None and self.validated:
            return -math.inf if self.mode == "max" else math.inf
        return self.best

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        if self.best is None and not self.validated:
            self.best = self._checkpointed_best(trainer)
        self.validated, value = True, float(value)
        if math.isfinite(value) and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        ):
            self.best = value
        self.publish(trainer)
        if self.best is not None:
            # Lightning logs validation metrics at the count of optimizer steps taken so far,
            # which global_step is not (yet) in every loop: the best is logged beside its metric.
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in trainer.loggers:  # rank 0 only: loggers log there alone
                logger.log_metrics({self.name: self.best}, step=step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.publish(trainer)  # also when fit had nothing left to do (a resumed finished run)

    def publish(self, trainer: pl.Trainer) -> None:
        if self.score is not None:
            trainer.callback_metrics[self.name] = torch.tensor(self.score)

    def _checkpointed_best(self, trainer: pl.Trainer) -> float | None:
        checkpointing = trainer.checkpoint_callback
        score = getattr(checkpointing, "best_model_score", None)
        if score is None or getattr(checkpointing, "monitor", None) != self.monitor:
            return None
        return float(score) if math.isfinite(float(score)) else None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "validated": self.validated}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.validated = state_dict.get("validated", self.best is not None)


class FlushMetrics(Callback):
    """Where the metrics the logger holds (:class:`ablab.tracking.mlflow.ResumableMLFlowLogger`)
    are made durable, so that a killed job's run, once resumed, has every value exactly once:

    - in every checkpoint (:meth:`state_dict`): a job resumed from it logs them again
      (:meth:`load_state_dict`; values the store already has are dropped), and the steps after
      it are trained, and logged, again;
    - written to the store as a training epoch's end-of-epoch values are logged (Lightning logs
      them after every ``on_train_epoch_end`` hook): they come after the epoch's checkpoint, so
      they are in none and are never trained again; at the next epoch's start, anything still
      held (nothing, unless the epoch logged no end-of-epoch value) is written. The write is
      then part of the epoch's end, like validation, not of the next epoch's first step;
    - written at the end of each stage (fit, a lone validate, test), on any exception and when
      the run ends (the logger's ``finalize``).

    One store write per epoch instead of one per logging call (two to four per epoch and one
    per ``log_every_n_steps`` steps).
    """

    def __init__(self, logger: ResumableMLFlowLogger) -> None:
        self.logger = logger

    def _flush(self, *args: Any) -> None:
        self.logger.flush()

    on_train_epoch_start = on_train_end = on_test_end = on_predict_end = _flush

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.logger.flush_after_next_log()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # in fit, the next epoch start writes them
            self.logger.flush()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        try:
            self.logger.flush()
        except Exception as err:  # the store itself may be what failed; keep the first error
            exception.add_note(f"ablab: metrics held since the last write were lost: {err}")

    def state_dict(self) -> dict[str, Any]:
        return {"pending": self.logger.held()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logger.hold(state_dict["pending"])


class RngState(Callback):
    """Save the Python, NumPy and torch (CPU and CUDA) random states in each checkpoint and
    restore them on resume, so dropout and other draws continue where the job stopped.

    Lightning checkpoints hold weights, optimizer, scheduler and loop state but not these
    generators; the data order and augmentation draws are seeded per epoch and per batch already.
    """

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        # NumPy's key array as a list: checkpoints load with torch.load(weights_only=True),
        # which refuses to unpickle ndarrays.
        name, keys, *rest = states["numpy"]
        states["numpy"] = (name, keys.tolist(), *rest)
        return {"rng_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = dict(state_dict["rng_states"])
        name, keys, *rest = states["numpy"]
        states["numpy"] = (name, np.asarray(keys, dtype=np.uint32), *rest)
        _set_rng_states(states)


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every save point.

    Lightning writes "last" only in a step where it also saved a top-k checkpoint, i.e. when the
    monitored metric improved: after a plateau ``last.ckpt`` stays at the best epoch, and a job
    killed then resumes from there, silently throwing the epochs since away. Here, whenever the
    parent saved nothing at an epoch's save point, ``last.ckpt`` is written anyway.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_anyway(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_anyway(trainer)

    def _save_last_anyway(self, trainer: pl.Trainer) -> None:
        # skipped when the parent just saved at this step (its last.ckpt is current)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class Plateau(EarlyStopping):
    """Stop once ``monitor`` has not improved on its best by r · |best| for ``patience`` epochs.

    A "train to a plateau" budget beside a fixed epoch count: at the end of every training epoch
    the epoch value of ``monitor`` (the training loss, ``train/loss``, by default) counts as an
    improvement when it is below best − r · |best| in ``min`` mode (above best + r · |best| in
    ``max`` mode), where best is the best epoch value so far and r = ``min_rel_improvement``
    (0.01: 1%; 0: any improvement at all). After ``patience`` epochs in a row without one,
    training stops; ``trainer.max_epochs`` stays the cap. The run's ``stopped`` tag then says
    which ended it (``plateau at epoch 12`` or ``max_epochs at epoch 59``, :class:`StopReason`).

    Lightning's ``EarlyStopping`` with a relative ``min_delta`` (r · |best|, updated at each
    check), checked at each training epoch's end (where ``train/loss`` is the whole epoch's
    mean, over every DDP rank) instead of after validation. Its state (best, epochs waited) is
    saved in checkpoints, so a resumed run keeps counting.
    """

    def __init__(
        self,
        monitor: str = "train/loss",
        min_rel_improvement: Annotated[float, Ge(0)] = 0.01,
        patience: Annotated[int, Ge(1)] = 5,
        mode: str = "min",
        check_on_train_epoch_end: bool = True,
        **kwargs: Any,
    ) -> None:
        if not min_rel_improvement >= 0:
            raise ConfigError(
                f"min_rel_improvement={min_rel_improvement}: must be >= 0 (0.01 = 1%)"
            )
        if patience < 1:
            raise ConfigError(f"patience={patience}: must be an integer >= 1 (epochs)")
        super().__init__(
            monitor=monitor,
            patience=patience,
            mode=mode,
            check_on_train_epoch_end=check_on_train_epoch_end,
            **kwargs,
        )
        self.min_rel_improvement = min_rel_improvement

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        # EarlyStopping counts an improvement when current - min_delta beats best, min_delta
        # being signed by the mode: a relative threshold is r · |best|, renewed at every check
        best = self.best_score
        margin = self.min_rel_improvement * float(best.abs()) if torch.isfinite(best) else 0.0
        self.min_delta = margin if self.monitor_op == torch.gt else -margin
        return super()._evaluate_stopping_criteria(current)


def last_epoch(trainer: pl.Trainer) -> int:
    """The index of the last training epoch started (−1 before any): ``epoch`` as Lightning
    logs it and names checkpoints (``epoch007.ckpt``)."""
    return trainer.fit_loop.epoch_progress.current.started - 1


def set_run_tags(trainer: pl.Trainer, tags: dict[str, str]) -> None:
    """Set ``tags`` on the run of every MLflow logger of the trainer (global rank 0 only)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            entries = [RunTag(key, value) for key, value in tags.items()]
            logger.experiment.log_batch(logger.run_id, tags=entries)


class StopReason(Callback):
    """Tag the run with why training ended, when it ends without an error: ``stopped``
    (``plateau at epoch 12``), ``stopped.kind`` and ``stopped_epoch`` (the last epoch trained,
    0-based as in checkpoint names).

    The kinds: ``plateau`` (:class:`Plateau`), ``early_stopping`` (Lightning's
    ``EarlyStopping``, ``callbacks=early_stopping``), ``max_steps``, ``max_time``,
    ``max_epochs``, else ``should_stop`` (something else set ``trainer.should_stop``).
    """

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        kind, epoch = stop_kind(trainer), last_epoch(trainer)
        self.tags = {"stopped": f"{kind} at epoch {epoch}", "stopped.kind": kind,
                     "stopped_epoch": str(epoch)}  # fmt: skip
        set_run_tags(trainer, self.tags)


def stop_kind(trainer: pl.Trainer) -> str:
    """What ended ``fit`` (see :class:`StopReason`)."""
    for callback in trainer.callbacks:
        stopped = getattr(callback, "stopping_reason", EarlyStoppingReason.NOT_STOPPED)
        if isinstance(callback, EarlyStopping) and stopped != EarlyStoppingReason.NOT_STOPPED:
            return "plateau" if isinstance(callback, Plateau) else "early_stopping"
    if 0 <= trainer.max_steps <= trainer.global_step:
        return "max_steps"
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    if timer is not None and timer.time_remaining() is not None and timer.time_remaining() <= 0:
        return "max_time"
    max_epochs = trainer.max_epochs
    if max_epochs is not None and 0 <= max_epochs <= trainer.current_epoch:
        return "max_epochs"
    return "should_stop"


class TestedWeights(Callback):
    """Tag the run with the weights ``trainer.test`` scores: ``tested_weights`` (``best val/acc
    checkpoint (epoch 7)``, ``last epoch (9)``...), ``tested_weights.kind`` (``best``, ``last``
    or ``checkpoint``) and ``tested_epoch`` (the epoch they were saved at, 0-based as Lightning's
    ``epoch`` metric and checkpoint names: ``val/acc`` at that epoch is their validation score).

    A checkpoint file is ``best`` when its own checkpoint-callback state names it the best
    one, ``last`` when it names it the last one (``last.ckpt``), else ``checkpoint``; testing
    the weights in memory after ``fit`` (no checkpointing) is ``last`` (``initial``, epoch −1,
    when no epoch was trained).
    """

    __test__ = False  # named Test…: not a class of tests for pytest to collect

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.tags = tested_weights(trainer)
        set_run_tags(trainer, self.tags)


def tested_weights(trainer: pl.Trainer) -> dict[str, str]:
    """The tags :class:`TestedWeights` sets, for the checkpoint ``trainer.test`` loaded."""
    if not trainer.ckpt_path:
        epoch = last_epoch(trainer)
        kind, text = ("last", f"last epoch ({epoch})") if epoch >= 0 else ("initial", "initial")
    else:
        path = Path(trainer.ckpt_path)
        # mmap: the weights are not read again, only the few values wanted here
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch = state["epoch"]
        kind, text = "checkpoint", f"checkpoint {path.name} (epoch {epoch})"
        for key, saved in state.get("callbacks", {}).items():
            if "ModelCheckpoint" not in key:
                continue
            # by name: a job folder set aside (previous/<run id>/) keeps its file names
            monitored = saved.get("monitor")  # None: it kept every epoch, none is best
            if monitored and Path(saved.get("best_model_path") or "").name == path.name:
                kind, text = "best", f"best {monitored} checkpoint (epoch {epoch})"
            elif Path(saved.get("last_model_path") or "").name == path.name:
                kind, text = "last", f"{path.name} (epoch {epoch})"
    return {"tested_weights": text, "tested_weights.kind": kind, "tested_epoch": str(epoch)}
