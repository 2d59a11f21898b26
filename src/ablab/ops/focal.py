"""Sigmoid focal loss for dense detection (Lin et al. 2017, "Focal Loss for Dense Object
Detection", RetinaNet): each of the C class outputs is an independent binary classifier.

FL(p_t) = −α_t (1 − p_t)^γ log p_t, with p_t = p for a positive (target 1) and 1 − p for a
negative. The modulating factor (1 − p_t)^γ shrinks the loss of the many easy negatives; α_t = α
for positives and 1 − α for negatives. The paper's best setting is γ = 2, α = 0.25: with γ
focusing on the hard examples, the rare positives get the *lower* weight. α < 0 turns the
weighting off (torchvision's and fvcore's convention), so γ = 0 with α < 0 is binary
cross-entropy. ``training/losses.py`` holds the softmax focal loss for classification.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ablab.errors import ConfigError, unknown_choice

REDUCTIONS = ("none", "mean", "sum")


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """−α_t (1 − p_t)^γ log p_t element-wise, p = σ(logits), targets in [0, 1] of the same shape;
    then averaged or summed over every element if ``reduction`` says so."""
    if reduction not in REDUCTIONS:
        raise unknown_choice("reduction", reduction, REDUCTIONS)
    if gamma < 0:
        raise ConfigError(f"focal loss: gamma={gamma} must be >= 0 (0 is cross-entropy)")
    if alpha > 1:
        raise ConfigError(f"focal loss: alpha={alpha} must be in [0, 1], or < 0 for no weighting")
    if logits.shape != targets.shape:
        raise ConfigError(
            f"focal loss: targets {tuple(targets.shape)} must match logits {tuple(logits.shape)}"
        )
    targets = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    # −log p_t from the logits, not log of p: exact where σ rounds to 0 or 1.
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma  # 0 ** 0 is 1: γ = 0 leaves ce unchanged
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
