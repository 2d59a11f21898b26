"""The reconstruction task's scores against a hand computation, its seeded noise, its probe and
its checks."""

from __future__ import annotations

import math
import warnings
from functools import partial
from itertools import islice

import pytest
import pytorch_lightning as pl
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from ablab.data import AddingProblem, DigitsDataModule
from ablab.data.noise import Corruption, noise_seed, seeded_generator
from ablab.errors import ConfigError
from ablab.models.autoencoder import MLPAutoencoder
from ablab.models.lenet import LeNet5
from ablab.tasks.classifier import ClassifierModule
from ablab.tasks.reconstruction import ReconstructionModule, image_grid


class Scaled(nn.Module):
    """x̂ = scale · x; the code is the flattened image (a stand-in autoencoder with known output)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.seen: list[Tensor] = []

    def encode(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.scale * x


def digits(**kw) -> DigitsDataModule:
    """scikit-learn's digits at their own 8x8: no resizing, batches of 64 over 1,797 images."""
    dm = DigitsDataModule(image_size=8, **kw)
    dm.setup()
    return dm


def task(net: nn.Module, dm=None, loss: nn.Module | None = None, **kw) -> ReconstructionModule:
    module = ReconstructionModule(net, partial(torch.optim.SGD, lr=0.0), None,
                                  loss or nn.MSELoss(), **kw)  # fmt: skip
    if dm is not None:
        module.check(dm)
    return module


def trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, **kw)  # fmt: skip


