"""Classification losses beyond ``nn.CrossEntropyLoss``: class-balanced CE and focal loss.

``nn.CrossEntropyLoss`` itself covers plain CE, label smoothing (Szegedy et al. 2016) and soft
targets (mixup / cutmix's (N, C) class probabilities). Focal loss is kornia's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ablab.errors import ConfigError


def balanced_cross_entropy(
    class_counts: Tensor, label_smoothing: float = 0.0
) -> nn.CrossEntropyLoss:
    """CE with class c weighted by N / (C · n_c) (scikit-learn's "balanced"): every class
    contributes as much to the loss as it would in a balanced training set."""
    counts = torch.as_tensor(class_counts, dtype=torch.float)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ConfigError(f"balanced cross-entropy: classes {missing} have no training samples")
    weight = counts.sum() / (len(counts) * counts)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


class FocalLoss(nn.Module):
    """FL(p_t) = −α (1 − p_t)^γ log p_t over the softmax, averaged over samples (Lin et al.
    2017): well-classified examples (p_t → 1) are down-weighted; γ = 0 without α is
    cross-entropy. α follows kornia (RetinaNet's convention with class 0 as background): class 0
    is weighted 1 − α, every other class α. kornia computes the per-class terms; its own "mean"
    also averages over the C classes (CE / C at γ = 0), so the class terms are summed here first.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.dim() != 1:
            raise ConfigError("focal loss needs class-index targets, not mixup/cutmix soft targets")
        from kornia.losses import focal_loss as kornia_focal_loss  # only where focal loss is used

        terms = kornia_focal_loss(logits, target, self.alpha, self.gamma, reduction="none")
        return terms.sum(dim=1).mean()  # (N, C) → (N,) → scalar


def focal_loss(gamma: float = 2.0, alpha: float | None = None) -> FocalLoss:
    """Focal loss with focusing parameter ``gamma`` ≥ 0 and class weight ``alpha`` in [0, 1]."""
    if gamma < 0:
        raise ConfigError(f"loss.gamma={gamma} must be >= 0 (0 is cross-entropy)")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ConfigError(f"loss.alpha={alpha} must be in [0, 1] or null")
    return FocalLoss(gamma, alpha)
