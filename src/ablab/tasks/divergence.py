"""The discriminator's optimum, measured: a discriminator D trained alone on two known 1-D
densities, p (the data's) and q (a fixed generator's; ``data=densities``), with one of ablab's
GAN objectives (the ``GAN_LOSS`` table of :mod:`ablab.tasks.gan`, exactly as ``task=gan`` uses
them), and its value compared with the value at the optimum, computed from p and q.

For each objective V(D) is the game's value, the negative of D's loss on its raw scores s =
D(x) (without a gradient penalty), and ``bound`` is max_D V over all functions D:

- ``minimax``, ``non_saturating`` (they share D's loss): V = E_p log σ(s) + E_q log(1 − σ(s)).
  Its maximiser is D*(x) = σ(s*) = p/(p + q) (Goodfellow et al. 2014, "Generative adversarial
  nets", Proposition 1), where V = 2·JSD(p‖q) − log 4 (Theorem 1's proof; natural logs):
  bound = ∫ p log(p/(p+q)) + q log(q/(p+q)) dx, −log 4 when p = q, 0 when they are disjoint;
- ``lsgan`` (0-1 coding: D's loss ½E_p(s − 1)² + ½E_q s²; Mao et al. 2017, "Least squares
  generative adversarial networks"): V = −½E_p(s − 1)² − ½E_q s², maximised pointwise by s* =
  p/(p + q) (their Proposition 1 with a = 0, b = 1), where V = −½∫ pq/(p + q) dx = −¼ + ⅛·Δ(p, q),
  Δ = ∫ (p − q)²/(p + q) dx the triangular discrimination: −¼ when p = q, 0 when disjoint;
- ``wgan_gp``: V = E_p s − E_q s, whose supremum over 1-Lipschitz critics is the Wasserstein-1
  distance (Kantorovich–Rubinstein duality; Arjovsky et al. 2017, "Wasserstein GAN"), in 1-D
  bound = W₁(p, q) = ∫ |F_p − F_q| dx, attained by f* with f*' = sign(F_q − F_p). The critic is
  trained with λ·E[(‖∇D(x̂)‖₂ − 1)²] added (Gulrajani et al. 2017, "Improved training of
  Wasserstein GANs"), a soft constraint: a critic may pay a little penalty for a slope above 1
  and a V above W₁ (for a shift of two equal shapes, where f* is linear, the penalised optimum
  has slope 1 + W₁/(2λ), so V = W₁ + W₁²/(2λ)). In 1-D the penalty also has a second basin, the
  mirror slope: a critic whose init starts with the wrong sign of slope is pushed to |f'| ≈ 1
  by the penalty before V turns it, and stays at V ≈ −W₁ + W₁²/(2λ) (on the default densities,
  2 of seeds 0-4 end at V = −1.8; the other 3 at 2.2).

The bound is computed once, by adaptive quadrature (``scipy.integrate.quad``) over p's and q's
pdfs or cdfs. Training descends sign · D's loss [+ λ·GP under ``wgan_gp``], with Lightning's
automatic optimization: ``roles: goodfellow`` (sign +1) is the game's own, D maximises V;
``roles: reversed`` (sign −1) is the notes' swapped roles, D minimising V, which drives it far
below the bound (to −∞ for the cross-entropy and least-squares losses, −W₁ for the critic).

Every stage logs, on its own samples: ``<stage>/value`` (V), ``<stage>/bound``, ``<stage>/gap`` =
value − bound (≤ 0 in expectation on held-out samples for every D, except by the critic's
slack); ``<stage>/optimum``, V of the optimal D (the scores s* = log p − log q, p/(p + q) or f*,
computed from p and q, through the same objective) on the same samples, and ``<stage>/sample_gap``
= value − optimum: the gap without the samples' own error, which on 20,000 pairs is about ±0.006
nats for the cross-entropy's V and dwarfs what a trained D leaves; and ``<stage>/loss``, what D
descends, with ``<stage>/gp`` under ``wgan_gp`` (on held-out samples from interpolation draws
fixed per batch). The best epoch (the one tested) is the one
with the lowest ``val/loss``: D's own objective, penalty included. Under ``roles: goodfellow``
and the unpenalised losses that is the highest ``val/value``; under ``wgan_gp`` the highest V
would pick the steepest critic, the one that spends the most penalty to pass W₁ (measured on
the default densities: the first epoch's, V ≈ 2.6, against 2.2 once it settles). At test, on
``grid_points`` x evenly over where p and q have their mass, D's output is set against its
optimum: ``test/d_star_mae`` = Σ w(x)·|D(x) − D*(x)| / Σ w(x), w = (p + q)/2, D(x) = σ(s) for the
cross-entropy losses and s for ``lsgan`` (both optima are p/(p + q); a critic's optimum is only
defined up to a constant, so ``wgan_gp`` logs none); and the plot ``divergence/discriminator.png``
(D's output and its optimum over x, above p and q).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from scipy.integrate import cumulative_trapezoid
from scipy.special import xlogy
from sklearn.metrics import mean_absolute_error
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection

from ablab.data.densities import DensityPair
from ablab.data.module import TRAIN_EVAL
from ablab.data.noise import noise_seed
from ablab.errors import ConfigError, unknown_choice
from ablab.registry import GAN_LOSS
from ablab.tasks.base import OptimizerFactory, StagedTask, tested_stage
from ablab.tasks.gan import (
    Objective,
    cross_entropy_discriminator,
    gradient_penalty,
    least_squares_discriminator,
    wasserstein_discriminator,
)

# Epoch values are torchmetrics' own reductions over DDP ranks (see the classifier).
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(tested_)?(train|train_eval|val|test)/"
    r"(loss|value|bound|gap|optimum|sample_gap|gp|d_star_mae)'",
    category=PossibleUserWarning,
)

#: roles -> the sign of D's loss that D descends: the game's (D maximises V), or the notes'.
ROLES = {"goodfellow": 1.0, "reversed": -1.0}
STAGES = ("train", "val", "test", TRAIN_EVAL, tested_stage("val"), tested_stage(TRAIN_EVAL))
#: What every stage logs besides its loss.
SCORES = ("value", "bound", "gap", "optimum", "sample_gap")
PLOT = "divergence/discriminator.png"
#: Seed of the held-out stages' interpolation draws (the gradient penalty's).
HELD_OUT_SEED = 2
#: The optimal logit where only one density has mass (log p − log q = ±∞): σ(30) = 1 − 1e-13.
MAX_LOGIT = 30.0
#: Points of the grid the optimal critic is integrated on (then interpolated).
CRITIC_GRID = 10001


# -- the optima ---------------------------------------------------------------------------------
def js_bound(data: DensityPair) -> float:
    """2·JSD(p‖q) − log 4 = ∫ p log(p/(p+q)) + q log(q/(p+q)) dx, written with x·log x terms
    (0·log 0 = 0) so that where p or q vanishes the integrand does too."""
    p, q = data.p.dist.pdf, data.q.dist.pdf

    def integrand(x: float) -> float:
        a, b = p(x), q(x)
        return xlogy(a, a) + xlogy(b, b) - xlogy(a + b, a + b)

    return data.integrate(integrand)


def least_squares_bound(data: DensityPair) -> float:
    """−½ ∫ p q / (p + q) dx: minus the least-squares loss at s* = p/(p + q)."""
    p, q = data.p.dist.pdf, data.q.dist.pdf

    def integrand(x: float) -> float:
        a, b = p(x), q(x)
        return a * b / (a + b) if a + b > 0 else 0.0

    return -0.5 * data.integrate(integrand)


def wasserstein_bound(data: DensityPair) -> float:
    """W₁(p, q) = ∫ |F_p − F_q| dx (in 1-D, the area between the two cdfs)."""
    p, q = data.p.dist.cdf, data.q.dist.cdf
    return data.integrate(lambda x: abs(p(x) - q(x)))


def logit_optimum(data: DensityPair, x: np.ndarray) -> np.ndarray:
    """s*(x) = log p − log q, so that σ(s*) = p/(p + q): ±:data:`MAX_LOGIT` where one density
    has no mass, 0 where neither has (such x are never drawn)."""
    with np.errstate(invalid="ignore"):
        s = data.p.dist.logpdf(x) - data.q.dist.logpdf(x)
    return np.clip(np.nan_to_num(s, nan=0.0), -MAX_LOGIT, MAX_LOGIT)


def probability_optimum(data: DensityPair, x: np.ndarray) -> np.ndarray:
    """s*(x) = p/(p + q) (½ where neither density has mass)."""
    a, b = data.p.dist.pdf(x), data.q.dist.pdf(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(a + b > 0, a / (a + b), 0.5)


@lru_cache(maxsize=4)
def critic_grid(data: DensityPair) -> tuple[np.ndarray, np.ndarray]:
    """f* on :data:`CRITIC_GRID` x over the densities' span: ∫_lo^x sign(F_q − F_p) dt."""
    x = data.grid(CRITIC_GRID)
    slope = np.sign(data.q.dist.cdf(x) - data.p.dist.cdf(x))
    return x, cumulative_trapezoid(slope, x, initial=0.0)


