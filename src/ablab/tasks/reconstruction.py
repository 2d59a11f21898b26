"""Image reconstruction: an autoencoder rebuilds its input, clean or corrupted.

The network (``model=ae_conv|ae_mlp``: ``forward`` x -> x̂ of x's shape, ``encode`` x -> code) is
injected; the loss, from the ``loss`` group, is a per-pixel regression (``mse`` by default),
taken between x̂ and the clean standardised image, the space the network reads and writes.

With ``data.noise`` (:mod:`ablab.data.noise`) and ``denoise`` the network is fed x̃ ~ q(x̃ | x)
in training and still asked for x: a denoising autoencoder (Vincent et al. 2008, "Extracting and
composing robust features with denoising autoencoders"). Training draws are fresh: batch k of
process r draws from a generator seeded with (seeds.augmentation, r, k), and the counter k is a
buffer, saved in checkpoints, so a resumed run continues the draws. ``denoise=false`` trains on
clean inputs (a plain autoencoder, Hinton & Salakhutdinov 2006) and is scored on noisy ones too.

Every stage scores, in pixel space (x̂ mapped back through the data's standardisation, clamped
to [0, 1]): ``<stage>/mse`` = mean (x̂ − x)² and ``<stage>/psnr`` = 10·log10(1 / mse) over the
stage's whole epoch (torchmetrics; the PSNR of the epoch's MSE, data range 1). Training scores
what it was fed (noisy inputs when denoising). Validation and test score the clean input and,
with noise, ``<stage>/noisy_mse`` and ``noisy_psnr``: x̃ rebuilt towards x, where x̃ is drawn
from a generator seeded by (data seed, split, rank, batch index), so every epoch and every
variant of a study sees the same noisy held-out images (``tested_val`` sees ``val``'s) when
they share the batch size and the number of processes (the draws are per batch).

A linear probe measures what the code keeps (the usual test of a representation): at the start
of the test stage the clean training split (``data.train_eval_limit`` caps it) is encoded by the
tested weights, in eval mode, and scikit-learn's logistic regression is fitted on the
standardised codes; test then logs ``test/probe_acc`` (clean test codes),
``test/probe_acc_noisy`` (codes of the fixed noisy test images, with noise) and the same under
``tested_val/``. Under DDP every rank fits its own probe on the whole training split with the
same weights (no communication; the work is repeated, and the probes agree up to floating-point
differences between devices) and scores its share of the test set; torchmetrics reduces the
accuracy over the ranks.

At every validation epoch's end (not the sanity check) the first ``grid_size`` validation
images are logged, on an MLflow run, as ``reconstruction/epoch_NNN.png``: rows input, noisy
input (with noise) and the reconstruction of the last row above it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image import PeakSignalNoiseRatio

from ablab.data.module import TRAIN_EVAL
from ablab.data.noise import Corruption, noise_seed, seeded_generator
from ablab.data.preview import MIN_SIDE
from ablab.errors import ConfigError
from ablab.tasks.base import OptimizerFactory, StagedTask, tested_stage

# Epoch values are computed by torchmetrics over every DDP rank (see the classifier).
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(tested_)?(train|train_eval|val|test)/"
    r"(loss|mse|psnr|noisy_mse|noisy_psnr|probe_acc|probe_acc_noisy)'",
    category=PossibleUserWarning,
)

#: Losses that fit a per-pixel target.
RECONSTRUCTION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)
TESTED_VAL = tested_stage("val")
STAGES = ("train", "val", "test", TRAIN_EVAL, TESTED_VAL, tested_stage(TRAIN_EVAL))
#: Stages that score the fixed noisy inputs beside the clean ones.
EVALUATED = STAGES[1:]
#: Stages the linear probe is scored on (held-out images: the probe was fitted on training ones).
PROBED = ("test", TESTED_VAL)
#: What a data module must offer: the task corrupts pixels, so it maps batches to them and back.
IMAGE_DATA = ("standardize", "unstandardize", "corruption")


def pixel_metrics(prefix: str) -> MetricCollection:
    """``mse`` and ``psnr`` (data range 1) over an epoch, for pixels in [0, 1]."""
    return MetricCollection(
        {"mse": MeanSquaredError(), "psnr": PeakSignalNoiseRatio(data_range=1.0)}, prefix=prefix
    )


class ReconstructionModule(StagedTask):
    """x̂ = net(x̃), x̃ = x, or a corrupted x in training when denoising; loss = loss_fn(x̂, x) on
    standardised images; mse and psnr of x̂ against x in pixels (and of noisy inputs' x̂)."""

    components: ClassVar[dict[str, str]] = {"loss": "loss"}

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        loss: nn.Module,
        denoise: bool = True,
        probe: bool = True,
        grid_size: int = 8,
        monitor: str = "val/mse",
        mode: Literal["min", "max"] = "min",
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        if grid_size < 0:
            raise ConfigError(f"task.grid_size={grid_size}: a number of images, 0 for none")
        self.net, self.loss_fn = net, loss
        self.denoise, self.probe, self.grid_size = denoise, probe, grid_size
        for stage in STAGES:
            setattr(self, f"{stage}_metrics", pixel_metrics(f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric())
        for stage in EVALUATED:
            setattr(self, f"{stage}_noisy_metrics", pixel_metrics(f"{stage}/noisy_"))
        # Training corruption draws made so far: a buffer, so checkpoints carry it.
        self.register_buffer("noise_draws", torch.zeros((), dtype=torch.long))
        # Bound to the data in check(): until then, no corruption and no probe metrics.
        self.noise = Corruption()
        self._data: Any = None
        self.data_seed = self.train_seed = 0
        self._probe: Any = None
        self._grid: list[Tensor] = []

    # -- what the core asks --------------------------------------------------------------------
    def check(self, datamodule: Any) -> None:
        """The data must be images the task can map to pixels and back (an image data module),
        the loss a per-pixel regression, the net an autoencoder: one line each otherwise. Binds
        the data's corruption, its seeds and (for the probe) its class count."""
        if not all(hasattr(datamodule, name) for name in IMAGE_DATA):
            raise ConfigError(
                "task=reconstruction needs image data (data=digits|mnist|fashion_mnist|cifar10|"
                f"cifar100|synthetic|image_folder); {type(datamodule).__name__} yields no images"
            )
        if not isinstance(self.loss_fn, RECONSTRUCTION_LOSSES):
            func = getattr(self.loss_fn, "func", None)  # a partial (balanced_cross_entropy...)
            name = getattr(func, "__name__", type(self.loss_fn).__name__)
            raise ConfigError(
                f"loss {name} does not fit task=reconstruction (a per-pixel regression); use "
                "loss=mse"
            )
        if not callable(getattr(self.net, "encode", None)):
            raise ConfigError(
                f"model {type(self.net).__name__} has no encode(): task=reconstruction needs an "
                "autoencoder (model=ae_conv|ae_mlp)"
            )
        example = datamodule.example_input()
        shape = self.dry_output_shape(self.net, example)
        if shape != tuple(example.shape):
            raise ConfigError(
                f"model output {shape} is not the input's shape {tuple(example.shape)}: "
                "task=reconstruction needs an autoencoder of the data's image size and channels"
            )
        self._data, self.noise = datamodule, datamodule.corruption
        self.data_seed = datamodule.seed
        self.train_seed = getattr(datamodule.augmentation, "seed", datamodule.seed)
        if self.probe:
            for stage in PROBED:  # probe_acc, and probe_acc_noisy on the fixed noisy inputs
                for kind, postfix in (("probe", ""), ("probe_noisy", "_noisy")):
                    accuracy = MulticlassAccuracy(datamodule.num_classes, average="micro")
                    metrics = MetricCollection(
                        {"probe_acc": accuracy}, prefix=f"{stage}/", postfix=postfix
                    )
                    setattr(self, f"{stage}_{kind}_metrics", metrics)

    def validation_metric_names(self) -> set[str]:
        names = {"val/loss", *self.val_metrics.keys()}
        return names | (set(self.val_noisy_metrics.keys()) if self.noise.active else set())

    def training_metric_names(self) -> set[str]:
        return {"train/loss", *self.train_metrics.keys()}

    def epoch_metrics(self, stage: str) -> list[MetricCollection]:
        """Clean scores (on the progress bar), then the noisy ones and the probe's."""
        collections = [getattr(self, f"{stage}_metrics")]
        if stage in EVALUATED and self.noise.active:
            collections.append(getattr(self, f"{stage}_noisy_metrics"))
        if stage in PROBED and self._probe is not None:
            collections.append(getattr(self, f"{stage}_probe_metrics"))
            if self.noise.active:
                collections.append(getattr(self, f"{stage}_probe_noisy_metrics"))
        return collections

    # -- steps ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def pixels(self, x: Tensor) -> Tensor:
        """Standardised images back in [0, 1] (the clamp removes float error, and a decoder's
        overshoot from what is scored)."""
        return self._data.unstandardize(x).clamp(0.0, 1.0)

    def corrupted(self, clean: Tensor, generator: torch.Generator) -> Tensor:
        """The standardised input of corrupted pixels ``q(x̃ | clean)``."""
        return self._data.standardize(self.noise(clean, generator))

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        """A training step: fed a corrupted copy when denoising, asked for the clean image."""
        x, _ = batch
        inputs = x
        if self.denoise and self.noise.active:
            draw = int(self.noise_draws)
            generator = seeded_generator(noise_seed(self.train_seed, stage, self.global_rank, draw))
            inputs = self.corrupted(self.pixels(x), generator)
            # Out of place: a state dict taken earlier (a checkpoint being written) keeps its count.
            self.noise_draws = self.noise_draws + 1
        out = self.net(inputs)
        loss = self.loss_fn(out, x)
        getattr(self, f"{stage}_metrics").update(self.pixels(out.detach()), self.pixels(x))
        getattr(self, f"{stage}_loss").update(loss.detach(), len(x))
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str, split: str):
        """Score the clean batch, the fixed noisy copy of it (with noise) and the probe."""
        x, y = batch
        clean = self.pixels(x)
        out = self.net(x)
        getattr(self, f"{stage}_loss").update(self.loss_fn(out, x), len(x))
        getattr(self, f"{stage}_metrics").update(self.pixels(out), clean)
        noisy = None
        rebuilt = out
        if self.noise.active:
            seed = noise_seed(self.data_seed, split, self.global_rank, batch_idx)
            noisy = self.corrupted(clean, seeded_generator(seed))
            rebuilt = self.net(noisy)
            getattr(self, f"{stage}_noisy_metrics").update(self.pixels(rebuilt), clean)
        if stage in PROBED and self._probe is not None:
            getattr(self, f"{stage}_probe_metrics").update(self.probe_predict(x), y)
            if noisy is not None:
                getattr(self, f"{stage}_probe_noisy_metrics").update(self.probe_predict(noisy), y)
        if (
            stage == "val"
            and batch_idx == 0
            and self.grid_size
            and not self.trainer.sanity_checking
        ):
            rows = [clean] + ([self.pixels(noisy)] if noisy is not None else [])
            self._grid = [r[: self.grid_size].detach().cpu() for r in (*rows, self.pixels(rebuilt))]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        loader = self._validation_sets[dataloader_idx]
        self._evaluate(batch, batch_idx, loader, loader)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._test_splits = self.test_sets()
        self._probe = self.fit_probe() if self.probe else None

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(
            batch, batch_idx, self._test_stages[dataloader_idx], self._test_splits[dataloader_idx]
        )

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        grid, self._grid = self._grid, []
        logger = self.logger
        if grid and self.trainer.is_global_zero and isinstance(logger, MLFlowLogger):
            artifact = f"reconstruction/epoch_{self.current_epoch:03d}.png"
            logger.experiment.log_image(logger.run_id, image_grid(grid), artifact_file=artifact)

    # -- the linear probe ----------------------------------------------------------------------
    def fit_probe(self) -> Any:
        """Logistic regression on the standardised codes of the clean training split (in eval
        mode, no gradients), fitted with a fixed ``random_state``."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        codes, labels = [], []
        training = self.net.training
        self.net.eval()
        # under the trainer's precision (autocast in bf16-/16-mixed), as test encodes the
        # images the probe then classifies: one precision for the codes it fits and scores
        precision = self._trainer.precision_plugin.forward_context() if self._trainer else None
        try:
            with torch.no_grad(), precision or contextlib.nullcontext():
                for x, y in self._data.clean_train_dataloader():
                    x = self._data.standardize(x.to(self.device))
                    codes.append(self.net.encode(x).float().cpu())
                    labels.append(y)
        finally:
            self.net.train(training)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
        probe.fit(torch.cat(codes).numpy(), torch.cat(labels).numpy())
        return probe

    def probe_predict(self, x: Tensor) -> Tensor:
        """The probe's classes for standardised images x."""
        codes = self.net.encode(x).float().cpu().numpy()
        return torch.as_tensor(self._probe.predict(codes), device=x.device)


def image_grid(rows: list[Tensor]) -> np.ndarray:
    """Rows of (n, C, H, W) images in [0, 1] as one (H', W', 3) uint8 picture, each image shown
    at least ``MIN_SIDE`` pixels wide (nearest neighbour) with a 2-pixel white border."""
    from torchvision.utils import make_grid

    images = torch.cat(rows).float()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    scale = math.ceil(MIN_SIDE / images.shape[-1])
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(images, nrow=len(rows[0]), padding=2, pad_value=1.0)  # (3, H', W')
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
