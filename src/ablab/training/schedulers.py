"""Learning-rate schedules composed from PyTorch's own schedulers."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

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