def critic_optimum(data: DensityPair, x: np.ndarray) -> np.ndarray:
    """f*(x), a 1-Lipschitz critic attaining W₁ (slope sign(F_q − F_p)), defined up to a
    constant: here 0 at the start of the densities' span, the same for every x."""
    grid, f = critic_grid(data)
    return np.interp(x, grid, f)


@dataclass(frozen=True)
class Optimum:
    """What an objective's D attains at best on p and q, and where."""

    #: data -> max_D V
    bound: Callable[[DensityPair], float]
    #: (data, x) -> the optimal raw scores s*(x)
    scores: Callable[[DensityPair, np.ndarray], np.ndarray]
    #: raw scores -> the output compared with the optimum's (σ(s) for a logit)
    output: Callable[[Tensor], Tensor]
    #: what the output is, for the plot
    label: str
    #: whether the optimum is only defined up to an additive constant (a critic's)
    up_to_constant: bool = False


#: D's loss (an Objective's ``discriminator``) -> its optimum: D's loss alone decides it, so
#: ``minimax`` and ``non_saturating`` share theirs.
OPTIMA: dict[Callable[[Tensor, Tensor], Tensor], Optimum] = {
    cross_entropy_discriminator: Optimum(js_bound, logit_optimum, torch.sigmoid, "σ(D(x))"),
    least_squares_discriminator: Optimum(
        least_squares_bound, probability_optimum, lambda s: s, "D(x)"
    ),
    wasserstein_discriminator: Optimum(
        wasserstein_bound, critic_optimum, lambda s: s, "critic D(x)", up_to_constant=True
    ),
}


