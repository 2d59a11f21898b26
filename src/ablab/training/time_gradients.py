"""How much of the loss's gradient reaches each time step of a sequence: ‖∂L/∂x_t‖ against t.

Back-propagation through time multiplies the gradient by the recurrent Jacobian once per step, so
in a plain RNN it shrinks (or grows) geometrically with the distance from the loss (Bengio et al.
1994; Pascanu et al. 2013, "On the difficulty of training recurrent neural networks"); gated cells
(LSTM, GRU) keep an additive path. The profile measures it directly on the network being trained.

On a fixed probe batch — the first ``probe_size`` sequences of the first training batch, as the
model receives them, with their targets — at step 0 (before any update), every ``every_n_steps``
optimizer steps and at the end of training, the callback computes the task's loss (``loss_fn``
on the task's own output) with every module in eval mode (dropout off; batch norms in training
mode, buffers restored, as :class:`~ablab.training.diagnostics.LayerDiagnostics` does), and its
gradient with respect to the input alone (``torch.autograd.grad``: the parameters' ``.grad`` and
the optimizer step are untouched). For sample n, with L the batch mean of the per-sample losses
ℓ_n, ∂ℓ_n/∂x_{n,t} = N · ∂L/∂x_{n,t}; the profile is

    g_t = mean_n ‖∂ℓ_n/∂x_{n,t}‖₂   (t = 0 … T−1; the norm over the F features of step t).

Logged at each snapshot's step: ``grad_x/first`` (g_0, what reaches the first step),
``grad_x/last`` (g_{T−1}) and ``grad_x/log10_first_over_last`` (log₁₀ g_0 / g_{T−1}: −2 means a
hundredth of the last step's gradient reaches the first; a zero norm reads as 1e-45, float32's
floor, and zero at both ends, a net that passes no gradient to its input at all, logs NaN: the
ratio 0/0 has no value, and a study reading it gets none). At the end, ``diagnostics/grad_x.json``
(every snapshot's profile) and ``diagnostics/grad_x.png`` (g_t against t, log scale, one line per
snapshot) are logged as MLflow artifacts.

Only inputs shaped (N, T, F) are profiled: for any other data (images) the callback does nothing.
``task=sequence`` selects it (``callbacks=sequence``). The probe and the profiles are saved in every
checkpoint, so a resumed run goes on measuring the same sequences and its artifacts hold every
snapshot since step 0. Statistics are computed and logged on global rank 0 only
(the probe pass has no collective: no batch norm is synchronised in a recurrent net).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import pytorch_lightning as pl
import torch
from annotated_types import Ge
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger
from torch import Tensor

from ablab.training.diagnostics import LayerDiagnostics

#: The smallest gradient norm a ratio's logarithm is taken of (a float32 zero reads as this).
TINY = 1e-45


class InputGradientProfile(Callback):
    """Logs g_t = mean_n ‖∂ℓ_n/∂x_{n,t}‖ on a fixed probe batch of sequences (see module doc)."""

    def __init__(
        self,
        every_n_steps: Annotated[int, Ge(1)] = 50,
        probe_size: Annotated[int, Ge(1)] | None = 64,
        artifact_dir: str = "diagnostics",
    ) -> None:
        self.every_n_steps, self.probe_size, self.artifact_dir = (
            every_n_steps,
            probe_size,
            artifact_dir,
        )
        self.probe: tuple[Tensor, Tensor] | None = None
        self.active: bool | None = None  # decided on the first batch: is it (N, T, F)?
        self.profiles: dict[int, list[float]] = {}

    @staticmethod
    def profile(pl_module: pl.LightningModule, x: Tensor, y: Tensor) -> Tensor:
        """g_t (T,) for the batch ``(x, y)``: the mean over samples of ‖∂ℓ_n/∂x_{n,t}‖."""
        net = getattr(pl_module, "net", pl_module)
        x = x.detach().clone().requires_grad_(True)
        # cuDNN's fused RNN has no backward in eval mode (model.backend=torch on a GPU): the probe
        # runs PyTorch's own kernels instead, the same function.
        cudnn_off = torch.backends.cudnn.flags(enabled=False)
        with LayerDiagnostics.probe_mode(net), torch.enable_grad(), cudnn_off:
            loss = pl_module.loss_fn(pl_module(x), y)
            (grad,) = torch.autograd.grad(loss, x)
        return (grad.float().norm(dim=2) * len(x)).mean(dim=0)

    @staticmethod
    def log10_ratio(first: float, last: float) -> float:
        """log₁₀ first / last; a zero norm reads as TINY (a floor, ±44 decades), and zero at both
        ends, a net that passes no gradient to its input at all (every ReLU unit dead), is 0/0:
        NaN, not the 0 ("equal") the floors would give."""
        if first == 0 and last == 0:
            return math.nan
        return math.log10(max(first, TINY) / max(last, TINY))

    def snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self.probe is None or step in self.profiles or not trainer.is_global_zero:
            return
        g = self.profile(pl_module, *self.probe).tolist()
        self.profiles[step] = g
        first, last = g[0], g[-1]
        metrics = {
            "grad_x/first": first,
            "grad_x/last": last,
            "grad_x/log10_first_over_last": self.log10_ratio(first, last),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.active is None:
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            self.active = (
                isinstance(x, Tensor) and x.dim() == 3 and x.is_floating_point()
                and isinstance(y, Tensor) and callable(getattr(pl_module, "loss_fn", None))
            )  # fmt: skip
            if self.active:
                n = self.probe_size or len(x)
                self.probe = (x[:n].detach().clone(), y[:n].detach().clone())
        if self.active and trainer.global_step % self.every_n_steps == 0:
            self.snapshot(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the probe and the profiles so far, so a resumed run measures
        the same sequences and its artifacts hold every attempt's snapshots."""
        return {"probe": self.probe, "profiles": self.profiles, "active": self.active}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probe, self.active = state_dict["probe"], state_dict["active"]
        self.profiles = {int(k): v for k, v in state_dict["profiles"].items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        self.snapshot(trainer, pl_module)  # the final weights
        logger = trainer.logger
        if trainer.is_global_zero and isinstance(logger, MLFlowLogger) and self.profiles:
            client, run_id = logger.experiment, logger.run_id
            summary = {"steps": list(self.profiles), "profiles": list(self.profiles.values())}
            client.log_text(run_id, json.dumps(summary), f"{self.artifact_dir}/grad_x.json")
            client.log_figure(run_id, self.figure(), f"{self.artifact_dir}/grad_x.png")

    def figure(self) -> Figure:
        """g_t against t, log scale, one line per snapshot (darker = later)."""
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        steps = sorted(self.profiles)
        for i, step in enumerate(steps):
            g = [max(v, TINY) for v in self.profiles[step]]
            shade = 0.85 - 0.75 * i / max(1, len(steps) - 1)
            ax.plot(
                range(len(g)),
                g,
                color=str(shade),
                label=f"step {step}" if i in (0, len(steps) - 1) else None,
            )
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.set_ylabel("‖∂ℓ/∂x_t‖ (probe mean)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
