"""The sequence task's metrics and checks, and the input-gradient profile ‖∂ℓ/∂x_t‖ against t."""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ablab.errors import ConfigError
from ablab.tasks import SequenceModule
from ablab.training.time_gradients import InputGradientProfile

T, F = 6, 3


class WeightedSum(nn.Module):
    """ŷ = Σ_t w_t · x_t: ∂ŷ/∂x_t = w_t, so every step's gradient is known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.1, 1.0, T * F).view(T, F))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).sum(dim=(1, 2)).unsqueeze(1)  # (N, 1), as a model's head gives


def value_task(net: nn.Module | None = None) -> SequenceModule:
    return SequenceModule(net or WeightedSum(), partial(torch.optim.SGD, lr=0.0), None,
                          nn.MSELoss(), target="value", num_outputs=1, monitor="val/mse",
                          mode="min")  # fmt: skip


def trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, **kw)  # fmt: skip


def test_value_targets_are_scored_by_mse_and_mae_of_the_squeezed_output() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, T, F, generator=g), torch.randn(50, generator=g)
    task = value_task()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and small datasets
        (scores,) = trainer().validate(task, DataLoader(TensorDataset(x, y), batch_size=16))
    with torch.no_grad():
        pred = task(x)
    assert pred.shape == (50,)  # (N, 1) squeezed to the targets' shape: no broadcasting
    assert scores["val/mse"] == pytest.approx((pred - y).pow(2).mean().item(), rel=1e-5)
    assert scores["val/mae"] == pytest.approx((pred - y).abs().mean().item(), rel=1e-5)
    assert scores["val/loss"] == pytest.approx(scores["val/mse"], rel=1e-5)
    # R² over the whole epoch, not a mean of batch R²s: 0 is the mean predictor's score
    r2 = 1 - (pred - y).pow(2).sum() / (y - y.mean()).pow(2).sum()
    assert scores["val/r2"] == pytest.approx(r2.item(), rel=1e-4)


def test_class_targets_are_scored_by_accuracy() -> None:
    task = SequenceModule(nn.Sequential(nn.Flatten(), nn.Linear(T * F, 4)),
                          partial(torch.optim.SGD, lr=0.0), None, nn.CrossEntropyLoss(),
                          target="class", num_outputs=4)  # fmt: skip
    x, y = torch.randn(40, T, F), torch.randint(0, 4, (40,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (scores,) = trainer().validate(task, DataLoader(TensorDataset(x, y), batch_size=8))
    with torch.no_grad():
        expected = (task(x).argmax(1) == y).float().mean().item()
    assert scores["val/acc"] == pytest.approx(expected)


class Targets:
    """A stand-in data module with sequence targets."""

    def __init__(self, target: str) -> None:
        self.target = target


@pytest.mark.parametrize(
    ("loss", "data", "message"),
    [
        (nn.CrossEntropyLoss(), Targets("value"), "does not fit the data's value targets; use a "
                                                  "regression loss: loss=mse"),
        (nn.MSELoss(), Targets("class"), "task.target=value but the data's targets are of kind class"),
        (nn.MSELoss(), object(), "task=sequence needs sequence data"),
    ],
)  # fmt: skip
def test_a_loss_or_data_that_does_not_fit_the_targets_is_one_line(loss, data, message) -> None:
    task = value_task()
    task.loss_fn = loss
    with pytest.raises(ConfigError) as err:
        task.check(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_profile_is_the_per_sample_input_gradient_norm_at_each_step() -> None:
    """ℓ_n = (ŷ_n − y_n)², ∂ℓ_n/∂x_{n,t} = 2(ŷ_n − y_n)·w_t: g_t = mean_n |2(ŷ_n − y_n)|·‖w_t‖."""
    task = value_task()
    x, y = torch.randn(8, T, F), torch.randn(8)
    g = InputGradientProfile.profile(task, x, y)
    with torch.no_grad():
        residual = (task(x) - y).abs().mul(2).mean()
    assert torch.allclose(g, residual * task.net.w.norm(dim=1), rtol=1e-5)
    assert task.net.w.grad is None  # the parameters' gradients are untouched


def test_a_net_that_passes_no_gradient_has_no_ratio() -> None:
    """Dead ReLUs everywhere: g_0 = g_{T−1} = 0 is 0/0, NaN, not log10(1) = 0 ("equal")."""
    ratio = InputGradientProfile.log10_ratio
    assert math.isnan(ratio(0.0, 0.0))
    assert ratio(1e-3, 1e-1) == pytest.approx(-2.0)
    assert ratio(0.0, 1.0) == pytest.approx(-45.0)  # float32's floor: "nothing reaches it"
    task = value_task(nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(T * F, 1)))
    g = InputGradientProfile.profile(task, -torch.rand(8, T, F), torch.randn(8))  # all ReLUs off
    assert not g.any() and math.isnan(ratio(g[0].item(), g[-1].item()))


class LastState(nn.Module):
    """A tanh RNN read at its last step, with small recurrent weights: gradients vanish."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(F, 16, batch_first=True)
        self.head = nn.Linear(16, 1)
        with torch.no_grad():
            self.rnn.weight_hh_l0.mul_(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def test_a_plain_rnns_gradient_shrinks_with_distance_from_the_loss() -> None:
    torch.manual_seed(0)
    g = InputGradientProfile.profile(
        value_task(LastState()), torch.randn(32, 20, F), torch.randn(32)
    )
    assert g[-1] > 100 * g[0]  # contracting recurrence: geometric decay back through time
    assert (g[1:] > g[:-1]).float().mean() > 0.9


def test_soft_class_targets_are_scored_by_their_arg_max() -> None:
    """Mixup on image rows hands over (N, C) probabilities; accuracy scores their arg-max."""
    task = SequenceModule(nn.Sequential(nn.Flatten(), nn.Linear(T * F, 3)),
                          partial(torch.optim.SGD, lr=0.0), None, nn.CrossEntropyLoss(),
                          target="class", num_outputs=3)  # fmt: skip
    x = torch.randn(12, T, F)
    with torch.no_grad():
        hard = task(x).argmax(1)
    soft = torch.nn.functional.one_hot(hard, 3).float() * 0.6 + 0.4 / 3  # argmax = prediction
    task._shared_step((x, soft), "val")
    assert task.val_metrics.compute()["val/acc"] == 1.0


def test_sequence_task_on_image_data_is_one_line_before_any_run(compose_cfg, tmp_path) -> None:
    from ablab.training.run import build

    with compose_cfg("task=sequence") as cfg, pytest.raises(ConfigError) as err:
        build(cfg)
    assert "task=sequence needs sequence data (data=adding|copy|digits_rows|mnist_rows)" in str(
        err.value
    )
    assert "\n" not in str(err.value) and not (tmp_path / "mlflow.db").exists()


def test_sequence_runs_select_the_time_gradients_callbacks(compose_cfg) -> None:
    with compose_cfg("task=sequence", "data=adding", "model=lstm") as cfg:
        assert cfg.callbacks.time_gradients.every_n_steps == 50
    with compose_cfg("task=sequence", "data=adding", "model=lstm", "callbacks=plateau") as cfg:
        assert "time_gradients" not in cfg.callbacks and "plateau" in cfg.callbacks  # the CLI wins
    with compose_cfg() as cfg:  # image runs: the default callbacks, their params unchanged
        assert "time_gradients" not in cfg.callbacks
