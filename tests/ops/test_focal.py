"""ablab.ops.sigmoid_focal_loss against torchvision.ops.sigmoid_focal_loss, its reduction to
binary cross-entropy at γ = 0 without α, and the paper's 100× example."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tv

from ablab.errors import ConfigError
from ablab.ops import sigmoid_focal_loss

REDUCTIONS = ["none", "mean", "sum"]


def logits_targets(
    seed: int, soft: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(8, 5) logits with scale 4, and 0/1 targets (about 1 in 5 positive) or soft ones."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 5, generator=g, dtype=torch.float64) * 4
    targets = torch.rand(8, 5, generator=g, dtype=torch.float64)
    targets = targets if soft else (targets < 0.2).double()
    return logits.to(dtype), targets.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0, -1.0])
@pytest.mark.parametrize("soft", [False, True], ids=["binary", "soft"])
def test_matches_torchvision(soft: bool, alpha: float, gamma: float, reduction: str, dtype) -> None:
    logits, targets = logits_targets(0, soft, dtype)
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    assert ours.dtype == dtype
    torch.testing.assert_close(
        ours, tv.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [-1.0, -0.5])
def test_no_focusing_no_weighting_is_bce(alpha: float, reduction: str) -> None:
    logits, targets = logits_targets(1, soft=True)
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, targets, alpha, gamma=0.0, reduction=reduction),
        F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction),
    )


def test_easy_example_loses_100x() -> None:
    # Lin et al.: with γ = 2, an example at p_t = 0.9 has 100× less loss than under CE.
    logit = torch.logit(torch.tensor([0.9], dtype=torch.float64))
    positive = torch.ones(1, dtype=torch.float64)
    ratio = sigmoid_focal_loss(logit, positive, -1, 0.0) / sigmoid_focal_loss(
        logit, positive, -1, 2.0
    )
    torch.testing.assert_close(ratio, torch.tensor([100.0], dtype=torch.float64))


def test_alpha_weights_the_positives() -> None:
    logits, targets = torch.zeros(2), torch.tensor([1.0, 0.0])
    loss = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    unweighted = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=2.0)
    torch.testing.assert_close(loss, unweighted * torch.tensor([0.25, 0.75]))


def test_saturated_logits_stay_finite() -> None:
    logits = torch.tensor([-200.0, -30.0, 30.0, 200.0], requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    loss = sigmoid_focal_loss(logits, targets, reduction="sum")
    loss.backward()
    assert loss.isfinite() and logits.grad is not None and logits.grad.isfinite().all()
    assert loss.item() == pytest.approx(0.25 * 200 + 0.75 * 200)  # the two confident mistakes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": "avg"}, r"unknown reduction 'avg'"),
        ({"gamma": -1.0}, r"gamma=-1.0 must be >= 0"),
        ({"alpha": 1.5}, r"alpha=1.5 must be in \[0, 1\], or < 0"),
        ({"targets": torch.zeros(3)}, r"targets \(3,\) must match logits \(2,\)"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict, message: str) -> None:
    arguments = {"logits": torch.zeros(2), "targets": torch.zeros(2), **kwargs}
    with pytest.raises(ConfigError, match=message) as error:
        sigmoid_focal_loss(**arguments)
    assert "\n" not in str(error.value)
