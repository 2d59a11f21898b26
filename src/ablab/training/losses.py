"""Classification losses beyond ``nn.CrossEntropyLoss``: class-balanced CE, focal loss, and
class-balanced focal loss (the arm that separates focusing from re-weighting).

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
    weight = balanced_weights(class_counts, "balanced cross-entropy")
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def balanced_weights(class_counts: Tensor, loss: str) -> Tensor:
    """w_c = N / (C · n_c) from the training split's class counts n_c."""
    counts = torch.as_tensor(class_counts, dtype=torch.float)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ConfigError(f"{loss}: classes {missing} have no training samples")
    return counts.sum() / (len(counts) * counts)


class FocalLoss(nn.Module):
    """FL(p_t) = −α (1 − p_t)^γ log p_t over the softmax, averaged over samples (Lin et al.
    2017): well-classified examples (p_t → 1) are down-weighted; γ = 0 without α is
    cross-entropy. α follows kornia (RetinaNet's convention with class 0 as background): class 0
    is weighted 1 − α, every other class α. kornia computes the per-class terms; its own "mean"
    also averages over the C classes (CE / C at γ = 0), so the class terms are summed here first.

    With per-class ``weight`` w (class-balanced focal loss), sample i's term is multiplied by
    w_{y_i} and the mean is the weighted one, Σ w_{y_i} FL_i / Σ w_{y_i}, as
    ``nn.CrossEntropyLoss(weight=w)`` takes it: at γ = 0 it is class-balanced CE exactly.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: float | None = None, weight: Tensor | None = None
    ) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.dim() != 1:
            raise ConfigError("focal loss needs class-index targets, not mixup/cutmix soft targets")
        from kornia.losses import focal_loss as kornia_focal_loss  # only where focal loss is used

        terms = kornia_focal_loss(
            logits, target, self.alpha, self.gamma, reduction="none", weight=self.weight
        ).sum(dim=1)  # (N, C) → (N,): only the target class's term is non-zero
        if self.weight is None:
            return terms.mean()
        return terms.sum() / self.weight[target].sum()


def focal_loss(gamma: float = 2.0, alpha: float | None = None) -> FocalLoss:
    """Focal loss with focusing parameter ``gamma`` ≥ 0 and class weight ``alpha`` in [0, 1]."""
    if gamma < 0:
        raise ConfigError(f"loss.gamma={gamma} must be >= 0 (0 is cross-entropy)")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ConfigError(f"loss.alpha={alpha} must be in [0, 1] or null")
    return FocalLoss(gamma, alpha)


def balanced_focal_loss(class_counts: Tensor, gamma: float = 2.0) -> FocalLoss:
    """Focal loss with class c weighted by N / (C · n_c), as :func:`balanced_cross_entropy`
    weights CE (Cui et al. 2019 pair re-weighting with focal loss the same way): against
    balanced CE it changes the focusing alone, against focal loss the weighting alone."""
    if gamma < 0:
        raise ConfigError(f"loss.gamma={gamma} must be >= 0 (0 is balanced cross-entropy)")
    return FocalLoss(gamma, None, balanced_weights(class_counts, "balanced focal loss"))