def quiet(run, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and small datasets
        return run(*args, **kw)


@pytest.mark.parametrize("normalize", ["channel", "per_pixel_mean", "none"])
def test_pixel_mse_and_psnr_are_computed_on_the_unstandardised_clamped_output(normalize) -> None:
    dm = digits(normalize=normalize)
    net = Scaled(0.5)
    (scores,) = quiet(trainer().validate, task(net, dm), datamodule=dm)
    p = dm.splits["val"].tensors[0]
    rebuilt = dm.unstandardize(0.5 * dm.standardize(p)).clamp(0, 1)
    mse = (rebuilt - p).pow(2).mean().item()
    assert scores["val/mse"] == pytest.approx(mse, rel=1e-4)
    assert scores["val/psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-4)
    standardised = dm.standardize(p)  # the loss is taken where the net works
    assert scores["val/loss"] == pytest.approx((0.5 * standardised - standardised).pow(2).mean()
                                               .item(), rel=1e-4)  # fmt: skip
    assert "val/noisy_mse" not in scores  # no noise: nothing noisy to score


def test_held_out_noise_is_fixed_by_data_seed_split_and_batch() -> None:
    dm = digits(noise="mask", noise_level=0.5)
    module = task(Scaled(1.0), dm, probe=False)
    (first,) = quiet(trainer().validate, module, datamodule=dm)
    assert first["val/mse"] == pytest.approx(0.0, abs=1e-10)  # the identity rebuilds clean x
    # the identity's noisy score is the corruption's own error, batch b drawn from its seed
    p = dm.splits["val"].tensors[0]
    corrupt = Corruption("mask", 0.5)
    noisy = torch.cat([
        corrupt(batch, seeded_generator(noise_seed(dm.seed, "val", 0, b)))
        for b, batch in enumerate(p.split(dm.batch_size))
    ])  # fmt: skip
    assert first["val/noisy_mse"] == pytest.approx((noisy - p).pow(2).mean().item(), rel=1e-5)
    (again,) = quiet(trainer().validate, module, datamodule=dm)
    assert again == first  # every epoch sees the same noisy images
    tested = quiet(trainer().test, module, datamodule=dm)[0]  # one dict per loader, alike
    assert tested["tested_val/noisy_mse"] == first["val/noisy_mse"]  # so do the tested weights
    assert tested["test/noisy_mse"] != first["val/noisy_mse"]


def test_training_inputs_are_fresh_noise_counted_in_the_state_dict() -> None:
    dm = digits(noise="gaussian", noise_level=0.3)
    net = Scaled(1.0)
    module = task(net, dm, probe=False)
    quiet(trainer(max_steps=3, limit_val_batches=0).fit, module, datamodule=dm)
    assert int(module.noise_draws) == 3 and len(net.seen) == 3
    clean = [x for x, _ in islice(dm.train_dataloader(), 3)]  # epoch 0's order
    for k, (seen, p) in enumerate(zip(net.seen, clean, strict=True)):
        generator = seeded_generator(noise_seed(dm.augmentation.seed, "train", 0, k))
        expected = dm.standardize(Corruption("gaussian", 0.3)(p, generator))
        assert torch.allclose(seen, expected, atol=1e-5)
    resumed = task(Scaled(1.0), dm, probe=False)
    resumed.load_state_dict(module.state_dict())  # what a checkpoint restores
    assert int(resumed.noise_draws) == 3  # the next training batch draws number 3, not 0


def test_denoise_false_trains_on_clean_inputs_and_still_scores_noisy_ones() -> None:
    dm = digits(noise="gaussian", noise_level=0.3)
    net = Scaled(1.0)
    module = task(net, dm, denoise=False, probe=False)
    quiet(trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit, module,
          datamodule=dm)  # fmt: skip
    clean = [dm.standardize(x) for x, _ in islice(dm.train_dataloader(), 2)]
    assert all(torch.equal(a, b) for a, b in zip(net.seen, clean, strict=True))
    assert int(module.noise_draws) == 0
    assert {"val/noisy_mse", "val/noisy_psnr"} <= set(module.trainer.callback_metrics)


def test_linear_probe_is_sklearns_logistic_regression_on_training_codes() -> None:
    dm = digits(noise="mask", noise_level=0.3)
    module = task(Scaled(1.0), dm)
    scores = quiet(trainer().test, module, datamodule=dm)[0]
    codes = {split: dm.standardize(dm.splits[split].tensors[0]).flatten(1).numpy()
             for split in ("train", "test")}  # fmt: skip
    labels = {split: dm.splits[split].tensors[1].numpy() for split in ("train", "test")}
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    probe.fit(codes["train"], labels["train"])
    assert scores["test/probe_acc"] == pytest.approx(probe.score(codes["test"], labels["test"]))
    assert scores["test/probe_acc"] > 0.8  # digits' pixels are linearly separable, nearly
    assert 0 <= scores["test/probe_acc_noisy"] < scores["test/probe_acc"]  # half the ink gone
    assert {"tested_val/probe_acc", "tested_val/probe_acc_noisy"} <= set(scores)
    without = quiet(trainer().test, task(Scaled(1.0), dm, probe=False), datamodule=dm)[0]
    assert not any("probe" in key for key in without)


def test_monitors_are_what_the_task_logs() -> None:
    clean = task(Scaled(), digits())
    assert clean.validation_metric_names() == {"val/loss", "val/mse", "val/psnr"}
    noisy = task(Scaled(), digits(noise="mask", noise_level=0.5))
    assert {"val/noisy_mse", "val/noisy_psnr"} <= noisy.validation_metric_names()
    with pytest.raises(ConfigError, match="val/noisy_mse is not a validation metric"):
        clean.check_monitors({"callbacks.early_stopping.monitor": "val/noisy_mse"})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: task(Scaled(), loss=nn.CrossEntropyLoss()).check(digits()),
         "loss CrossEntropyLoss does not fit task=reconstruction"),
        (lambda: task(Scaled()).check(AddingProblem(n_train=8, n_val=8, n_test=8)),
         "task=reconstruction needs image data"),
        (lambda: task(LeNet5()).check(digits()), "model LeNet5 has no encode()"),
        (lambda: task(MLPAutoencoder(1, 28)).check(digits()),
         "model MLPAutoencoder cannot take the data's example input (2, 1, 8, 8)"),
        (lambda: task(Scaled(), grid_size=-1), "task.grid_size=-1"),
    ],
)  # fmt: skip
def test_a_loss_data_or_model_that_does_not_fit_is_one_line(make, message) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_classifier_refuses_noise_it_would_ignore() -> None:
    classifier = ClassifierModule(LeNet5(), partial(torch.optim.SGD, lr=0.1), None,
                                  nn.CrossEntropyLoss(), num_classes=10)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        classifier.check(DigitsDataModule(noise="gaussian", noise_level=0.3))
    assert "data.noise=gaussian is read by task=reconstruction only" in str(err.value)
    assert "\n" not in str(err.value)
    classifier.check(DigitsDataModule())  # clean data passes


def test_grid_has_a_row_per_kind_and_images_at_least_min_side_wide() -> None:
    rows = [torch.rand(5, 1, 8, 8) for _ in range(3)]
    picture = image_grid(rows)
    # 8 px images shown 8x (64 px), 2 px borders: 3 rows x 5 columns
    assert picture.shape == (2 + 3 * 66, 2 + 5 * 66, 3) and picture.dtype.name == "uint8"
