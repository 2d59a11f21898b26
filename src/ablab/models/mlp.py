"""A fully connected discriminator for low-dimensional data: the critic of a toy adversarial
game whose densities are known (``task=divergence``).

Goodfellow et al. 2014 ("Generative adversarial nets", §4.1) assume a discriminator of enough
capacity that the optimum D* = p/(p + q) is within reach; on 1-D data a small MLP has it (for
two equal-variance normals the optimal logit log p − log q is even linear in x). There is no
normalisation layer: WGAN-GP's penalty is taken per sample, which batch norm would couple
(Gulrajani et al. 2017), and nothing else here needs one.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from ablab.errors import ConfigError
from ablab.layers import make_act


class MLPDiscriminator(nn.Module):
    """score = w·φ(W_k … φ(W_1 x + b_1) … + b_k) + b: one raw score (a logit, or a critic's
    value) per sample of ``in_features`` numbers; φ = ``act`` from the activation registry."""

    def __init__(
        self, in_features: int = 1, widths: Sequence[int] = (64, 64), act: str = "leaky_relu"
    ) -> None:
        super().__init__()
        widths = tuple(widths)  # Hydra passes a ListConfig
        if in_features < 1 or not widths or min(widths) < 1:
            raise ConfigError(
                f"MLPDiscriminator needs in_features >= 1 and at least one hidden width, all "
                f"positive; got in_features={in_features}, widths={list(widths)}"
            )
        self.in_features = in_features
        sizes = (in_features, *widths)
        self.hidden = nn.Sequential(
            *(nn.Sequential(nn.Linear(a, b), make_act(act, b)) for a, b in pairwise(sizes))
        )
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(N, in_features) -> (N,) scores; ``y`` (labels) is DCGAN's signature, and refused: the
        net is unconditional."""
        if y is not None:
            raise ValueError(f"{type(self).__name__} is unconditional but was given labels")
        return self.head(self.hidden(x)).squeeze(-1)  # (N, 1) -> (N,)