# -- the task -----------------------------------------------------------------------------------
class DivergenceProbe(StagedTask):
    """D descends sign · loss_D(D(x_p), D(x_q)) [+ λ·GP], x_p ~ p, x_q ~ q; logs V = −loss_D,
    the bound max_D V computed from p and q, the optimal D's V on the same samples, and the
    gaps to each."""

    networks: ClassVar[dict[str, str]] = {"discriminator": "discriminator"}

    def __init__(
        self,
        discriminator: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: dict[str, Any] | None,
        loss: str = "minimax",
        roles: Literal["goodfellow", "reversed"] = "goodfellow",
        gp_weight: float = 10.0,
        grid_points: int = 1001,
        monitor: str = "val/loss",
        mode: Literal["min", "max"] = "min",
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, mode=mode)
        self.save_hyperparameters(ignore=["discriminator", "optimizer", "scheduler"], logger=False)
        try:
            self.objective: Objective = GAN_LOSS[loss]
        except ConfigError as err:
            raise ConfigError(f"task.loss: {err}") from None
        if self.objective.discriminator not in OPTIMA:
            raise ConfigError(
                f"task.loss={loss}: its discriminator loss has no known optimum; task=divergence "
                f"takes {', '.join(n for n in GAN_LOSS if GAN_LOSS[n].discriminator in OPTIMA)}"
            )
        if roles not in ROLES:
            raise unknown_choice("task.roles", roles, ROLES)
        if gp_weight < 0 or grid_points < 2:
            raise ConfigError(
                f"task.gp_weight={gp_weight} must be >= 0 and task.grid_points={grid_points} at "
                "least 2"
            )
        self.optimum = OPTIMA[self.objective.discriminator]
        self.discriminator = discriminator
        self.loss, self.roles, self.sign = loss, roles, ROLES[roles]
        self.gp_weight, self.grid_points = gp_weight, grid_points
        for stage in STAGES:
            keys = ("value", "gap", "optimum", "sample_gap")
            keys += ("gp",) if self.objective.gradient_penalty else ()
            scores = {key: MeanMetric() for key in keys}
            setattr(self, f"{stage}_metrics", MetricCollection(scores, prefix=f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric())
        # Bound in check(): the densities and the value at the optimum (recomputed, not saved:
        # a resumed run computes the same).
        self._data: DensityPair | None = None
        self.bound: float | None = None

    # -- what the core asks --------------------------------------------------------------------
    def check(self, datamodule: Any) -> None:
        """Densities with a known form, a discriminator giving one score per sample; then the
        bound, by numerical integration."""
        if not isinstance(datamodule, DensityPair):
            raise ConfigError(
                "task=divergence needs two known densities (data=densities); "
                f"{type(datamodule).__name__} has none"
            )
        scores = self.dry_output_shape(self.discriminator, datamodule.example_input())
        if scores != (2,):
            raise ConfigError(
                f"discriminator output {scores} is not one score per sample (2,): "
                "task=divergence needs a (N, 1) -> (N,) discriminator (discriminator=mlp)"
            )
        self._data = datamodule
        self.bound = self.optimum.bound(datamodule)

    def setup(self, stage: str) -> None:
        if self._data is None:  # fitted without the core's build (a test): check it here
            self.check(self.trainer.datamodule)

    def logged(self, stage: str) -> set[str]:
        """What ``stage`` logs: :data:`SCORES`, its loss, and its penalty under ``wgan_gp``."""
        keys = ("loss", *SCORES, *(("gp",) if self.objective.gradient_penalty else ()))
        return {f"{stage}/{key}" for key in keys}

    def validation_metric_names(self) -> set[str]:
        return self.logged("val") | self.logged(TRAIN_EVAL)

    def training_metric_names(self) -> set[str]:
        return self.logged("train")

    # -- steps ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.discriminator(x)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self._validation_sets[dataloader_idx]
        self._shared_step(batch, split, split, batch_idx)

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._test_splits = self.test_sets()

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        stage, split = self._test_stages[dataloader_idx], self._test_splits[dataloader_idx]
        self._shared_step(batch, stage, split, batch_idx)

    def _shared_step(
        self, batch: tuple[Tensor, Tensor], stage: str, split: str = "train", batch_idx: int = 0
    ) -> Tensor:
        """Score one batch of pairs: V = −loss_D and the loss D descends, sign · loss_D, with
        λ·GP under ``wgan_gp`` (unsigned: under either role the critic stays, softly,
        1-Lipschitz)."""
        x_p, x_q = batch
        s_p, s_q = self.discriminator(x_p), self.discriminator(x_q)
        d_loss = self.objective.discriminator(s_p, s_q)
        loss, n = self.sign * d_loss, len(x_p)
        value = -d_loss.detach()
        # the optimum's V on the same samples: the gap without their sampling error
        optimum = -self.objective.discriminator(self.optimal_scores(x_p), self.optimal_scores(x_q))
        metrics = getattr(self, f"{stage}_metrics")
        metrics["value"].update(value, n)
        metrics["gap"].update(value - self.bound, n)
        metrics["optimum"].update(optimum, n)
        metrics["sample_gap"].update(value - optimum, n)
        if self.objective.gradient_penalty:
            if stage == "train":
                penalty = gradient_penalty(self.discriminator, x_p, x_q)
            else:
                penalty = self.held_out_penalty(x_p, x_q, split, batch_idx)
            loss = loss + self.gp_weight * penalty
            metrics["gp"].update(penalty.detach(), n)
        getattr(self, f"{stage}_loss").update(loss.detach(), n)
        return loss

    def optimal_scores(self, x: Tensor) -> Tensor:
        """s*(x) for a (N, 1) batch: (N,) optimal raw scores, computed from p and q."""
        s = self.optimum.scores(self._data, x.detach().double().cpu().numpy().ravel())
        return torch.as_tensor(s, dtype=x.dtype, device=x.device)

    def held_out_penalty(self, x_p: Tensor, x_q: Tensor, split: str, batch_idx: int) -> Tensor:
        """The gradient penalty on a held-out batch, so that held-out losses are the loss D
        descends. It needs D's input gradient, which evaluation (run without autograd) does not
        take: it is taken here with autograd on, on copies of the batch. Its interpolation
        draws are seeded by (split, rank, batch): the same at every epoch, and the training
        stream of random numbers untouched."""
        device = x_p.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode(False):
            # only the generator the draws come from (torch.manual_seed would seed every
            # device type, a millisecond per batch)
            generator = (
                torch.cuda.default_generators[device.index or 0]
                if device.type == "cuda"
                else torch.default_generator
            )
            generator.manual_seed(noise_seed(HELD_OUT_SEED, split, self.global_rank, batch_idx))
            with torch.enable_grad():
                penalty = gradient_penalty(self.discriminator, x_p.clone(), x_q.clone())
            return penalty.detach()

    def _log_epoch(self, stage: str) -> None:
        """The stage's loss, value and gap (and penalty), and the bound beside them."""
        self.log(f"{stage}/bound", float(self.bound))
        super()._log_epoch(stage)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        x, output, optimal, weight = self.against_optimum()
        if not self.optimum.up_to_constant:
            mae = mean_absolute_error(optimal, output, sample_weight=weight)
            self.log("test/d_star_mae", float(mae))
        logger = self.logger
        if self.trainer.is_global_zero and isinstance(logger, MLFlowLogger):
            figure = self.figure(x, output, optimal)
            logger.experiment.log_figure(logger.run_id, figure, PLOT)

    # -- D against its optimum -----------------------------------------------------------------
    @torch.no_grad()
    def against_optimum(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """On ``grid_points`` x over p's and q's mass: x, D's output, its optimum and the weight
        (p + q)/2. A critic's optimum is shifted to D's weighted mean (it has no constant)."""
        data = self._data
        x = data.grid(self.grid_points)
        net = self.discriminator
        training = net.training
        net.eval()
        try:
            inputs = torch.as_tensor(x, dtype=torch.float32, device=self.device).reshape(-1, 1)
            output = self.optimum.output(net(inputs)).double().cpu().numpy()
        finally:
            net.train(training)
        weight = (data.p.dist.pdf(x) + data.q.dist.pdf(x)) / 2
        optimal = self.optimum.output(torch.as_tensor(self.optimum.scores(data, x))).numpy()
        if self.optimum.up_to_constant:
            optimal = optimal + np.average(output - optimal, weights=weight)
        return x, output, optimal, weight

    def figure(self, x: np.ndarray, output: np.ndarray, optimal: np.ndarray) -> Figure:
        """D's output and its optimum over x (top), p and q (bottom)."""
        fig = Figure(figsize=(6, 4.5))
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
        top.plot(x, optimal, color="0.5", linestyle="--", label="optimum")
        top.plot(x, output, color="C3", label=f"{self.optimum.label}, trained")
        top.set_ylabel(self.optimum.label)
        top.set_title(f"task.loss={self.loss}, roles={self.roles}", fontsize=9)
        top.legend(fontsize=7)
        bottom.plot(x, self._data.p.dist.pdf(x), color="C0", label="p (data)")
        bottom.plot(x, self._data.q.dist.pdf(x), color="C1", label="q (generator)")
        bottom.set_xlabel("x")
        bottom.set_ylabel("density")
        bottom.legend(fontsize=7)
        fig.tight_layout()
        return fig
