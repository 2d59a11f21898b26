"""Weight-initialisation schemes by name, applied once the network is fully built.

Schemes live in the ``INIT`` table; ``default`` keeps PyTorch's own per-layer initialisation.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ablab.registry import INIT


@INIT.register("default")
def keep_default(net: nn.Module) -> None:
    """Leave PyTorch's initialisation (Kaiming-uniform with a=√5 for conv/linear) untouched."""


def initialize(net: nn.Module, scheme: str = "default", **options: Any) -> nn.Module:
    """Apply the init ``scheme`` (with its ``options``) to every layer of ``net``; return ``net``."""
    INIT[scheme](net, **options)
    return net
