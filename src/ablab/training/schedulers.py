"""Learning-rate schedules composed from PyTorch's own schedulers."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
)

from ablab.errors import ConfigError


def cosine_with_warmup(
    optimizer: Optimizer,
    max_epochs: int,
    warmup_epochs: int = 0,
    warmup_start_factor: float = 0.1,
    eta_min: float = 0.0,
) -> LRScheduler:
    """lr rises linearly from ``warmup_start_factor`` · lr to lr over ``warmup_epochs``, then
    follows a half cosine to ``eta_min`` at ``max_epochs`` (Loshchilov & Hutter 2017; warm-up:
    Goyal et al. 2017)."""
    if not 0 <= warmup_epochs < max_epochs:
        raise ConfigError(
            f"scheduler.warmup_epochs={warmup_epochs} must be in [0, max_epochs={max_epochs})"
        )
    if not 0 < warmup_start_factor <= 1:
        raise ConfigError(f"scheduler.warmup_start_factor={warmup_start_factor} must be in (0, 1]")
    cosine = CosineAnnealingLR(optimizer, T_max=max_epochs - warmup_epochs, eta_min=eta_min)
    if warmup_epochs == 0:
        return cosine
    warmup = LinearLR(optimizer, warmup_start_factor, 1.0, total_iters=warmup_epochs)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])


def multistep_with_warmup(
    optimizer: Optimizer,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup_factor: float = 0.1,
) -> LRScheduler:
    """lr · warmup_factor for the first ``warmup_steps`` steps, then lr · gamma^k after k of the
    ``milestones`` (He et al. 2016 §4.2: ResNet-110 warms up at 0.01 for about 400 iterations,
    then 0.1, ÷10 at 32k and 48k).

    One closed form over absolute step counts: SequentialLR would restart a MultiStepLR's count
    at the end of the warm-up and so shift every milestone by ``warmup_steps``.
    """
    steps = sorted(int(m) for m in milestones)
    if steps and steps[0] < 1:
        raise ConfigError(f"scheduler.milestones={list(milestones)} must be positive step counts")
    if not 0 <= warmup_steps <= (steps[0] if steps else warmup_steps):
        raise ConfigError(
            f"scheduler.warmup_steps={warmup_steps} must be >= 0 and at most the first milestone"
        )
    if not 0 < warmup_factor <= 1:
        raise ConfigError(f"scheduler.warmup_factor={warmup_factor} must be in (0, 1]")

    def factor(step: int) -> float:
        warm = warmup_factor if step < warmup_steps else 1.0
        return warm * gamma ** bisect_right(steps, step)

    return LambdaLR(optimizer, factor)
